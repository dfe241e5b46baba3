package keepalive

import (
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/keepalive-operator/keepalive-operator/api/v1alpha1"
	"github.com/keepalive-operator/keepalive-operator/internal/testobj"
)

func TestRefString(t *testing.T) {
	cases := map[string]struct {
		ref  Ref
		want string
	}{
		"namespaced": {Ref{KindKeepalivePolicy, "shop", "behind-nlb"}, "KeepalivePolicy/shop/behind-nlb"},
		"cluster":    {Ref{Kind: KindClusterKeepalivePolicy, Name: "all"}, "ClusterKeepalivePolicy/all"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			if got := tc.ref.String(); got != tc.want {
				t.Errorf("String() = %q, want %q", got, tc.want)
			}
			back, err := ParseRef(tc.want)
			if err != nil || back != tc.ref {
				t.Errorf("ParseRef(%q) = %v, %v; want %v", tc.want, back, err, tc.ref)
			}
		})
	}
	for _, bad := range []string{"", "KeepalivePolicy/x", "ClusterKeepalivePolicy/a/b", "Pod/shop/x", "KeepalivePolicy//x"} {
		if _, err := ParseRef(bad); err == nil {
			t.Errorf("ParseRef(%q) accepted a bad reference", bad)
		}
	}
}

func mustPolicy(t *testing.T, p *v1alpha1.KeepalivePolicy) Policy {
	t.Helper()
	pol, err := NewPolicy(p)
	if err != nil {
		t.Fatal(err)
	}
	return pol
}

func mustClusterPolicy(t *testing.T, p *v1alpha1.ClusterKeepalivePolicy) Policy {
	t.Helper()
	pol, err := NewClusterPolicy(p)
	if err != nil {
		t.Fatal(err)
	}
	return pol
}

