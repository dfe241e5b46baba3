package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// PolicySpec returns the spec both kinds share.
func (p *KeepalivePolicy) PolicySpec() *KeepalivePolicySpec { return &p.Spec }

// PolicyStatus returns the status.
func (p *KeepalivePolicy) PolicyStatus() *KeepalivePolicyStatus { return &p.Status }

// PolicySpec returns the spec both kinds share.
func (p *ClusterKeepalivePolicy) PolicySpec() *KeepalivePolicySpec {
	return &p.Spec.KeepalivePolicySpec
}

// PolicyStatus returns the status.
func (p *ClusterKeepalivePolicy) PolicyStatus() *KeepalivePolicyStatus { return &p.Status }

// AsLabelSelector returns the selector as a Kubernetes label selector, nil
// for nil. It does not validate: metav1.LabelSelectorAsSelector still
// refuses a selector stored before the API server checked them.
func (s *LabelSelector) AsLabelSelector() *metav1.LabelSelector {
	if s == nil {
		return nil
	}
	out := &metav1.LabelSelector{}
	if s.MatchLabels != nil {
		out.MatchLabels = make(map[string]string, len(s.MatchLabels))
		for k, v := range s.MatchLabels {
			out.MatchLabels[k] = string(v)
		}
	}
	if s.MatchExpressions != nil {
		out.MatchExpressions = make([]metav1.LabelSelectorRequirement, len(s.MatchExpressions))
		for i, r := range s.MatchExpressions {
			out.MatchExpressions[i] = metav1.LabelSelectorRequirement{
				Key:      r.Key,
				Operator: metav1.LabelSelectorOperator(r.Operator),
			}
			if r.Values != nil {
				values := make([]string, len(r.Values))
				for j, v := range r.Values {
					values[j] = string(v)
				}
				out.MatchExpressions[i].Values = values
			}
		}
	}
	return out
}
