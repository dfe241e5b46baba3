package webhook

import (
	"slices"
	"testing"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/keepalive-operator/keepalive-operator/api/v1alpha1"
	"github.com/keepalive-operator/keepalive-operator/internal/keepalive"
)

func clusterPolicy(name string, matchLabels map[string]v1alpha1.LabelValue) *v1alpha1.ClusterKeepalivePolicy {
	p := &v1alpha1.ClusterKeepalivePolicy{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:       v1alpha1.ClusterKeepalivePolicySpec{KeepalivePolicySpec: v1alpha1.KeepalivePolicySpec{IdleTimeouts: []v1alpha1.Hop{{Preset: v1alpha1.PresetAWSNLB}}}},
	}
	if matchLabels != nil {
		p.Spec.NamespaceSelector = &v1alpha1.LabelSelector{MatchLabels: matchLabels}
	}
	return p
}

// TestStoreClusterPoliciesFollowChanges checks that the cluster policies a
// lookup returns for a namespace, which the store keeps between lookups,
// follow every change of the namespace's labels and of the cluster policies.
func TestStoreClusterPoliciesFollowChanges(t *testing.T) {
	s := NewStore(logr.Discard())
	names := func(ns string) (bool, []string) {
		t.Helper()
		_, known, _, cluster := s.Lookup(ns)
		var out []string
		for _, p := range cluster {
			out = append(out, p.Ref.Name)
		}
		slices.Sort(out)
		return known, out
	}
	check := func(step, ns string, wantKnown bool, want ...string) {
		t.Helper()
		known, got := names(ns)
		if known != wantKnown || !slices.Equal(got, want) {
			t.Errorf("%s: Lookup(%q) = known %v, cluster policies %v; want known %v, %v", step, ns, known, got, wantKnown, want)
		}
		// A second lookup answers from what the first kept.
		if known2, got2 := names(ns); known2 != known || !slices.Equal(got2, got) {
			t.Errorf("%s: second Lookup(%q) = %v %v, first %v %v", step, ns, known2, got2, known, got)
		}
	}

	s.SetNamespace("shop", map[string]string{"egress": "nlb"})
	s.apply(clusterPolicy("nlb", map[string]v1alpha1.LabelValue{"egress": "nlb"}), false)
	s.apply(clusterPolicy("team-x", map[string]v1alpha1.LabelValue{"team": "x"}), false)
	check("two policies, one selects", "shop", true, "nlb")
	s.SetNamespace("shop-2", map[string]string{"egress": "nlb"})
	check("same labels", "shop-2", true, "nlb")
	_, _, _, one := s.Lookup("shop")
	_, _, _, two := s.Lookup("shop-2")
	if len(one) != 1 || len(two) != 1 || &one[0] != &two[0] {
		t.Error("two namespaces selected by the same policies hold a copy each")
	}

	s.SetNamespace("shop", map[string]string{"team": "x"})
	check("namespace relabelled", "shop", true, "team-x")

	s.apply(clusterPolicy("everywhere", nil), false)
	check("policy without selector added", "shop", true, "everywhere", "team-x")

	s.apply(clusterPolicy("team-x", map[string]v1alpha1.LabelValue{"team": "y"}), false)
	check("policy's selector changed", "shop", true, "everywhere")

	s.apply(clusterPolicy("everywhere", nil), true)
	check("policy deleted", "shop", true)

	s.apply(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop"}}, true)
	check("namespace deleted: every cluster policy, the handler reads the namespace", "shop", false, "nlb", "team-x")

	// Namespaced policies are never among the cluster ones.
	s.SetNamespace("shop", nil)
	s.apply(&v1alpha1.KeepalivePolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "db", Namespace: "shop"},
		Spec:       v1alpha1.KeepalivePolicySpec{IdleTimeouts: []v1alpha1.Hop{{Preset: v1alpha1.PresetAWSNLB}}},
	}, false)
	check("namespace back without labels", "shop", true)
	if _, _, namespaced, _ := s.Lookup("shop"); len(namespaced) != 1 || namespaced[0].Ref.Kind != keepalive.KindKeepalivePolicy {
		t.Errorf("namespaced policies of shop = %v, want the one KeepalivePolicy", namespaced)
	}
}

// TestStoreIgnoresStatusUpdates checks that an update of a policy that
// changes neither its spec nor its deletion, such as each status write,
// leaves what the store worked out per namespace, and that a spec change
// is applied.
func TestStoreIgnoresStatusUpdates(t *testing.T) {
	s := NewStore(logr.Discard())
	events := s.events()
	s.SetNamespace("shop", nil)
	created := clusterPolicy("nlb", nil)
	created.Generation = 1
	events.OnAdd(created, false)
	timeOf := func(step string) int32 {
		t.Helper()
		_, _, _, cluster := s.Lookup("shop")
		if len(cluster) != 1 {
			t.Fatalf("%s: %d cluster policies for shop, want 1", step, len(cluster))
		}
		return cluster[0].Result.Values.TimeSeconds
	}
	if got := timeOf("created"); got != 175 {
		t.Errorf("created: time %d, want 175", got)
	}

	status := created.DeepCopy()
	status.Status.ObservedGeneration = 1
	events.OnUpdate(created, status)
	if _, kept := s.clusterFor["shop"]; !kept {
		t.Error("a status update dropped the cluster policies worked out for shop")
	}

	spec := status.DeepCopy()
	spec.Generation = 2
	spec.Spec.IdleTimeouts = []v1alpha1.Hop{{Seconds: ptr.To[int32](100)}}
	events.OnUpdate(status, spec)
	if got := timeOf("spec changed"); got != 50 {
		t.Errorf("spec changed: time %d, want 50", got)
	}

	deleting := spec.DeepCopy()
	deleting.DeletionTimestamp = ptr.To(metav1.Now())
	events.OnUpdate(spec, deleting)
	if _, _, _, cluster := s.Lookup("shop"); len(cluster) != 0 {
		t.Errorf("being deleted: %d cluster policies for shop, want none", len(cluster))
	}
}
