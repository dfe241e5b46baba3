package keepalive

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"

	"github.com/keepalive-operator/keepalive-operator/api/v1alpha1"
	"github.com/keepalive-operator/keepalive-operator/internal/testobj"
)

func TestDecideWithOldNodes(t *testing.T) {
	nlb := mustPolicy(t, testobj.Spec().Preset(v1alpha1.PresetAWSNLB).Policy("shop", "behind-nlb"))
	shop := Namespace{Name: "shop"}
	kubelet128 := Node{Name: "old-1", Labels: map[string]string{"pool": "old"}, Info: NodeInfo{KubeletVersion: "v1.28.5-eks-1234", KernelVersion: "6.1.0"}}
	kubelet128b := Node{Name: "old-2", Labels: map[string]string{"pool": "old"}, Info: NodeInfo{KubeletVersion: "v1.28.5-eks-1234", KernelVersion: "6.1.0"}}
	cordoned := Node{Name: "old-3", Labels: map[string]string{"pool": "old"}, Unschedulable: true, Info: NodeInfo{KubeletVersion: "v1.27.2", KernelVersion: "6.1.0"}}
	tainted := Node{Name: "gpu-1", Taints: []corev1.Taint{{Key: "dedicated", Value: "gpu", Effect: corev1.TaintEffectNoSchedule}}, Info: NodeInfo{KubeletVersion: "v1.28.5"}}
	preferNot := Node{Name: "spot-1", Taints: []corev1.Taint{{Key: "spot", Effect: corev1.TaintEffectPreferNoSchedule}}, Info: NodeInfo{KubeletVersion: "v1.28.5"}}
	notReady := Node{Name: "booting-1", Taints: []corev1.Taint{{Key: corev1.TaintNodeNotReady, Effect: corev1.TaintEffectNoSchedule}}, Info: NodeInfo{KubeletVersion: "v1.28.5"}}
	kernel44 := Node{Name: "legacy-1", Labels: map[string]string{"pool": "legacy"}, Info: NodeInfo{KubeletVersion: "v1.36.0", KernelVersion: "4.4.0-210-generic"}}
	with := func(nodes ...Node) Cluster { return Cluster{Minor: 36, OldNodes: nodes} }
	in := func(key string, values ...string) *corev1.NodeAffinity {
		return &corev1.NodeAffinity{RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{
			NodeSelectorTerms: []corev1.NodeSelectorTerm{{MatchExpressions: []corev1.NodeSelectorRequirement{
				{Key: key, Operator: corev1.NodeSelectorOpIn, Values: values}}}}}}
	}

	cases := map[string]struct {
		placement Placement
		cluster   Cluster
		// skip is the reason expected, "" for a pod that gets the values;
		// warning a text the warning must hold.
		skip    SkipReason
		warning string
	}{
		"no old node": {cluster: with(), skip: ""},
		"a pod that may land anywhere, with an old kubelet in the cluster": {
			cluster: with(kubelet128), skip: SkipNodeKubelet,
			warning: "could be scheduled on node old-1, whose kubelet v1.28.5-eks-1234 treats the keepalive sysctls as unsafe",
		},
		"several old nodes are counted": {
			cluster: with(kubelet128, kubelet128b, kernel44), skip: SkipNodeKubelet, warning: "(and 2 more such nodes)",
		},
		"a kernel older than 4.5": {
			cluster: with(kernel44), skip: SkipNodeKernel,
			warning: "node legacy-1, whose kernel 4.4.0-210-generic has no keepalive sysctls per network namespace",
		},
		"a cordoned old node takes no new pod": {cluster: with(cordoned), skip: ""},
		"but a DaemonSet's pod, which tolerates the cordon": {
			placement: Placement{Tolerations: DaemonSetTolerations}, cluster: with(cordoned), skip: SkipNodeKubelet, warning: "node old-3,",
		},
		"an old node whose taint the pod does not tolerate": {cluster: with(tainted), skip: ""},
		"an old node whose taint the pod tolerates": {
			placement: Placement{Tolerations: []corev1.Toleration{{Key: "dedicated", Operator: corev1.TolerationOpEqual, Value: "gpu", Effect: corev1.TaintEffectNoSchedule}}},
			cluster:   with(tainted), skip: SkipNodeKubelet, warning: "node gpu-1,",
		},
		"a taint that only prefers other nodes keeps no pod off": {cluster: with(preferNot), skip: SkipNodeKubelet},
		"nor does a node that is not ready for now":              {cluster: with(notReady), skip: SkipNodeKubelet},
		"a pod pinned by nodeName to a current node": {
			placement: Placement{NodeName: "new-1"}, cluster: with(kubelet128), skip: "",
		},
		"a pod pinned by nodeName to an old node, cordoned or not": {
			placement: Placement{NodeName: "old-3"}, cluster: with(kubelet128, cordoned), skip: SkipNodeKubelet, warning: "node old-3,",
		},
		"a nodeSelector no old node matches": {
			placement: Placement{NodeSelector: map[string]string{"pool": "new"}}, cluster: with(kubelet128, kernel44), skip: "",
		},
		"a nodeSelector an old node matches": {
			placement: Placement{NodeSelector: map[string]string{"pool": "legacy"}}, cluster: with(kubelet128, kernel44),
			skip: SkipNodeKernel, warning: "node legacy-1,",
		},
		"required node affinity away from the old nodes": {
			placement: Placement{NodeAffinity: in("pool", "new")}, cluster: with(kubelet128, kernel44), skip: "",
		},
		"required node affinity towards an old node": {
			placement: Placement{NodeAffinity: in("pool", "new", "old")}, cluster: with(kubelet128, kernel44), skip: SkipNodeKubelet,
		},
		"an old kubelet allowed the sysctls by flag": {
			cluster: Cluster{Minor: 36, UnsafeSysctlsAllowed: true, OldNodes: []Node{kubelet128}}, skip: "",
		},
		"an old kernel even with the flag": {
			cluster: Cluster{Minor: 36, UnsafeSysctlsAllowed: true, OldNodes: []Node{kubelet128, kernel44}}, skip: SkipNodeKernel,
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			d := Decide(PodView{Placement: tc.placement}, shop, tc.cluster, []Policy{nlb})
			if d.Skip != tc.skip {
				t.Fatalf("skip = %q, want %q (warnings %q)", d.Skip, tc.skip, d.Warnings)
			}
			if tc.skip == "" {
				if diff := cmp.Diff(nlb.sysctls, d.Sysctls); diff != "" {
					t.Errorf("sysctls (-want +got):\n%s", diff)
				}
				return
			}
			if d.Sysctls != nil || len(d.Annotations) > 0 {
				t.Errorf("a blocked pod is patched: %v %v", d.Sysctls, d.Annotations)
			}
			if len(d.Warnings) != 1 || !strings.Contains(d.Warnings[0], tc.warning) || !strings.Contains(d.Warnings[0], "behind-nlb not applied") {
				t.Errorf("warnings = %q, want one holding %q", d.Warnings, tc.warning)
			}
		})
	}
}

