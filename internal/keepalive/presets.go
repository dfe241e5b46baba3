// Package keepalive is the domain of the operator: the middlebox presets, the
// computation of the keepalive sysctls from a path's idle timeouts, the choice
// among policies, and the merge into a pod's sysctls. It takes plain inputs
// and returns plain results; it knows no client, manager or webhook.
package keepalive

import (
	"slices"

	"github.com/keepalive-operator/keepalive-operator/api/v1alpha1"
)

// Layer is the protocol layer at which a middlebox tracks idleness.
type Layer string

const (
	// L4 middleboxes see TCP segments: a keepalive probe resets their timer.
	L4 Layer = "L4"
	// L7 proxies count only application data: keepalive probes do not reset
	// their timer.
	L7 Layer = "L7"
)

// PresetInfo is what is known of a middlebox: its default idle timeout, the
// range it can be configured within, and its layer. Min == Max == Default for
// a fixed timeout.
type PresetInfo struct {
	DefaultSeconds int32
	MinSeconds     int32
	MaxSeconds     int32
	Layer          Layer
}

// Fixed reports whether the preset's timeout cannot be configured.
func (p PresetInfo) Fixed() bool { return p.MinSeconds == p.MaxSeconds }

// Custom hops (no preset) take seconds in this range.
const (
	CustomMinSeconds int32 = 2
	CustomMaxSeconds int32 = 432000
)

// The CEL rules on v1alpha1.Hop and v1alpha1.KeepalivePolicySpec repeat these
// figures; the envtest suite of api/v1alpha1 checks that they agree.
var presets = map[v1alpha1.Preset]PresetInfo{
	// NLB TCP idle timeout, configurable per TCP listener since 2024; TLS listeners stay at 350 s.
	v1alpha1.PresetAWSNLB: {350, 60, 6000, L4},
	// GWLB flow idle timeout, configurable like the NLB's.
	v1alpha1.PresetAWSGWLB: {350, 60, 6000, L4},
	// NAT Gateway drops idle flows after 350 s and answers the sender with a RST.
	v1alpha1.PresetAWSNATGateway: {350, 350, 350, L4},
	// Interface VPC endpoints (PrivateLink) close idle connections after 350 s.
	v1alpha1.PresetAWSVPCEndpoint: {350, 350, 350, L4},
	// Network Firewall TCP idle timeout, configurable per firewall policy.
	v1alpha1.PresetAWSNetworkFirewall: {350, 60, 6000, L4},
	// EC2 connection tracking of Nitro v6 instances, per-ENI tcp-established timeout.
	v1alpha1.PresetAWSEC2Conntrack: {350, 60, 432000, L4},
	// ALB connection idle timeout; an HTTP proxy, keepalive probes do not reset it.
	v1alpha1.PresetAWSALB: {60, 1, 4000, L7},
	// Classic Load Balancer idle timeout; a proxy like the ALB.
	v1alpha1.PresetAWSCLB: {60, 1, 3600, L7},
	// Azure Load Balancer inbound rule idle timeout, 4 to 100 minutes.
	v1alpha1.PresetAzureLB: {240, 240, 6000, L4},
	// AKS default outbound rule, 30 minutes by default, 4 to 120 minutes.
	v1alpha1.PresetAzureLBOutbound: {1800, 240, 7200, L4},
	// Azure NAT Gateway TCP idle timeout, 4 to 120 minutes.
	v1alpha1.PresetAzureNATGateway: {240, 240, 7200, L4},
	// GCP Cloud NAT TCP established connection idle timeout, 20 minutes by default.
	v1alpha1.PresetGCPCloudNAT: {1200, 30, 86400, L4},
	// GCP VPC firewall rules forget idle established TCP connections after 10 minutes.
	v1alpha1.PresetGCPVPCFirewall: {600, 600, 600, L4},
	// kube-proxy in IPVS mode, --ipvs-tcp-timeout (IPVS default 900 s).
	v1alpha1.PresetKubeProxyIPVS: {900, 1, 86400, L4},
}

// LookupPreset returns what is known of a preset.
func LookupPreset(p v1alpha1.Preset) (PresetInfo, bool) {
	info, ok := presets[p]
	return info, ok
}

// Presets lists the known presets in name order.
func Presets() []v1alpha1.Preset {
	names := make([]v1alpha1.Preset, 0, len(presets))
	for p := range presets {
		names = append(names, p)
	}
	slices.Sort(names)
	return names
}
