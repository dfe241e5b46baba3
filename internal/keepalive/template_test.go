package keepalive

import (
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/keepalive-operator/keepalive-operator/api/v1alpha1"
	"github.com/keepalive-operator/keepalive-operator/internal/testobj"
)

// templatePolicies are the policies the template tests combine: two in the
// namespace, one cluster-wide, and one that leaves templates alone.
func templatePolicies(t *testing.T) (nlb, alb, azure, noRollout Policy) {
	nlb = mustPolicy(t, testobj.Spec().Preset(v1alpha1.PresetAWSNLB).Policy("shop", "nlb"))                           // 175/30/9
	alb = mustPolicy(t, testobj.Spec().Preset(v1alpha1.PresetAWSALB).Policy("shop", "alb"))                           // 30/10/9
	azure = mustClusterPolicy(t, testobj.Spec().Preset(v1alpha1.PresetAzureLB).Probes(5).ClusterPolicy("azure", nil)) // 120/30/5
	noRollout = mustPolicy(t, testobj.Spec().Custom("", 10).Rollout(v1alpha1.RolloutNone).Policy("shop", "fast"))     // 5/1/9
	return
}

func TestDesiredTemplate(t *testing.T) {
	nlb, alb, azure, noRollout := templatePolicies(t)
	audit := mustPolicy(t, testobj.Spec().Preset(v1alpha1.PresetAWSALB).Mode(v1alpha1.ModeAudit).Policy("shop", "trial"))
	cluster := Cluster{Minor: 36, OperatorNamespace: "keepalive-system"}
	shop := Namespace{Name: "shop"}
	nlbSet := sysctls(SysctlTime, "175", SysctlInterval, "30", SysctlProbes, "9")
	albSet := sysctls(SysctlTime, "30", SysctlInterval, "10", SysctlProbes, "9")
	nlbRecord := &Managed{Policy: "KeepalivePolicy/shop/nlb", Set: nlbSet}

	cases := map[string]struct {
		sysctls  []corev1.Sysctl
		rec      *Managed
		ns       Namespace
		cluster  Cluster
		policies []Policy
		want     []corev1.Sysctl
		wantRec  *Managed
	}{
		"empty template": {
			policies: []Policy{nlb},
			want:     nlbSet,
			wantRec:  nlbRecord,
		},
		"user's other sysctls and values kept in place": {
			sysctls:  sysctls("kernel.shm_rmid_forced", "1", SysctlTime, "7200", SysctlProbes, "3", "net.ipv4.ip_local_port_range", "1024 65535"),
			policies: []Policy{nlb},
			want:     sysctls("kernel.shm_rmid_forced", "1", SysctlTime, "175", SysctlProbes, "3", "net.ipv4.ip_local_port_range", "1024 65535", SysctlInterval, "30"),
			wantRec: &Managed{Policy: "KeepalivePolicy/shop/nlb", Set: sysctls(SysctlTime, "175", SysctlInterval, "30"),
				Original: sysctls(SysctlTime, "7200")},
		},
		"compliant by the user's own values: nothing to record": {
			sysctls:  sysctls(SysctlTime, "60", SysctlInterval, "10", SysctlProbes, "3"),
			policies: []Policy{nlb},
			want:     sysctls(SysctlTime, "60", SysctlInterval, "10", SysctlProbes, "3"),
		},
		"two policies: the smaller values, whatever the order": {
			policies: []Policy{nlb, alb},
			want:     albSet,
			wantRec:  &Managed{Policy: "KeepalivePolicy/shop/alb", Set: albSet},
		},
		"a smaller policy takes over a patched template and keeps the user's original": {
			sysctls:  sysctls(SysctlTime, "175", SysctlInterval, "30", SysctlProbes, "9"),
			rec:      &Managed{Policy: "KeepalivePolicy/shop/nlb", Set: sysctls(SysctlTime, "175", SysctlInterval, "30"), Original: sysctls(SysctlTime, "7200")},
			policies: []Policy{alb, nlb},
			want:     sysctls(SysctlTime, "30", SysctlInterval, "10", SysctlProbes, "9"),
			wantRec: &Managed{Policy: "KeepalivePolicy/shop/alb", Set: sysctls(SysctlTime, "30", SysctlInterval, "10"),
				Original: sysctls(SysctlTime, "7200")},
		},
		"the smaller policy deleted: back to the other's values": {
			sysctls:  albSet,
			rec:      &Managed{Policy: "KeepalivePolicy/shop/alb", Set: albSet},
			policies: []Policy{nlb},
			want:     nlbSet,
			wantRec:  nlbRecord,
		},
		"cluster and namespaced policy: the smaller time governs": {
			policies: []Policy{nlb, azure},
			want:     sysctls(SysctlTime, "120", SysctlInterval, "30", SysctlProbes, "5"),
			wantRec:  &Managed{Policy: "ClusterKeepalivePolicy/azure", Set: sysctls(SysctlTime, "120", SysctlInterval, "30", SysctlProbes, "5")},
		},
		"the last policy gone: the user's list exactly": {
			sysctls: sysctls("a", "1", SysctlTime, "175", "b", "2", SysctlInterval, "30", SysctlProbes, "9"),
			rec:     &Managed{Policy: "KeepalivePolicy/shop/nlb", Set: nlbSet, Original: sysctls(SysctlTime, "7200")},
			want:    sysctls("a", "1", SysctlTime, "7200", "b", "2"),
		},
		"an entry the user appended after the patch stays where it is": {
			sysctls:  sysctls(SysctlTime, "175", SysctlInterval, "30", SysctlProbes, "9", "kernel.shm_rmid_forced", "1"),
			rec:      nlbRecord,
			policies: []Policy{nlb},
			want:     sysctls(SysctlTime, "175", SysctlInterval, "30", SysctlProbes, "9", "kernel.shm_rmid_forced", "1"),
			wantRec:  nlbRecord,
		},
		"a list the user reordered stays in their order": {
			sysctls:  sysctls(SysctlProbes, "9", "kernel.shm_rmid_forced", "1", SysctlInterval, "30", SysctlTime, "175"),
			rec:      nlbRecord,
			policies: []Policy{nlb},
			want:     sysctls(SysctlProbes, "9", "kernel.shm_rmid_forced", "1", SysctlInterval, "30", SysctlTime, "175"),
			wantRec:  nlbRecord,
		},
		"a value the user changed after the patch is the user's": {
			sysctls:  sysctls(SysctlTime, "100", SysctlInterval, "30", SysctlProbes, "9"),
			rec:      &Managed{Policy: "KeepalivePolicy/shop/nlb", Set: nlbSet, Original: sysctls(SysctlTime, "7200")},
			policies: []Policy{nlb},
			want:     sysctls(SysctlTime, "100", SysctlInterval, "30", SysctlProbes, "9"),
			wantRec:  &Managed{Policy: "KeepalivePolicy/shop/nlb", Set: sysctls(SysctlInterval, "30", SysctlProbes, "9")},
		},
		"an entry the user removed after the patch is added again, with no original": {
			sysctls:  sysctls(SysctlInterval, "30", SysctlProbes, "9"),
			rec:      &Managed{Policy: "KeepalivePolicy/shop/nlb", Set: nlbSet, Original: sysctls(SysctlTime, "7200")},
			policies: []Policy{nlb},
			want:     sysctls(SysctlInterval, "30", SysctlProbes, "9", SysctlTime, "175"),
			wantRec:  nlbRecord,
		},
		"rollout: None leaves templates to the other policies": {
			policies: []Policy{noRollout, nlb},
			want:     nlbSet,
			wantRec:  nlbRecord,
		},
		"only rollout: None: nothing": {
			policies: []Policy{noRollout},
		},
		"Audit restores": {
			sysctls:  nlbSet,
			rec:      nlbRecord,
			policies: []Policy{audit},
		},
		"opted out: restored": {
			sysctls:  nlbSet,
			rec:      nlbRecord,
			ns:       Namespace{Name: "shop", Labels: map[string]string{LabelInject: InjectDisabled}},
			policies: []Policy{nlb},
		},
		"excluded by flag: nothing": {
			cluster:  Cluster{Minor: 36, ExcludedNamespaces: []string{"shop"}},
			policies: []Policy{nlb},
		},
		"outside the namespace selector: nothing": {
			cluster:  Cluster{Minor: 36, NamespaceSelector: labels.SelectorFromSet(labels.Set{"team": "web"})},
			policies: []Policy{nlb},
		},
		"values kept as the kernel reads them: nothing to record": {
			sysctls:  sysctls(SysctlTime, " 100 ", SysctlInterval, "0x10", SysctlProbes, "010"),
			policies: []Policy{nlb},
			want:     sysctls(SysctlTime, " 100 ", SysctlInterval, "0x10", SysctlProbes, "010"),
		},
		"slash form replaced in place, no entry added": {
			sysctls:  sysctls("net/ipv4/tcp_keepalive_time", "7200", "net/ipv4/tcp_keepalive_probes", "3"),
			policies: []Policy{nlb},
			want:     sysctls("net/ipv4/tcp_keepalive_time", "175", "net/ipv4/tcp_keepalive_probes", "3", SysctlInterval, "30"),
			wantRec: &Managed{Policy: "KeepalivePolicy/shop/nlb", Set: sysctls(SysctlTime, "175", SysctlInterval, "30"),
				Original: sysctls(SysctlTime, "7200")},
		},
		"slash form: the last policy gone, the user's list exactly": {
			sysctls: sysctls("net/ipv4/tcp_keepalive_time", "175", "net/ipv4/tcp_keepalive_probes", "3", SysctlInterval, "30"),
			rec: &Managed{Policy: "KeepalivePolicy/shop/nlb", Set: sysctls(SysctlTime, "175", SysctlInterval, "30"),
				Original: sysctls(SysctlTime, "7200")},
			want: sysctls("net/ipv4/tcp_keepalive_time", "7200", "net/ipv4/tcp_keepalive_probes", "3"),
		},
		"a value the kernel refuses: left unpatched": {
			sysctls:  sysctls(SysctlTime, "+100"),
			policies: []Policy{nlb},
			want:     sysctls(SysctlTime, "+100"),
		},
		"a refused value set after the patch: the user's list restored": {
			sysctls:  sysctls(SysctlTime, "175", SysctlInterval, "1e3", SysctlProbes, "9"),
			rec:      &Managed{Policy: "KeepalivePolicy/shop/nlb", Set: nlbSet, Original: sysctls(SysctlTime, "7200")},
			policies: []Policy{nlb},
			want:     sysctls(SysctlTime, "7200", SysctlInterval, "1e3"),
		},
		"Pod Security v1.28: restored": {
			sysctls:  nlbSet,
			rec:      nlbRecord,
			ns:       Namespace{Name: "shop", Labels: map[string]string{labelPSAEnforce: "baseline", labelPSAEnforceVersion: "v1.28"}},
			policies: []Policy{nlb},
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			if tc.ns.Name == "" {
				tc.ns = shop
			}
			if tc.cluster.Minor == 0 {
				tc.cluster = cluster
			}
			view := PodView{Sysctls: tc.sysctls}
			got := DesiredTemplate(view, tc.rec, tc.ns, tc.cluster, tc.policies)
			if diff := cmp.Diff(tc.want, got.Sysctls); diff != "" {
				t.Errorf("sysctls (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.wantRec, got.Record); diff != "" {
				t.Errorf("record (-want +got):\n%s", diff)
			}
			if got.SysctlsChanged != !cmp.Equal(tc.sysctls, tc.want, cmpNilEmpty) {
				t.Errorf("SysctlsChanged = %v", got.SysctlsChanged)
			}
			if got.RecordChanged != !cmp.Equal(tc.rec, tc.wantRec) {
				t.Errorf("RecordChanged = %v", got.RecordChanged)
			}
			// Deciding again on the result changes nothing.
			again := DesiredTemplate(PodView{Sysctls: got.Sysctls}, got.Record, tc.ns, tc.cluster, slicesReversed(tc.policies))
			if again.Changed() {
				t.Errorf("a second decision changed the template: %v %v", again.Sysctls, again.Record)
			}
		})
	}
}