func TestDesiredTemplateWithOldNodes(t *testing.T) {
	nlb := mustPolicy(t, testobj.Spec().Preset(v1alpha1.PresetAWSNLB).Policy("shop", "behind-nlb"))
	old := Cluster{Minor: 36, OldNodes: []Node{{Name: "old-1", Labels: map[string]string{"pool": "old"}, Info: NodeInfo{KubeletVersion: "v1.28.1"}}}}
	shop := Namespace{Name: "shop"}

	free := DesiredTemplate(PodView{}, nil, shop, old, []Policy{nlb})
	if free.Changed() || free.Skip != SkipNodeKubelet {
		t.Errorf("a template that may land on an old node: changed %v, skip %q; want unchanged, %q", free.Changed(), free.Skip, SkipNodeKubelet)
	}
	pinned := DesiredTemplate(PodView{Placement: Placement{NodeSelector: map[string]string{"pool": "new"}}}, nil, shop, old, []Policy{nlb})
	if !pinned.SysctlsChanged || pinned.Skip != "" {
		t.Errorf("a template pinned away from the old nodes: changed %v, skip %q; want patched", pinned.SysctlsChanged, pinned.Skip)
	}
}

func TestDescribeOldNodes(t *testing.T) {
	var nodes []Node
	for _, name := range []string{"a", "b", "c", "d", "e", "f", "g"} {
		nodes = append(nodes, Node{Name: name, Info: NodeInfo{KubeletVersion: "v1.28.0"}})
	}
	nodes = append(nodes, Node{Name: "cordoned", Unschedulable: true, Info: NodeInfo{KubeletVersion: "v1.28.0"}})
	cases := map[string]struct {
		c    Cluster
		want string
	}{
		"none":                        {Cluster{}, ""},
		"one":                         {Cluster{OldNodes: nodes[:1]}, "1 schedulable node cannot take the keepalive sysctls: a (kubelet v1.28.0)"},
		"kernel":                      {Cluster{OldNodes: []Node{{Name: "k", Info: NodeInfo{KubeletVersion: "v1.30.0", KernelVersion: "4.4.0"}}}}, "1 schedulable node cannot take the keepalive sysctls: k (kernel 4.4.0)"},
		"cordoned nodes are left out": {Cluster{OldNodes: nodes[7:]}, ""},
		"many": {Cluster{OldNodes: nodes}, "7 schedulable nodes cannot take the keepalive sysctls: " +
			"a (kubelet v1.28.0), b (kubelet v1.28.0), c (kubelet v1.28.0), d (kubelet v1.28.0), e (kubelet v1.28.0), and 2 more"},
		"allowed by flag": {Cluster{UnsafeSysctlsAllowed: true, OldNodes: nodes}, ""},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			if got := DescribeOldNodes(tc.c); got != tc.want {
				t.Errorf("got  %q\nwant %q", got, tc.want)
			}
		})
	}
}
