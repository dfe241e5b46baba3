package keepalive

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/keepalive-operator/keepalive-operator/api/v1alpha1"
)

// Kinds of policy, as they appear in references.
const (
	KindKeepalivePolicy        = "KeepalivePolicy"
	KindClusterKeepalivePolicy = "ClusterKeepalivePolicy"
)

// Ref names a policy.
type Ref struct {
	Kind      string
	Namespace string // empty for cluster policies
	Name      string
}

// String is the form of the keepalive.io/policy annotation:
// Kind/namespace/name, or Kind/name for a cluster policy.
func (r Ref) String() string {
	if r.Namespace == "" {
		return r.Kind + "/" + r.Name
	}
	return r.Kind + "/" + r.Namespace + "/" + r.Name
}

// Policy is a policy ready to be matched against pods: its selectors parsed
// and its values computed.
type Policy struct {
	Ref     Ref
	Mode    v1alpha1.Mode
	Rollout v1alpha1.Rollout
	Result  Result
	// podSelector and namespaceSelector are nil when they select everything.
	podSelector       labels.Selector
	namespaceSelector labels.Selector
	// name and sysctls are Ref.String() and Result.Values.Sysctls(), made
	// once rather than for every pod.
	name    string
	sysctls []corev1.Sysctl
}

// NewPolicy parses and computes a KeepalivePolicy.
func NewPolicy(p *v1alpha1.KeepalivePolicy) (Policy, error) {
	return newPolicy(Ref{KindKeepalivePolicy, p.Namespace, p.Name}, p.Spec, nil)
}

// NewClusterPolicy parses and computes a ClusterKeepalivePolicy.
func NewClusterPolicy(p *v1alpha1.ClusterKeepalivePolicy) (Policy, error) {
	return newPolicy(Ref{Kind: KindClusterKeepalivePolicy, Name: p.Name}, p.Spec.KeepalivePolicySpec, p.Spec.NamespaceSelector)
}

func newPolicy(ref Ref, spec v1alpha1.KeepalivePolicySpec, nsSel *v1alpha1.LabelSelector) (Policy, error) {
	res, err := Compute(spec)
	if err != nil {
		return Policy{}, err
	}
	pol := Policy{Ref: ref, Mode: spec.Mode, Rollout: spec.Rollout, Result: res, name: ref.String(), sysctls: res.Values.Sysctls()}
	if pol.podSelector, err = selector(spec.PodSelector); err != nil {
		return Policy{}, fmt.Errorf("podSelector: %w", err)
	}
	if pol.namespaceSelector, err = selector(nsSel); err != nil {
		return Policy{}, fmt.Errorf("namespaceSelector: %w", err)
	}
	return pol, nil
}

// selector returns nil for a selector that selects everything. The API
// server checks selectors, but one stored before it did still fails here.
func selector(s *v1alpha1.LabelSelector) (labels.Selector, error) {
	if s == nil || (len(s.MatchLabels) == 0 && len(s.MatchExpressions) == 0) {
		return nil, nil
	}
	return metav1.LabelSelectorAsSelector(s.AsLabelSelector())
}

// PolicyChanged reports whether an update of a policy object can change what
// the policy does: a new spec (generation) or the start of its deletion.
// Status updates, the most frequent by far, cannot.
func PolicyChanged(before, after metav1.Object) bool {
	return before.GetGeneration() != after.GetGeneration() ||
		before.GetDeletionTimestamp().IsZero() != after.GetDeletionTimestamp().IsZero()
}

// SharedLists keeps one copy of each list of policies, by the policies'
// names, so that the many namespaces that the same cluster policies select
// share one list: 10,000 namespaces need not hold 10,000 copies. Reset it
// whenever a policy may have changed.
type SharedLists struct{ lists map[string][]Policy }

// Share returns the copy kept of a list with the same policies, in any
// order (Select's choice does not depend on it, and the stores the lists
// come from have none), keeping this one when there is none. The lists must
// never change afterwards.
func (s *SharedLists) Share(list []Policy) []Policy {
	if len(list) == 0 {
		return nil
	}
	names := make([]string, len(list))
	for i := range list {
		names[i] = list[i].name
	}
	slices.Sort(names)
	key := strings.Join(names, "\x00")
	if kept, ok := s.lists[key]; ok {
		return kept
	}
	if s.lists == nil {
		s.lists = map[string][]Policy{}
	}
	s.lists[key] = list
	return list
}