func TestDesiredTemplateRefusedValue(t *testing.T) {
	nlb, _, _, _ := templatePolicies(t)
	cluster := Cluster{Minor: 36, OperatorNamespace: "keepalive-system"}
	for name, list := range map[string][]corev1.Sysctl{
		"plus sign":            sysctls(SysctlTime, "+100", SysctlInterval, "30"),
		"slash form word":      sysctls("net/ipv4/tcp_keepalive_probes", "nine"),
		"probes below INT_MIN": sysctls(SysctlProbes, "-2147483649"),
	} {
		t.Run(name, func(t *testing.T) {
			got := DesiredTemplate(PodView{Sysctls: list}, nil, Namespace{Name: "shop"}, cluster, []Policy{nlb})
			if got.Skip != SkipInvalidValue || got.Changed() || got.Record != nil {
				t.Errorf("DesiredTemplate() = skip %q, changed %v, record %v; want skip %q and the template left alone",
					got.Skip, got.Changed(), got.Record, SkipInvalidValue)
			}
		})
	}
}

var cmpNilEmpty = cmp.Comparer(func(a, b []corev1.Sysctl) bool {
	return len(a) == 0 && len(b) == 0 || cmp.Equal(a, b)
})

func slicesReversed(p []Policy) []Policy {
	out := make([]Policy, len(p))
	for i := range p {
		out[len(p)-1-i] = p[i]
	}
	return out
}

