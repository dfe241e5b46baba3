package keepalive

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/version"

	"github.com/keepalive-operator/keepalive-operator/api/v1alpha1"
	"github.com/keepalive-operator/keepalive-operator/internal/testobj"
)

func TestDecide(t *testing.T) {
	nlb := mustPolicy(t, testobj.Spec().Preset(v1alpha1.PresetAWSNLB).Policy("shop", "behind-nlb"))
	audit := mustPolicy(t, testobj.Spec().Preset(v1alpha1.PresetAWSALB).Mode(v1alpha1.ModeAudit).Policy("shop", "trial"))
	everywhere := mustClusterPolicy(t, testobj.Spec().Preset(v1alpha1.PresetAzureLB).ClusterPolicy("all", nil))
	current := Cluster{Minor: 36, OperatorNamespace: "keepalive-system"}
	old := Cluster{Minor: 28, OperatorNamespace: "keepalive-system"}
	oldAllowed := Cluster{Minor: 28, UnsafeSysctlsAllowed: true, OperatorNamespace: "keepalive-system"}
	shop := Namespace{Name: "shop"}
	psa := func(level, version string) Namespace {
		l := map[string]string{"pod-security.kubernetes.io/enforce": level}
		if version != "" {
			l["pod-security.kubernetes.io/enforce-version"] = version
		}
		return Namespace{Name: "shop", Labels: l}
	}
	nlbSysctls := sysctls(SysctlTime, "175", SysctlInterval, "30", SysctlProbes, "9")
	injected := Decision{
		Policy:      &nlb,
		Sysctls:     nlbSysctls,
		Annotations: []Annotation{{AnnotationPolicy, "KeepalivePolicy/shop/behind-nlb"}},
	}

	cases := map[string]struct {
		pod      PodView
		ns       Namespace
		cluster  Cluster
		policies []Policy
		want     Decision
	}{
		"kube-system is excluded": {
			ns: Namespace{Name: "kube-system"}, cluster: current, policies: []Policy{everywhere},
			want: Decision{Skip: SkipExcludedNamespace},
		},
		"the operator's namespace is excluded": {
			ns: Namespace{Name: "keepalive-system"}, cluster: current, policies: []Policy{everywhere},
			want: Decision{Skip: SkipExcludedNamespace},
		},
		"a namespace excluded by flag": {
			ns: shop, cluster: Cluster{Minor: 36, ExcludedNamespaces: []string{"batch", "shop"}}, policies: []Policy{nlb},
			want: Decision{Skip: SkipExcludedNamespace},
		},
		"a namespace outside the namespace selector": {
			ns: shop, cluster: Cluster{Minor: 36, NamespaceSelector: mustSelector(t, "team in (web)")}, policies: []Policy{nlb},
			want: Decision{Skip: SkipExcludedNamespace},
		},
		"a pod outside the object selector": {
			pod: PodView{Labels: map[string]string{"tier": "batch"}}, ns: shop,
			cluster: Cluster{Minor: 36, PodSelector: mustSelector(t, "tier notin (batch)")}, policies: []Policy{nlb},
			want: Decision{Skip: SkipExcludedPod},
		},
		"a pod inside both selectors": {
			pod: PodView{Labels: map[string]string{"tier": "web"}}, ns: Namespace{Name: "shop", Labels: map[string]string{"team": "web"}},
			cluster:  Cluster{Minor: 36, NamespaceSelector: mustSelector(t, "team in (web)"), PodSelector: mustSelector(t, "tier notin (batch)")},
			policies: []Policy{nlb},
			want:     injected,
		},
		"namespace opted out": {
			ns: Namespace{Name: "shop", Labels: map[string]string{LabelInject: InjectDisabled}}, cluster: current, policies: []Policy{nlb},
			want: Decision{Skip: SkipNamespaceOptOut},
		},
		"pod opted out": {
			pod: PodView{Labels: map[string]string{LabelInject: InjectDisabled}}, ns: shop, cluster: current, policies: []Policy{nlb},
			want: Decision{Skip: SkipPodOptOut},
		},
		"no policy": {
			ns: shop, cluster: current,
			want: Decision{Skip: SkipNoPolicy},
		},
		"hostNetwork": {
			pod: PodView{HostNetwork: true}, ns: shop, cluster: current, policies: []Policy{nlb},
			want: Decision{Skip: SkipHostNetwork, Policy: &nlb, Warnings: []string{
				"keepalive.io: KeepalivePolicy/shop/behind-nlb not applied: a hostNetwork pod uses the node's keepalive sysctls"}},
		},
		"Windows": {
			pod: PodView{OS: "windows"}, ns: shop, cluster: current, policies: []Policy{nlb},
			want: Decision{Skip: SkipWindows, Policy: &nlb, Warnings: []string{
				"keepalive.io: KeepalivePolicy/shop/behind-nlb not applied: Windows pods take no sysctls"}},
		},
		"Linux pod named explicitly": {
			pod: PodView{OS: "linux"}, ns: shop, cluster: current, policies: []Policy{nlb},
			want: injected,
		},
		"cluster older than 1.29": {
			ns: shop, cluster: old, policies: []Policy{nlb},
			want: Decision{Skip: SkipClusterVersion, Policy: &nlb, Warnings: []string{
				"keepalive.io: KeepalivePolicy/shop/behind-nlb not applied: Kubernetes 1.28 treats the keepalive sysctls as unsafe; allow them on every kubelet and run the operator with --unsafe-sysctls-allowed"}},
		},
		"cluster older than 1.29, unsafe sysctls allowed": {
			ns: shop, cluster: oldAllowed, policies: []Policy{nlb},
			want: injected,
		},
		"baseline at v1.28": {
			ns: psa("baseline", "v1.28"), cluster: current, policies: []Policy{nlb},
			want: Decision{Skip: SkipPodSecurityVersion, Policy: &nlb, Warnings: []string{
				`keepalive.io: KeepalivePolicy/shop/behind-nlb not applied: Pod Security "baseline" at version v1.28 rejects the keepalive sysctls; set pod-security.kubernetes.io/enforce-version to v1.29 or later`}},
		},
		"restricted at v1.20": {
			ns: psa("restricted", "v1.20"), cluster: current, policies: []Policy{nlb},
			want: Decision{Skip: SkipPodSecurityVersion, Policy: &nlb, Warnings: []string{
				`keepalive.io: KeepalivePolicy/shop/behind-nlb not applied: Pod Security "restricted" at version v1.20 rejects the keepalive sysctls; set pod-security.kubernetes.io/enforce-version to v1.29 or later`}},
		},
		"baseline at v1.29": {
			ns: psa("baseline", "v1.29"), cluster: current, policies: []Policy{nlb},
			want: injected,
		},
		"restricted at latest": {
			ns: psa("restricted", "latest"), cluster: current, policies: []Policy{nlb},
			want: injected,
		},
		"privileged at v1.28": {
			ns: psa("privileged", "v1.28"), cluster: current, policies: []Policy{nlb},
			want: injected,
		},
		"baseline without version on an old cluster that allows the sysctls": {
			ns: psa("baseline", ""), cluster: oldAllowed, policies: []Policy{nlb},
			want: Decision{Skip: SkipPodSecurityVersion, Policy: &nlb, Warnings: []string{
				`keepalive.io: KeepalivePolicy/shop/behind-nlb not applied: Pod Security "baseline" at version v1.28 (the cluster's) rejects the keepalive sysctls; set pod-security.kubernetes.io/enforce-version to v1.29 or later`}},
		},
		"Audit": {
			ns: shop, cluster: current, policies: []Policy{audit},
			want: Decision{Skip: SkipAudit, Policy: &audit, Warnings: []string{
				"keepalive.io: KeepalivePolicy/shop/trial (Audit) would set net.ipv4.tcp_keepalive_time=30, net.ipv4.tcp_keepalive_intvl=10, net.ipv4.tcp_keepalive_probes=9"}},
		},
		"Audit of a compliant pod says nothing": {
			pod: PodView{Sysctls: sysctls(SysctlTime, "10", SysctlInterval, "5", SysctlProbes, "3")}, ns: shop, cluster: current, policies: []Policy{audit},
			want: Decision{Skip: SkipAudit, Policy: &audit},
		},
		"Enforce wins over Audit": {
			ns: shop, cluster: current, policies: []Policy{audit, nlb},
			want: injected,
		},
		"cluster policy with namespaced one: the smaller time wins": {
			ns: shop, cluster: current, policies: []Policy{everywhere, nlb},
			want: Decision{
				Policy:      &everywhere,
				Sysctls:     sysctls(SysctlTime, "120", SysctlInterval, "30", SysctlProbes, "9"),
				Annotations: []Annotation{{AnnotationPolicy, "ClusterKeepalivePolicy/all"}},
			},
		},
		"user values: larger replaced and recorded, smaller kept": {
			pod: PodView{Sysctls: sysctls("kernel.shm_rmid_forced", "1", SysctlTime, "7200", SysctlProbes, "5")},
			ns:  shop, cluster: current, policies: []Policy{nlb},
			want: Decision{
				Policy:  &nlb,
				Sysctls: sysctls("kernel.shm_rmid_forced", "1", SysctlTime, "175", SysctlProbes, "5", SysctlInterval, "30"),
				Annotations: []Annotation{
					{AnnotationPolicy, "KeepalivePolicy/shop/behind-nlb"},
					{AnnotationOriginalSysctls, `[{"name":"net.ipv4.tcp_keepalive_time","value":"7200"}]`},
				},
				Warnings: []string{"keepalive.io: KeepalivePolicy/shop/behind-nlb replaced net.ipv4.tcp_keepalive_time=7200 with net.ipv4.tcp_keepalive_time=175; the originals are in annotation keepalive.io/original-sysctls"},
			},
		},
		"compliant pod without annotation gets the annotation only": {
			pod: PodView{Sysctls: nlbSysctls}, ns: shop, cluster: current, policies: []Policy{nlb},
			want: Decision{Policy: &nlb, Annotations: []Annotation{{AnnotationPolicy, "KeepalivePolicy/shop/behind-nlb"}}},
		},
		"already injected: nothing to do": {
			pod: PodView{Sysctls: nlbSysctls, Annotations: map[string]string{AnnotationPolicy: "KeepalivePolicy/shop/behind-nlb"}},
			ns:  shop, cluster: current, policies: []Policy{nlb},
			want: Decision{Policy: &nlb},
		},
		"values kept as the kernel reads them": {
			pod: PodView{Sysctls: sysctls(SysctlTime, " 100 ", SysctlInterval, "0x10", SysctlProbes, "010")},
			ns:  shop, cluster: current, policies: []Policy{nlb},
			want: Decision{Policy: &nlb, Annotations: []Annotation{{AnnotationPolicy, "KeepalivePolicy/shop/behind-nlb"}}},
		},
		"a value the kernel refuses: the pod is left alone": {
			pod: PodView{Sysctls: sysctls(SysctlTime, "+100")}, ns: shop, cluster: current, policies: []Policy{nlb},
			want: Decision{Skip: SkipInvalidValue, Policy: &nlb, Warnings: []string{
				`keepalive.io: KeepalivePolicy/shop/behind-nlb not applied: the kernel refuses net.ipv4.tcp_keepalive_time="+100" (the pod cannot start as written); set a decimal integer`}},
		},
		"every refused value is named": {
			pod: PodView{Sysctls: sysctls(SysctlTime, "1e3", "net/ipv4/tcp_keepalive_probes", "100abc")}, ns: shop, cluster: current, policies: []Policy{nlb},
			want: Decision{Skip: SkipInvalidValue, Policy: &nlb, Warnings: []string{
				`keepalive.io: KeepalivePolicy/shop/behind-nlb not applied: the kernel refuses net.ipv4.tcp_keepalive_time="1e3", net/ipv4/tcp_keepalive_probes="100abc" (the pod cannot start as written); set a decimal integer`}},
		},
		"empty value under Audit: the values it would set": {
			pod: PodView{Sysctls: sysctls(SysctlTime, "")}, ns: shop, cluster: current, policies: []Policy{audit},
			want: Decision{Skip: SkipAudit, Policy: &audit, Warnings: []string{
				"keepalive.io: KeepalivePolicy/shop/trial (Audit) would set net.ipv4.tcp_keepalive_time=30, net.ipv4.tcp_keepalive_intvl=10, net.ipv4.tcp_keepalive_probes=9"}},
		},
		"a refused value wins over Audit": {
			pod: PodView{Sysctls: sysctls(SysctlProbes, "+5")}, ns: shop, cluster: current, policies: []Policy{audit},
			want: Decision{Skip: SkipInvalidValue, Policy: &audit, Warnings: []string{
				`keepalive.io: KeepalivePolicy/shop/trial not applied: the kernel refuses net.ipv4.tcp_keepalive_probes="+5" (the pod cannot start as written); set a decimal integer`}},
		},
		"slash form replaced in place, recorded under its own name": {
			pod: PodView{Sysctls: sysctls("net/ipv4/tcp_keepalive_time", "7200", SysctlInterval, "30", SysctlProbes, "9")},
			ns:  shop, cluster: current, policies: []Policy{nlb},
			want: Decision{
				Policy:  &nlb,
				Sysctls: sysctls("net/ipv4/tcp_keepalive_time", "175", SysctlInterval, "30", SysctlProbes, "9"),
				Annotations: []Annotation{
					{AnnotationPolicy, "KeepalivePolicy/shop/behind-nlb"},
					{AnnotationOriginalSysctls, `[{"name":"net/ipv4/tcp_keepalive_time","value":"7200"}]`},
				},
				Warnings: []string{"keepalive.io: KeepalivePolicy/shop/behind-nlb replaced net/ipv4/tcp_keepalive_time=7200 with net/ipv4/tcp_keepalive_time=175; the originals are in annotation keepalive.io/original-sysctls"},
			},
		},
		"both forms: the larger one replaced, no entry added": {
			pod: PodView{Sysctls: sysctls(SysctlTime, "100", "net/ipv4/tcp_keepalive_time", "7200", "net/ipv4/tcp_keepalive_intvl", "30", SysctlProbes, "9")},
			ns:  shop, cluster: current, policies: []Policy{nlb},
			want: Decision{
				Policy:  &nlb,
				Sysctls: sysctls(SysctlTime, "100", "net/ipv4/tcp_keepalive_time", "175", "net/ipv4/tcp_keepalive_intvl", "30", SysctlProbes, "9"),
				Annotations: []Annotation{
					{AnnotationPolicy, "KeepalivePolicy/shop/behind-nlb"},
					{AnnotationOriginalSysctls, `[{"name":"net/ipv4/tcp_keepalive_time","value":"7200"}]`},
				},
				Warnings: []string{"keepalive.io: KeepalivePolicy/shop/behind-nlb replaced net/ipv4/tcp_keepalive_time=7200 with net/ipv4/tcp_keepalive_time=175; the originals are in annotation keepalive.io/original-sysctls"},
			},
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			got := Decide(tc.pod, tc.ns, tc.cluster, tc.policies)
			if diff := cmp.Diff(tc.want, got, cmp.AllowUnexported(Policy{}), cmpopts.IgnoreFields(Policy{}, "podSelector", "namespaceSelector")); diff != "" {
				t.Errorf("decision (-want +got):\n%s", diff)
			}
			if got.Changed() != (tc.want.Sysctls != nil || len(tc.want.Annotations) > 0) {
				t.Errorf("Changed() = %v", got.Changed())
			}
		})
	}
}

