package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Preset names a known middlebox and its idle timeout.
// +kubebuilder:validation:Enum=aws-nlb;aws-gwlb;aws-nat-gateway;aws-vpc-endpoint;aws-network-firewall;aws-ec2-conntrack;aws-alb;aws-clb;azure-lb;azure-lb-outbound;azure-nat-gateway;gcp-cloud-nat;gcp-vpc-firewall;kube-proxy-ipvs
type Preset string

// The known middleboxes. Their timeouts and ranges are in internal/keepalive.
const (
	PresetAWSNLB             Preset = "aws-nlb"
	PresetAWSGWLB            Preset = "aws-gwlb"
	PresetAWSNATGateway      Preset = "aws-nat-gateway"
	PresetAWSVPCEndpoint     Preset = "aws-vpc-endpoint"
	PresetAWSNetworkFirewall Preset = "aws-network-firewall"
	PresetAWSEC2Conntrack    Preset = "aws-ec2-conntrack"
	PresetAWSALB             Preset = "aws-alb"
	PresetAWSCLB             Preset = "aws-clb"
	PresetAzureLB            Preset = "azure-lb"
	PresetAzureLBOutbound    Preset = "azure-lb-outbound"
	PresetAzureNATGateway    Preset = "azure-nat-gateway"
	PresetGCPCloudNAT        Preset = "gcp-cloud-nat"
	PresetGCPVPCFirewall     Preset = "gcp-vpc-firewall"
	PresetKubeProxyIPVS      Preset = "kube-proxy-ipvs"
)

// Mode says whether the policy changes pods or only reports.
// +kubebuilder:validation:Enum=Enforce;Audit
type Mode string

const (
	// ModeEnforce injects the sysctls into new pods and rolls workloads.
	ModeEnforce Mode = "Enforce"
	// ModeAudit computes and reports, and mutates nothing.
	ModeAudit Mode = "Audit"
)

// Rollout says what happens to pods that already run with stale values.
// +kubebuilder:validation:Enum=PatchTemplates;None
type Rollout string

const (
	// RolloutPatchTemplates patches the pod template of the owning workload.
	RolloutPatchTemplates Rollout = "PatchTemplates"
	// RolloutNone leaves running workloads alone; only new pods get the values.
	RolloutNone Rollout = "None"
)

// The rules on Hop repeat the ranges of the presets table in
// internal/keepalive; api/v1alpha1's envtest suite holds the two together.

