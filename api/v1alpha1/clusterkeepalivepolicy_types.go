package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ClusterKeepalivePolicySpec is a KeepalivePolicySpec that also chooses the
// namespaces it applies to.
type ClusterKeepalivePolicySpec struct {
	KeepalivePolicySpec `json:",inline"`

	// namespaceSelector selects the namespaces the policy applies to, by
	// their labels. Absent or empty selects every namespace that is not
	// excluded.
	// +optional
	NamespaceSelector *LabelSelector `json:"namespaceSelector,omitempty"`
}

// ClusterKeepalivePolicy keeps idle TCP connections of pods alive across the
// namespaces it selects.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Cluster,shortName=ckap,categories=keepalive
// +kubebuilder:printcolumn:name="Time",type=integer,JSONPath=`.status.keepalive.timeSeconds`
// +kubebuilder:printcolumn:name="Interval",type=integer,JSONPath=`.status.keepalive.intervalSeconds`
// +kubebuilder:printcolumn:name="Probes",type=integer,JSONPath=`.status.keepalive.probes`
// +kubebuilder:printcolumn:name="Governing",type=string,JSONPath=`.status.governingTimeout.name`
// +kubebuilder:printcolumn:name="Matched",type=integer,JSONPath=`.status.pods.matched`
// +kubebuilder:printcolumn:name="Compliant",type=integer,JSONPath=`.status.pods.compliant`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:printcolumn:name="Mode",type=string,JSONPath=`.spec.mode`,priority=1
// +kubebuilder:printcolumn:name="Detection",type=integer,JSONPath=`.status.keepalive.detectionSeconds`,priority=1
// +kubebuilder:printcolumn:name="Governing-Seconds",type=integer,JSONPath=`.status.governingTimeout.seconds`,priority=1
type ClusterKeepalivePolicy struct {
	metav1.TypeMeta `json:",inline"`
	// metadata is the object's metadata.
	// +optional
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec states the idle timeouts, the namespaces, and how to apply the
	// values.
	// +required
	Spec ClusterKeepalivePolicySpec `json:"spec"`

	// status is what the operator observed and computed.
	// +optional
	Status KeepalivePolicyStatus `json:"status,omitempty"`
}

// ClusterKeepalivePolicyList is a list of ClusterKeepalivePolicy.
// +kubebuilder:object:root=true
type ClusterKeepalivePolicyList struct {
	metav1.TypeMeta `json:",inline"`
	// metadata is the list's metadata.
	// +optional
	metav1.ListMeta `json:"metadata,omitempty"`
	// items are the policies.
	Items []ClusterKeepalivePolicy `json:"items"`
}