// Reset forgets every list.
func (s *SharedLists) Reset() { clear(s.lists) }

// Target is a pod as policies see it.
type Target struct {
	Namespace       string
	Labels          map[string]string
	NamespaceLabels map[string]string
}

// Applies reports whether the policy is in scope for the pod and selects it:
// a KeepalivePolicy in the pod's namespace, or a ClusterKeepalivePolicy whose
// namespaceSelector matches the pod's namespace.
func (p *Policy) Applies(t Target) bool {
	if p.Ref.Kind == KindKeepalivePolicy && p.Ref.Namespace != t.Namespace {
		return false
	}
	if p.namespaceSelector != nil && !p.namespaceSelector.Matches(labels.Set(t.NamespaceLabels)) {
		return false
	}
	return p.podSelector == nil || p.podSelector.Matches(labels.Set(t.Labels))
}

// SelectsNamespace reports whether the policy is in scope for the pods of a
// namespace with these labels.
func (p *Policy) SelectsNamespace(name string, nsLabels map[string]string) bool {
	if p.Ref.Kind == KindKeepalivePolicy {
		return p.Ref.Namespace == name
	}
	return p.namespaceSelector == nil || p.namespaceSelector.Matches(labels.Set(nsLabels))
}

// Select returns the policy that governs the pod among those of the lists
// that apply. Enforce policies come before Audit ones, so that a policy under
// trial never holds back one in force; then the smallest time wins, then the
// smallest interval, then the name (then kind and namespace, so that the
// choice never depends on the order of the input).
func Select(t Target, lists ...[]Policy) (Policy, bool) {
	var best Policy
	found := false
	for _, policies := range lists {
		for i := range policies {
			if p := &policies[i]; p.Applies(t) && (!found || precedes(p, &best)) {
				best, found = *p, true
			}
		}
	}
	return best, found
}

func precedes(a, b *Policy) bool {
	return cmp.Or(
		cmp.Compare(auditRank(a.Mode), auditRank(b.Mode)),
		cmp.Compare(a.Result.Values.TimeSeconds, b.Result.Values.TimeSeconds),
		cmp.Compare(a.Result.Values.IntervalSeconds, b.Result.Values.IntervalSeconds),
		cmp.Compare(a.Ref.Name, b.Ref.Name),
		cmp.Compare(a.Ref.Kind, b.Ref.Kind),
		cmp.Compare(a.Ref.Namespace, b.Ref.Namespace),
	) < 0
}

// Precedence says why a governs rather than b when both apply: the first
// of Select's rules that tells them apart.
func Precedence(a, b *Policy) string {
	av, bv := a.Result.Values, b.Result.Values
	switch {
	case auditRank(a.Mode) != auditRank(b.Mode):
		return "Enforce comes before Audit"
	case av.TimeSeconds != bv.TimeSeconds:
		return fmt.Sprintf("a shorter time (%d s against %d s)", av.TimeSeconds, bv.TimeSeconds)
	case av.IntervalSeconds != bv.IntervalSeconds:
		return fmt.Sprintf("a shorter interval (%d s against %d s)", av.IntervalSeconds, bv.IntervalSeconds)
	default:
		return "the same time and interval, and the name comes first"
	}
}

func auditRank(m v1alpha1.Mode) int {
	if m == v1alpha1.ModeAudit {
		return 1
	}
	return 0
}

// ParseRef reads a reference written by Ref.String.
func ParseRef(s string) (Ref, error) {
	parts := strings.Split(s, "/")
	switch {
	case len(parts) == 3 && parts[0] == KindKeepalivePolicy && parts[1] != "" && parts[2] != "":
		return Ref{Kind: parts[0], Namespace: parts[1], Name: parts[2]}, nil
	case len(parts) == 2 && parts[0] == KindClusterKeepalivePolicy && parts[1] != "":
		return Ref{Kind: parts[0], Name: parts[1]}, nil
	}
	return Ref{}, fmt.Errorf("not a policy reference: %q", s)
}