// Hop is one middlebox on the connection path and how long it remembers an
// idle TCP flow.
// +kubebuilder:validation:XValidation:rule="has(self.preset) || has(self.seconds)",message="a hop needs a preset or seconds"
// +kubebuilder:validation:XValidation:rule="has(self.preset) || !has(self.seconds) || self.seconds >= 2",message="seconds of a custom hop must be between 2 and 432000"
// +kubebuilder:validation:XValidation:rule="!has(self.seconds) || !has(self.preset) || self.preset != 'aws-nlb' || (self.seconds >= 60 && self.seconds <= 6000)",message="seconds for preset aws-nlb must be between 60 and 6000"
// +kubebuilder:validation:XValidation:rule="!has(self.seconds) || !has(self.preset) || self.preset != 'aws-gwlb' || (self.seconds >= 60 && self.seconds <= 6000)",message="seconds for preset aws-gwlb must be between 60 and 6000"
// +kubebuilder:validation:XValidation:rule="!has(self.seconds) || !has(self.preset) || self.preset != 'aws-nat-gateway'",message="preset aws-nat-gateway has a fixed idle timeout of 350 seconds: remove seconds"
// +kubebuilder:validation:XValidation:rule="!has(self.seconds) || !has(self.preset) || self.preset != 'aws-vpc-endpoint'",message="preset aws-vpc-endpoint has a fixed idle timeout of 350 seconds: remove seconds"
// +kubebuilder:validation:XValidation:rule="!has(self.seconds) || !has(self.preset) || self.preset != 'aws-network-firewall' || (self.seconds >= 60 && self.seconds <= 6000)",message="seconds for preset aws-network-firewall must be between 60 and 6000"
// +kubebuilder:validation:XValidation:rule="!has(self.seconds) || !has(self.preset) || self.preset != 'aws-ec2-conntrack' || (self.seconds >= 60 && self.seconds <= 432000)",message="seconds for preset aws-ec2-conntrack must be between 60 and 432000"
// +kubebuilder:validation:XValidation:rule="!has(self.seconds) || !has(self.preset) || self.preset != 'aws-alb' || (self.seconds >= 1 && self.seconds <= 4000)",message="seconds for preset aws-alb must be between 1 and 4000"
// +kubebuilder:validation:XValidation:rule="!has(self.seconds) || !has(self.preset) || self.preset != 'aws-clb' || (self.seconds >= 1 && self.seconds <= 3600)",message="seconds for preset aws-clb must be between 1 and 3600"
// +kubebuilder:validation:XValidation:rule="!has(self.seconds) || !has(self.preset) || self.preset != 'azure-lb' || (self.seconds >= 240 && self.seconds <= 6000)",message="seconds for preset azure-lb must be between 240 and 6000"
// +kubebuilder:validation:XValidation:rule="!has(self.seconds) || !has(self.preset) || self.preset != 'azure-lb-outbound' || (self.seconds >= 240 && self.seconds <= 7200)",message="seconds for preset azure-lb-outbound must be between 240 and 7200"
// +kubebuilder:validation:XValidation:rule="!has(self.seconds) || !has(self.preset) || self.preset != 'azure-nat-gateway' || (self.seconds >= 240 && self.seconds <= 7200)",message="seconds for preset azure-nat-gateway must be between 240 and 7200"
// +kubebuilder:validation:XValidation:rule="!has(self.seconds) || !has(self.preset) || self.preset != 'gcp-cloud-nat' || (self.seconds >= 30 && self.seconds <= 86400)",message="seconds for preset gcp-cloud-nat must be between 30 and 86400"
// +kubebuilder:validation:XValidation:rule="!has(self.seconds) || !has(self.preset) || self.preset != 'gcp-vpc-firewall'",message="preset gcp-vpc-firewall has a fixed idle timeout of 600 seconds: remove seconds"
// +kubebuilder:validation:XValidation:rule="!has(self.seconds) || !has(self.preset) || self.preset != 'kube-proxy-ipvs' || (self.seconds >= 1 && self.seconds <= 86400)",message="seconds for preset kube-proxy-ipvs must be between 1 and 86400"
type Hop struct {
	// preset names a known middlebox whose default idle timeout applies
	// unless seconds overrides it.
	// +optional
	Preset Preset `json:"preset,omitempty"`

	// name labels the hop in status. Defaults to the preset.
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	Name string `json:"name,omitempty"`

	// seconds is the idle timeout of the hop. Required without a preset
	// (2..432000); with a preset it overrides the preset's default and must be
	// within the preset's range.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=432000
	Seconds *int32 `json:"seconds,omitempty"`
}

// The rule on KeepalivePolicySpec rejects an explicit interval with
// time + interval >= T, T the shortest timeout. It takes the minimum of
// t - time(t) over the hops, which equals T - time(T) because t - time(t)
// never decreases as t grows. The map holds the presets' default timeouts.