// TestDesiredTemplateOrderIndependent applies random sequences of policy
// sets, each decision feeding the next as the reconciler would, and checks
// that the template always equals a decision from the user's own list with
// the last set, and that the empty set gives back the user's list exactly.
func TestDesiredTemplateOrderIndependent(t *testing.T) {
	nlb, alb, azure, noRollout := templatePolicies(t)
	all := []Policy{nlb, alb, azure, noRollout}
	c := Cluster{Minor: 36}
	ns := Namespace{Name: "shop"}
	users := [][]corev1.Sysctl{
		nil,
		sysctls("kernel.shm_rmid_forced", "1"),
		sysctls(SysctlTime, "7200", "a", "1", SysctlProbes, "3"),
		sysctls(SysctlProbes, "20", SysctlInterval, "5", SysctlTime, "90"),
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for _, user := range users {
		cur, rec := user, (*Managed)(nil)
		for step := 0; step < 200; step++ {
			var set []Policy
			for _, p := range all {
				if rng.IntN(2) == 0 {
					set = append(set, p)
				}
			}
			rng.Shuffle(len(set), func(i, j int) { set[i], set[j] = set[j], set[i] })
			got := DesiredTemplate(PodView{Sysctls: cur}, rec, ns, c, set)
			direct := DesiredTemplate(PodView{Sysctls: user}, nil, ns, c, slicesReversed(set))
			if !cmp.Equal(got.Sysctls, direct.Sysctls, cmpNilEmpty) || !cmp.Equal(got.Record, direct.Record) {
				t.Fatalf("user %v, step %d, policies %v: got %v %v, from scratch %v %v",
					user, step, refs(set), got.Sysctls, got.Record, direct.Sysctls, direct.Record)
			}
			cur, rec = got.Sysctls, got.Record
		}
		back := DesiredTemplate(PodView{Sysctls: cur}, rec, ns, c)
		if !cmp.Equal(back.Sysctls, user, cmpNilEmpty) || back.Record != nil {
			t.Errorf("restore of %v gave %v with record %v", user, back.Sysctls, back.Record)
		}
	}
}

func refs(ps []Policy) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.Ref.String()
	}
	return out
}

