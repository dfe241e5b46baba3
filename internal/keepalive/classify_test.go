package keepalive

import (
	"testing"

	"github.com/keepalive-operator/keepalive-operator/api/v1alpha1"
	"github.com/keepalive-operator/keepalive-operator/internal/testobj"
)

func TestClassify(t *testing.T) {
	nlb := mustPolicy(t, testobj.Spec().Preset(v1alpha1.PresetAWSNLB).Policy("shop", "nlb"))
	current := Cluster{Minor: 36, OperatorNamespace: "keepalive-system"}
	shop := Namespace{Name: "shop"}
	compliant := sysctls(SysctlTime, "175", SysctlInterval, "30", SysctlProbes, "9")
	cases := map[string]struct {
		pod     PodView
		ns      Namespace
		cluster Cluster
		node    *NodeInfo
		state   PodState
		reason  SkipReason
	}{
		"compliant":                 {pod: PodView{Sysctls: compliant}, ns: shop, cluster: current, state: PodCompliant},
		"compliant by smaller ones": {pod: PodView{Sysctls: sysctls(SysctlTime, "30", SysctlInterval, "10", SysctlProbes, "3")}, ns: shop, cluster: current, state: PodCompliant},
		"stale: nothing set":        {ns: shop, cluster: current, state: PodStale},
		"stale: a larger value":     {pod: PodView{Sysctls: sysctls(SysctlTime, "7200", SysctlInterval, "30", SysctlProbes, "9")}, ns: shop, cluster: current, state: PodStale},
		"hostNetwork":               {pod: PodView{HostNetwork: true}, ns: shop, cluster: current, state: PodSkipped, reason: SkipHostNetwork},
		"Windows":                   {pod: PodView{OS: "windows"}, ns: shop, cluster: current, state: PodSkipped, reason: SkipWindows},
		"pod opted out":             {pod: PodView{Labels: map[string]string{LabelInject: InjectDisabled}}, ns: shop, cluster: current, state: PodSkipped, reason: SkipPodOptOut},
		"namespace opted out":       {ns: Namespace{Name: "shop", Labels: map[string]string{LabelInject: InjectDisabled}}, cluster: current, state: PodSkipped, reason: SkipNamespaceOptOut},
		"kube-system":               {ns: Namespace{Name: "kube-system"}, cluster: current, state: PodSkipped, reason: SkipExcludedNamespace},
		"Pod Security v1.28": {
			ns:      Namespace{Name: "shop", Labels: map[string]string{labelPSAEnforce: "restricted", labelPSAEnforceVersion: "v1.28"}},
			cluster: current, state: PodSkipped, reason: SkipPodSecurityVersion,
		},
		"cluster 1.28":                     {ns: shop, cluster: Cluster{Minor: 28}, state: PodSkipped, reason: SkipClusterVersion},
		"kubelet 1.28":                     {ns: shop, cluster: current, node: &NodeInfo{KubeletVersion: "v1.28.15-eks-a737599", KernelVersion: "6.1.0"}, state: PodSkipped, reason: SkipNodeKubelet},
		"kubelet 1.28, unsafe allowed":     {ns: shop, cluster: Cluster{Minor: 36, UnsafeSysctlsAllowed: true}, node: &NodeInfo{KubeletVersion: "v1.28.15", KernelVersion: "6.1.0"}, state: PodStale},
		"kernel 4.4":                       {ns: shop, cluster: current, node: &NodeInfo{KubeletVersion: "v1.36.3", KernelVersion: "4.4.0-210-generic"}, state: PodSkipped, reason: SkipNodeKernel},
		"kernel 4.5":                       {ns: shop, cluster: current, node: &NodeInfo{KubeletVersion: "v1.36.3", KernelVersion: "4.5.0"}, state: PodStale},
		"unreadable versions do not block": {ns: shop, cluster: current, node: &NodeInfo{KubeletVersion: "unknown", KernelVersion: "custom"}, state: PodStale},
		"compliant as the kernel reads them": {
			pod: PodView{Sysctls: sysctls(SysctlTime, " 100 ", SysctlInterval, "0x10", SysctlProbes, "010")}, ns: shop, cluster: current, state: PodCompliant,
		},
		"stale: hex read larger":  {pod: PodView{Sysctls: sysctls(SysctlTime, "0x1000", SysctlInterval, "30", SysctlProbes, "9")}, ns: shop, cluster: current, state: PodStale},
		"stale: zero":             {pod: PodView{Sysctls: sysctls(SysctlTime, "0", SysctlInterval, "30", SysctlProbes, "9")}, ns: shop, cluster: current, state: PodStale},
		"stale: negative":         {pod: PodView{Sysctls: sysctls(SysctlTime, "-5", SysctlInterval, "30", SysctlProbes, "9")}, ns: shop, cluster: current, state: PodStale},
		"stale: empty keeps 7200": {pod: PodView{Sysctls: sysctls(SysctlTime, "", SysctlInterval, "30", SysctlProbes, "9")}, ns: shop, cluster: current, state: PodStale},
		"compliant in slash form": {pod: PodView{Sysctls: sysctls("net/ipv4/tcp_keepalive_time", "175", "net/ipv4/tcp_keepalive_intvl", "30", "net/ipv4/tcp_keepalive_probes", "9")}, ns: shop, cluster: current, state: PodCompliant},
		"stale: one of both forms larger": {
			pod: PodView{Sysctls: sysctls(SysctlTime, "175", "net/ipv4/tcp_keepalive_time", "7200", SysctlInterval, "30", SysctlProbes, "9")}, ns: shop, cluster: current, state: PodStale,
		},
		"a value the kernel refuses, not compliant": {
			pod: PodView{Sysctls: sysctls(SysctlTime, "+100", SysctlInterval, "30", SysctlProbes, "9")}, ns: shop, cluster: current, state: PodSkipped, reason: SkipInvalidValue,
		},
		"refused probes, outside the int range": {
			pod: PodView{Sysctls: sysctls(SysctlTime, "100", SysctlInterval, "30", SysctlProbes, "2147483648")}, ns: shop, cluster: current, state: PodSkipped, reason: SkipInvalidValue,
		},
		"stale: probes above 255, which only Linux 5.13 and later refuse": {
			pod: PodView{Sysctls: sysctls(SysctlTime, "100", SysctlInterval, "30", SysctlProbes, "256")}, ns: shop, cluster: current, state: PodStale,
		},
		"refused even where the rest is missing": {
			pod: PodView{Sysctls: sysctls("net/ipv4/tcp_keepalive_intvl", "100abc")}, ns: shop, cluster: current, state: PodSkipped, reason: SkipInvalidValue,
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			state, reason := Classify(tc.pod, tc.ns, tc.cluster, &nlb, tc.node)
			if state != tc.state || reason != tc.reason {
				t.Errorf("Classify() = %s/%s, want %s/%s", state, reason, tc.state, tc.reason)
			}
			if reason != "" && reason.Blocks() == (reason == SkipPodOptOut || reason == SkipNamespaceOptOut || reason == SkipExcludedNamespace) {
				t.Errorf("%s.Blocks() = %v", reason, reason.Blocks())
			}
		})
	}
}