// KeepalivePolicySpec states the idle timeouts on a connection path and how to
// apply the keepalive values derived from them.
// +kubebuilder:validation:XValidation:rule="!has(self.intervalSeconds) || self.intervalSeconds < self.idleTimeouts.map(h, has(h.seconds) ? h.seconds : (has(h.preset) ? {'aws-nlb': 350, 'aws-gwlb': 350, 'aws-nat-gateway': 350, 'aws-vpc-endpoint': 350, 'aws-network-firewall': 350, 'aws-ec2-conntrack': 350, 'aws-alb': 60, 'aws-clb': 60, 'azure-lb': 240, 'azure-lb-outbound': 1800, 'azure-nat-gateway': 240, 'gcp-cloud-nat': 1200, 'gcp-vpc-firewall': 600, 'kube-proxy-ipvs': 900}[h.preset] : 432000)).map(t, t - (t * (has(self.timePercent) ? self.timePercent : 50) / 100 < 1 ? 1 : t * (has(self.timePercent) ? self.timePercent : 50) / 100)).min()",message="intervalSeconds is too long: keepalive time plus intervalSeconds must be less than the shortest idle timeout, or the middlebox forgets the flow before the second probe"
type KeepalivePolicySpec struct {
	// podSelector selects the pods the policy applies to, by their labels.
	// Absent or empty selects every pod in scope.
	// +optional
	PodSelector *LabelSelector `json:"podSelector,omitempty"`

	// idleTimeouts lists the middleboxes on the connection path, 1 to 16
	// hops. The shortest timeout governs.
	// +required
	// +listType=atomic
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=16
	IdleTimeouts []Hop `json:"idleTimeouts"`

	// timePercent is tcp_keepalive_time as a percentage of the shortest idle
	// timeout.
	// +optional
	// +kubebuilder:default=50
	// +kubebuilder:validation:Minimum=10
	// +kubebuilder:validation:Maximum=90
	TimePercent int32 `json:"timePercent,omitempty"`

	// intervalSeconds is tcp_keepalive_intvl. When absent it is a third of
	// what remains of the shortest timeout after the keepalive time, between
	// 1 and 30 seconds.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=32767
	IntervalSeconds *int32 `json:"intervalSeconds,omitempty"`

	// probes is tcp_keepalive_probes, the unanswered probes after which the
	// kernel drops the connection.
	// +optional
	// +kubebuilder:default=9
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=127
	Probes int32 `json:"probes,omitempty"`

	// mode is Enforce (inject and roll out) or Audit (compute and report,
	// mutate nothing).
	// +optional
	// +kubebuilder:default=Enforce
	Mode Mode `json:"mode,omitempty"`

	// rollout is PatchTemplates (patch the pod templates of workloads whose
	// pods run with stale values) or None (only new pods get the values).
	// +optional
	// +kubebuilder:default=PatchTemplates
	Rollout Rollout `json:"rollout,omitempty"`
}

// GoverningTimeout is the hop with the shortest idle timeout.
type GoverningTimeout struct {
	// name is the hop's name, its preset, or idleTimeouts[i] for an unnamed
	// custom hop.
	// +optional
	Name string `json:"name,omitempty"`

	// seconds is the hop's idle timeout.
	// +optional
	Seconds int32 `json:"seconds,omitempty"`
}

// KeepaliveValues are the sysctl values the policy sets.
type KeepaliveValues struct {
	// timeSeconds is net.ipv4.tcp_keepalive_time.
	// +optional
	TimeSeconds int32 `json:"timeSeconds,omitempty"`

	// intervalSeconds is net.ipv4.tcp_keepalive_intvl.
	// +optional
	IntervalSeconds int32 `json:"intervalSeconds,omitempty"`

	// probes is net.ipv4.tcp_keepalive_probes.
	// +optional
	Probes int32 `json:"probes,omitempty"`

	// detectionSeconds is how long a dead peer goes unnoticed at most:
	// time + interval × probes.
	// +optional
	DetectionSeconds int32 `json:"detectionSeconds,omitempty"`
}

// PodCounts counts the pods the policy selects.
type PodCounts struct {
	// matched is the number of running pods the policy selects.
	// +optional
	Matched int32 `json:"matched"`

	// compliant is the number of matched pods whose values are at least as
	// aggressive as the policy's.
	// +optional
	Compliant int32 `json:"compliant"`

	// stale is the number of matched pods that lack the values or carry
	// larger ones.
	// +optional
	Stale int32 `json:"stale"`

	// skipped is the number of matched pods the policy cannot reach
	// (hostNetwork, Windows, opted out, blocked by Pod Security).
	// +optional
	Skipped int32 `json:"skipped"`
}