func TestManagedAnnotation(t *testing.T) {
	m := Managed{Policy: "ClusterKeepalivePolicy/all", Set: sysctls(SysctlTime, "175"), Original: sysctls(SysctlTime, "7200")}
	got, ok, err := ParseManaged(map[string]string{AnnotationManagedSysctls: m.String()})
	if err != nil || !ok {
		t.Fatalf("ParseManaged: ok=%v err=%v", ok, err)
	}
	if diff := cmp.Diff(m, got); diff != "" {
		t.Errorf("round trip (-want +got):\n%s", diff)
	}
	if _, ok, _ := ParseManaged(nil); ok {
		t.Error("absent annotation parsed as present")
	}
	for _, bad := range []string{"{", `{"policy":"x","set":[{"name":"a","value":"1"}]}`, `{"policy":"ClusterKeepalivePolicy/all","set":[]}`} {
		if _, ok, err := ParseManaged(map[string]string{AnnotationManagedSysctls: bad}); err == nil || !ok {
			t.Errorf("ParseManaged(%s): ok=%v err=%v, want an error", bad, ok, err)
		}
	}
}

func TestTemplateView(t *testing.T) {
	spec := corev1.PodSpec{
		HostNetwork:     true,
		OS:              &corev1.PodOS{Name: corev1.Linux},
		NodeSelector:    map[string]string{"pool": "a"},
		Tolerations:     []corev1.Toleration{{Key: "gpu", Operator: corev1.TolerationOpExists}},
		Affinity:        &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{}},
		SecurityContext: &corev1.PodSecurityContext{Sysctls: []corev1.Sysctl{{Name: SysctlTime, Value: "60"}}},
	}
	template := corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "api"}, Annotations: map[string]string{"a": "b"}},
		Spec:       spec,
	}
	want := PodView{
		Labels: map[string]string{"app": "api"}, Annotations: map[string]string{"a": "b"}, HostNetwork: true, OS: "linux",
		Sysctls:   spec.SecurityContext.Sysctls,
		Placement: Placement{NodeSelector: spec.NodeSelector, NodeAffinity: spec.Affinity.NodeAffinity, Tolerations: spec.Tolerations},
	}
	tests := map[string]struct {
		obj  any
		want PodView
	}{
		"Deployment": {obj: &appsv1.Deployment{Spec: appsv1.DeploymentSpec{Template: template}}, want: want},
		"CronJob": {obj: &batchv1.CronJob{Spec: batchv1.CronJobSpec{JobTemplate: batchv1.JobTemplateSpec{
			Spec: batchv1.JobSpec{Template: template}}}}, want: want},
		"DaemonSet, with the tolerations its controller adds": {obj: &appsv1.DaemonSet{Spec: appsv1.DaemonSetSpec{Template: template}},
			want: func() PodView {
				v := want
				v.Placement.Tolerations = append(slices.Clone(spec.Tolerations), DaemonSetTolerations...)
				return v
			}()},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, TemplateView(tc.obj)); diff != "" {
				t.Errorf("TemplateView (-want +got):\n%s", diff)
			}
		})
	}
	if got := SpecView(nil, nil, &corev1.PodSpec{}); !cmp.Equal(got, PodView{}) {
		t.Errorf("SpecView of an empty spec = %+v, want the zero view", got)
	}
	if PodTemplate(&corev1.Pod{}) != nil || PodTemplate(&batchv1.Job{}) != nil {
		t.Error("PodTemplate returned a template for a Pod or a Job, whose templates the operator does not patch")
	}
}