func mustSelector(t *testing.T, s string) labels.Selector {
	t.Helper()
	sel, err := labels.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return sel
}

func TestDescribe(t *testing.T) {
	for _, tc := range []struct {
		sysctls []corev1.Sysctl
		want    string
	}{
		{nil, "none"},
		{[]corev1.Sysctl{{Name: SysctlTime, Value: "175"}, {Name: "net.ipv4.ip_local_port_range", Value: "1024 65535"}},
			"net.ipv4.tcp_keepalive_time=175, net.ipv4.ip_local_port_range=1024 65535"},
	} {
		if got := Describe(tc.sysctls); got != tc.want {
			t.Errorf("Describe(%v) = %q, want %q", tc.sysctls, got, tc.want)
		}
	}
}

func TestNamespaceMatters(t *testing.T) {
	web := mustClusterPolicy(t, testobj.Spec().Preset(v1alpha1.PresetAWSNLB).ClusterPolicy("web", map[string]string{"team": "web"}))
	everywhere := mustClusterPolicy(t, testobj.Spec().Preset(v1alpha1.PresetAzureLB).ClusterPolicy("all", nil))
	local := mustPolicy(t, testobj.Spec().Preset(v1alpha1.PresetAWSALB).Policy("shop", "alb"))
	c := Cluster{Minor: 36, NamespaceSelector: mustSelector(t, "tier notin (sandbox)")}
	ns := func(l map[string]string) Namespace { return Namespace{Name: "shop", Labels: l} }
	cases := map[string]struct {
		old, updated map[string]string
		want         bool
	}{
		"an unrelated label":                      {map[string]string{"a": "1"}, map[string]string{"a": "2"}, false},
		"into a policy's namespaceSelector":       {nil, map[string]string{"team": "web"}, true},
		"out of the operator's namespaceSelector": {nil, map[string]string{"tier": "sandbox"}, true},
		"opted out":                               {nil, map[string]string{LabelInject: InjectDisabled}, true},
		"Pod Security pinned to v1.28":            {map[string]string{labelPSAEnforce: "baseline"}, map[string]string{labelPSAEnforce: "baseline", labelPSAEnforceVersion: "v1.28"}, true},
		"Pod Security moved within safe versions": {map[string]string{labelPSAEnforce: "baseline", labelPSAEnforceVersion: "v1.30"}, map[string]string{labelPSAEnforce: "baseline", labelPSAEnforceVersion: "v1.31"}, false},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			if got := NamespaceMatters(ns(tc.old), ns(tc.updated), c, []Policy{web, everywhere, local}); got != tc.want {
				t.Errorf("NamespaceMatters = %v, want %v", got, tc.want)
			}
		})
	}
	if !local.SelectsNamespace("shop", nil) || local.SelectsNamespace("other", nil) {
		t.Error("a KeepalivePolicy selects its own namespace, and only it")
	}
	if !everywhere.SelectsNamespace("any", nil) || web.SelectsNamespace("any", nil) || !web.SelectsNamespace("any", map[string]string{"team": "web"}) {
		t.Error("a ClusterKeepalivePolicy selects by its namespaceSelector")
	}
}