// WorkloadCounts counts the workloads whose pod templates carry the
// policy's values, or are to.
type WorkloadCounts struct {
	// patched is the number of workloads whose template carries the
	// policy's values, set by the operator.
	// +optional
	Patched int32 `json:"patched"`

	// rolling is the number of those whose pods are being replaced because
	// of the operator: each holds a rollout slot.
	// +optional
	Rolling int32 `json:"rolling"`

	// waitingForOwner is the number of patched workloads whose pods are
	// replaced only when their owner acts: a paused Deployment, an OnDelete
	// update strategy, a StatefulSet partition that excludes every pod.
	// +optional
	WaitingForOwner int32 `json:"waitingForOwner"`

	// pending is the number of workloads waiting for a rollout slot.
	// +optional
	Pending int32 `json:"pending"`

	// failed is the number of workloads whose last write failed; the
	// policy's events name them and the error.
	// +optional
	Failed int32 `json:"failed"`

	// reverted is the number of workloads whose template another writer
	// (a GitOps tool, say) reverted three times within an hour: the
	// operator leaves them alone until their template carries the values
	// or the policy changes. The policy's events name the writer.
	// +optional
	Reverted int32 `json:"reverted"`
}

// KeepalivePolicyStatus is what the operator observed and computed.
type KeepalivePolicyStatus struct {
	// observedGeneration is the generation of the spec the status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// conditions are Ready, L7ProxyInPath, PodsBlocked and, where the
	// audit runs, KeepaliveNotEnabled.
	// +optional
	// +listType=map
	// +listMapKey=type
	// +kubebuilder:validation:MaxItems=8
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// governingTimeout is the hop with the shortest idle timeout.
	// +optional
	GoverningTimeout *GoverningTimeout `json:"governingTimeout,omitempty"`

	// keepalive holds the computed sysctl values.
	// +optional
	Keepalive *KeepaliveValues `json:"keepalive,omitempty"`

	// pods counts the pods the policy selects.
	// +optional
	Pods *PodCounts `json:"pods,omitempty"`

	// workloads counts the workloads the policy rolls.
	// +optional
	Workloads *WorkloadCounts `json:"workloads,omitempty"`

	// connections counts the established TCP connections of the selected
	// pods by their keepalive, as the audit agents last read them; absent
	// while no agent reports.
	// +optional
	Connections *ConnectionAudit `json:"connections,omitempty"`
}

// ConnectionAudit is what the audit agents report of the connections of a
// policy's pods.
type ConnectionAudit struct {
	ConnectionCounts `json:",inline"`

	// podsReported is the number of selected pods in fresh node reports.
	// +optional
	PodsReported int32 `json:"podsReported"`

	// podsUnaudited is the number of selected running pods on nodes with no
	// report or a stale one: nothing is known of their connections.
	// +optional
	PodsUnaudited int32 `json:"podsUnaudited"`
}

// KeepalivePolicy keeps idle TCP connections of the pods of its namespace
// alive through the middleboxes on their path.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=kap,categories=keepalive
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
type KeepalivePolicy struct {
	metav1.TypeMeta `json:",inline"`
	// metadata is the object's metadata.
	// +optional
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec states the idle timeouts and how to apply the values.
	// +required
	Spec KeepalivePolicySpec `json:"spec"`

	// status is what the operator observed and computed.
	// +optional
	Status KeepalivePolicyStatus `json:"status,omitempty"`
}

// KeepalivePolicyList is a list of KeepalivePolicy.
// +kubebuilder:object:root=true
type KeepalivePolicyList struct {
	metav1.TypeMeta `json:",inline"`
	// metadata is the list's metadata.
	// +optional
	metav1.ListMeta `json:"metadata,omitempty"`
	// items are the policies.
	Items []KeepalivePolicy `json:"items"`
}