func TestApplies(t *testing.T) {
	api := map[string]string{"app": "api"}
	shop := Target{Namespace: "shop", Labels: api, NamespaceLabels: map[string]string{"team": "shop"}}
	nlb := testobj.Spec().Preset(v1alpha1.PresetAWSNLB)
	cases := map[string]struct {
		policy Policy
		target Target
		want   bool
	}{
		"namespaced, no selector": {mustPolicy(t, nlb.Policy("shop", "p")), shop, true},
		"namespaced, other namespace": {
			mustPolicy(t, nlb.Policy("billing", "p")), shop, false,
		},
		"namespaced, pod selector matches": {
			mustPolicy(t, testobj.Spec().Preset(v1alpha1.PresetAWSNLB).PodLabels(api).Policy("shop", "p")), shop, true,
		},
		"namespaced, pod selector misses": {
			mustPolicy(t, testobj.Spec().Preset(v1alpha1.PresetAWSNLB).PodLabels(map[string]string{"app": "web"}).Policy("shop", "p")), shop, false,
		},
		"namespaced, empty pod selector selects all": {
			mustPolicy(t, func() *v1alpha1.KeepalivePolicy {
				p := nlb.Policy("shop", "p")
				p.Spec.PodSelector = &v1alpha1.LabelSelector{}
				return p
			}()), shop, true,
		},
		"cluster, no namespace selector": {mustClusterPolicy(t, nlb.ClusterPolicy("c", nil)), shop, true},
		"cluster, namespace selector matches": {
			mustClusterPolicy(t, nlb.ClusterPolicy("c", map[string]string{"team": "shop"})), shop, true,
		},
		"cluster, namespace selector misses": {
			mustClusterPolicy(t, nlb.ClusterPolicy("c", map[string]string{"team": "billing"})), shop, false,
		},
		"cluster, namespace matches, pod selector misses": {
			mustClusterPolicy(t, testobj.Spec().Preset(v1alpha1.PresetAWSNLB).PodLabels(map[string]string{"app": "web"}).ClusterPolicy("c", map[string]string{"team": "shop"})), shop, false,
		},
		"cluster, expression selector": {
			mustClusterPolicy(t, func() *v1alpha1.ClusterKeepalivePolicy {
				p := nlb.ClusterPolicy("c", nil)
				p.Spec.NamespaceSelector = &v1alpha1.LabelSelector{MatchExpressions: []v1alpha1.LabelSelectorRequirement{
					{Key: "team", Operator: v1alpha1.LabelSelectorOpNotIn, Values: []v1alpha1.LabelValue{"billing"}},
				}}
				return p
			}()), shop, true,
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			if got := tc.policy.Applies(tc.target); got != tc.want {
				t.Errorf("Applies() = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestSelect(t *testing.T) {
	shop := Target{Namespace: "shop", Labels: map[string]string{"app": "api"}}
	nlb := mustPolicy(t, testobj.Spec().Preset(v1alpha1.PresetAWSNLB).Policy("shop", "nlb"))                        // 175/30
	alb := mustPolicy(t, testobj.Spec().Preset(v1alpha1.PresetAWSALB).Policy("shop", "alb"))                        // 30/10
	albFast := mustPolicy(t, testobj.Spec().Preset(v1alpha1.PresetAWSALB).Interval(5).Policy("shop", "z-alb-fast")) // 30/5
	albTwin := mustPolicy(t, testobj.Spec().Preset(v1alpha1.PresetAWSALB).Policy("shop", "a-alb"))                  // 30/10
	clusterALB := mustClusterPolicy(t, testobj.Spec().Preset(v1alpha1.PresetAWSALB).ClusterPolicy("alb", nil))      // 30/10
	elsewhere := mustPolicy(t, testobj.Spec().Custom("", 2).Policy("billing", "fast"))                              // 1/1, other namespace
	auditFast := mustPolicy(t, testobj.Spec().Custom("", 2).Mode(v1alpha1.ModeAudit).Policy("shop", "audit-fast"))  // 1/1, Audit
	auditSlow := mustPolicy(t, testobj.Spec().Preset(v1alpha1.PresetAzureLB).Mode(v1alpha1.ModeAudit).Policy("shop", "audit-slow"))
	cases := map[string]struct {
		policies []Policy
		want     string // the winner's reference, "" for none
	}{
		"none":                                        {nil, ""},
		"only policies of other namespaces":           {[]Policy{elsewhere}, ""},
		"single":                                      {[]Policy{nlb}, "KeepalivePolicy/shop/nlb"},
		"smallest time wins":                          {[]Policy{nlb, alb}, "KeepalivePolicy/shop/alb"},
		"same time, smallest interval wins":           {[]Policy{alb, albFast}, "KeepalivePolicy/shop/z-alb-fast"},
		"same values, name decides":                   {[]Policy{alb, albTwin}, "KeepalivePolicy/shop/a-alb"},
		"same values and name, kind decides":          {[]Policy{alb, clusterALB}, "ClusterKeepalivePolicy/alb"},
		"a faster policy elsewhere does not count":    {[]Policy{nlb, elsewhere}, "KeepalivePolicy/shop/nlb"},
		"all together":                                {[]Policy{nlb, alb, albFast, albTwin, clusterALB, elsewhere}, "KeepalivePolicy/shop/z-alb-fast"},
		"an Enforce policy beats a faster Audit one":  {[]Policy{auditFast, nlb}, "KeepalivePolicy/shop/nlb"},
		"among Audit policies the smallest time wins": {[]Policy{auditSlow, auditFast}, "KeepalivePolicy/shop/audit-fast"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			// The winner must not depend on the order of the input, nor on
			// how it is split into lists.
			half := len(tc.policies) / 2
			for _, lists := range [][][]Policy{
				{tc.policies}, {reversed(tc.policies)}, {tc.policies[:half], tc.policies[half:]},
			} {
				got, ok := Select(shop, lists...)
				gotRef := ""
				if ok {
					gotRef = got.Ref.String()
				}
				if diff := cmp.Diff(tc.want, gotRef); diff != "" {
					t.Errorf("winner (-want +got):\n%s", diff)
				}
			}
		})
	}
}

func reversed(p []Policy) []Policy {
	r := slices.Clone(p)
	slices.Reverse(r)
	return r
}

func TestNewPolicyRejects(t *testing.T) {
	// A selector stored before the API server checked selectors.
	badSelector := &v1alpha1.LabelSelector{MatchExpressions: []v1alpha1.LabelSelectorRequirement{{Key: "a", Operator: "Near"}}}
	cases := map[string]struct {
		build func() (Policy, error)
		want  string
	}{
		"invalid spec": {func() (Policy, error) {
			return NewPolicy(testobj.Spec().Policy("shop", "p"))
		}, "idleTimeouts: must have 1 to 16 hops"},
		"invalid pod selector": {func() (Policy, error) {
			p := testobj.Spec().Preset(v1alpha1.PresetAWSNLB).Policy("shop", "p")
			p.Spec.PodSelector = badSelector
			return NewPolicy(p)
		}, "podSelector: "},
		"invalid namespace selector": {func() (Policy, error) {
			p := testobj.Spec().Preset(v1alpha1.PresetAWSNLB).ClusterPolicy("c", nil)
			p.Spec.NamespaceSelector = badSelector
			return NewClusterPolicy(p)
		}, "namespaceSelector: "},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := tc.build()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error = %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

func TestPolicyChanged(t *testing.T) {
	now := metav1.Now()
	base := metav1.ObjectMeta{Name: "nlb", Generation: 3, ResourceVersion: "10", Finalizers: []string{"keepalive.io/restore"}}
	tests := map[string]struct {
		after func(*metav1.ObjectMeta)
		want  bool
	}{
		"status write":      {after: func(m *metav1.ObjectMeta) { m.ResourceVersion = "11" }, want: false},
		"labels changed":    {after: func(m *metav1.ObjectMeta) { m.Labels = map[string]string{"team": "x"} }, want: false},
		"spec changed":      {after: func(m *metav1.ObjectMeta) { m.Generation = 4 }, want: true},
		"deletion started":  {after: func(m *metav1.ObjectMeta) { m.DeletionTimestamp = &now }, want: true},
		"finalizer removed": {after: func(m *metav1.ObjectMeta) { m.Finalizers = nil }, want: false},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			after := base.DeepCopy()
			tc.after(after)
			if got := PolicyChanged(&base, after); got != tc.want {
				t.Errorf("PolicyChanged = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestSharedLists(t *testing.T) {
	policy := func(name string) Policy {
		p, err := NewClusterPolicy(testobj.Spec().Preset(v1alpha1.PresetAWSNLB).ClusterPolicy(name, nil))
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	a, b := policy("a"), policy("b")
	var s SharedLists
	first := s.Share([]Policy{a, b})
	if got := s.Share([]Policy{a, b}); &got[0] != &first[0] {
		t.Error("an equal list was not shared")
	}
	if got := s.Share([]Policy{b, a}); &got[0] != &first[0] {
		t.Error("the same policies in another order were not shared")
	}
	if got := s.Share([]Policy{a}); len(got) != 1 || &got[0] == &first[0] {
		t.Errorf("a shorter list got %d policies, or the longer list's copy", len(got))
	}
	if got := s.Share(nil); got != nil {
		t.Errorf("an empty list became %v", got)
	}
	s.Reset()
	if got := s.Share([]Policy{a, b}); &got[0] == &first[0] {
		t.Error("a list kept before Reset was shared after it")
	}
}

func TestPrecedence(t *testing.T) {
	policy := func(name string, spec *testobj.SpecWrapper) Policy {
		p, err := NewClusterPolicy(spec.ClusterPolicy(name, nil))
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	nlb := policy("nlb", testobj.Spec().Preset(v1alpha1.PresetAWSNLB))                              // 175/30/9
	alb := policy("alb", testobj.Spec().Preset(v1alpha1.PresetAWSALB))                              // 30/10/9
	audit := policy("audit", testobj.Spec().Preset(v1alpha1.PresetAWSALB).Mode(v1alpha1.ModeAudit)) // 30/10/9
	slowProbe := policy("slow", testobj.Spec().Preset(v1alpha1.PresetAWSNLB).Interval(60))          // 175/60/9
	twin := policy("twin", testobj.Spec().Preset(v1alpha1.PresetAWSNLB))                            // 175/30/9
	tests := map[string]struct {
		a, b Policy
		want string
	}{
		"mode":     {a: nlb, b: audit, want: "Enforce comes before Audit"},
		"time":     {a: alb, b: nlb, want: "a shorter time (30 s against 175 s)"},
		"interval": {a: nlb, b: slowProbe, want: "a shorter interval (30 s against 60 s)"},
		"name":     {a: nlb, b: twin, want: "the same time and interval, and the name comes first"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got, ok := Select(Target{Namespace: "shop"}, []Policy{tc.b, tc.a}); !ok || got.Ref != tc.a.Ref {
				t.Fatalf("Select chose %v, the case expects %v", got.Ref, tc.a.Ref)
			}
			if got := Precedence(&tc.a, &tc.b); got != tc.want {
				t.Errorf("Precedence = %q, want %q", got, tc.want)
			}
		})
	}
}