func TestParseSelector(t *testing.T) {
	for _, blank := range []string{"", "  "} {
		if sel, err := ParseSelector(blank); sel != nil || err != nil {
			t.Errorf("ParseSelector(%q) = %v, %v; want no selector", blank, sel, err)
		}
	}
	sel, err := ParseSelector("tier!=batch,team in (web,shop)")
	if err != nil {
		t.Fatal(err)
	}
	if !sel.Matches(labels.Set{"tier": "web", "team": "shop"}) || sel.Matches(labels.Set{"tier": "batch", "team": "shop"}) {
		t.Errorf("%v does not select as kubectl does", sel)
	}
	if _, err := ParseSelector("tier in batch"); err == nil {
		t.Error("ParseSelector(\"tier in batch\") = nil error")
	}
}

func TestServerMinor(t *testing.T) {
	for _, tc := range []struct {
		major, minor string
		want         int
		ok           bool
	}{{"1", "36", 36, true}, {"1", "29+", 29, true}, {"2", "0", 0, false}, {"1", "", 0, false}} {
		got, err := ServerMinor(&version.Info{Major: tc.major, Minor: tc.minor, GitVersion: "v" + tc.major + "." + tc.minor})
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("major %q minor %q: %d, %v; want %d, ok %v", tc.major, tc.minor, got, err, tc.want, tc.ok)
		}
	}
}
