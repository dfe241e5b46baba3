package v1alpha1

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
