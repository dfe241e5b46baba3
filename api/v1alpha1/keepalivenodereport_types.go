package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ConnectionCounts counts established TCP connections by their keepalive.
type ConnectionCounts struct {
	// armed is the number of connections whose keepalive timer is pending
	// and fires within the policy's timeSeconds.
	// +optional
	Armed int32 `json:"armed"`

	// armedLate is the number of connections whose keepalive timer is
	// pending but was seen further off than the policy's timeSeconds: a
	// per-socket idle time (TCP_KEEPIDLE) longer than the policy's, or a pod
	// without its values.
	// +optional
	ArmedLate int32 `json:"armedLate"`

	// notArmed is the number of connections without a keepalive timer: the
	// application never turned SO_KEEPALIVE on.
	// +optional
	NotArmed int32 `json:"notArmed"`

	// unknown is the number of connections whose keepalive timer was hidden
	// by a retransmission or zero-window probe timer when they were read.
	// +optional
	Unknown int32 `json:"unknown"`
}

// PolicyConnections are a pod's connections judged against one policy that
// selects it.
type PolicyConnections struct {
	ConnectionCounts `json:",inline"`

	// policy names the policy: KeepalivePolicy/namespace/name or
	// ClusterKeepalivePolicy/name.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=600
	Policy string `json:"policy"`

	// timeSeconds is the policy's keepalive time the connections were
	// judged against.
	// +required
	// +kubebuilder:validation:Minimum=1
	TimeSeconds int32 `json:"timeSeconds"`
}

// PodConnections are the connections of one pod on the node.
type PodConnections struct {
	// namespace is the pod's namespace.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	Namespace string `json:"namespace"`

	// name is the pod's name.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`

	// policies are the pod's connections judged against each policy that
	// selects it, the one that governs the pod first.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=16
	Policies []PolicyConnections `json:"policies,omitempty"`

	// error says why the pod's sockets could not be read; its connections
	// are then not counted.
	// +optional
	// +kubebuilder:validation:MaxLength=1024
	Error string `json:"error,omitempty"`
}

// KeepaliveNodeReportStatus is what a node's audit agent read.
type KeepaliveNodeReportStatus struct {
	// auditTime is when the agent last wrote the report. It writes when
	// what it reads changes, and at least once per validSeconds otherwise.
	// +required
	AuditTime metav1.Time `json:"auditTime"`

	// validSeconds is how long the report holds after auditTime: a report
	// older than that is stale, its node counted as unaudited.
	// +required
	// +kubebuilder:validation:Minimum=1
	ValidSeconds int32 `json:"validSeconds"`

	// intervalSeconds is how often the agent reads the node's sockets.
	// +required
	// +kubebuilder:validation:Minimum=1
	IntervalSeconds int32 `json:"intervalSeconds"`

	// podCount is the number of pods in pods.
	// +optional
	PodCount int32 `json:"podCount"`

	// total counts the connections of every pod in pods, each once,
	// judged against the pod's first policy, the one that governs it.
	// +optional
	Total ConnectionCounts `json:"total"`

	// pods are the node's running pods that a policy selects, in
	// namespace and name order.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=1000
	Pods []PodConnections `json:"pods,omitempty"`
}

// KeepaliveNodeReport is the audit agent's report of one node, named after
// it: the established TCP connections of the node's selected pods, by their
// keepalive. Only the agent on that node writes it.
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Cluster,shortName=kanr,categories=keepalive
// +kubebuilder:printcolumn:name="Pods",type=integer,JSONPath=`.status.podCount`
// +kubebuilder:printcolumn:name="Armed",type=integer,JSONPath=`.status.total.armed`
// +kubebuilder:printcolumn:name="Armed-Late",type=integer,JSONPath=`.status.total.armedLate`
// +kubebuilder:printcolumn:name="Not-Armed",type=integer,JSONPath=`.status.total.notArmed`
// +kubebuilder:printcolumn:name="Unknown",type=integer,JSONPath=`.status.total.unknown`
// +kubebuilder:printcolumn:name="Audited",type=date,JSONPath=`.status.auditTime`
// +kubebuilder:printcolumn:name="Interval",type=integer,JSONPath=`.status.intervalSeconds`,priority=1
type KeepaliveNodeReport struct {
	metav1.TypeMeta `json:",inline"`
	// metadata is the object's metadata; its name is the node's.
	// +optional
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// status is what the node's agent read.
	// +optional
	Status KeepaliveNodeReportStatus `json:"status,omitempty"`
}

// KeepaliveNodeReportList is a list of KeepaliveNodeReport.
// +kubebuilder:object:root=true
type KeepaliveNodeReportList struct {
	metav1.TypeMeta `json:",inline"`
	// metadata is the list's metadata.
	// +optional
	metav1.ListMeta `json:"metadata,omitempty"`
	// items are the reports.
	Items []KeepaliveNodeReport `json:"items"`
}
