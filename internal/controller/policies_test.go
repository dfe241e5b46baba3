package controller

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	"github.com/keepalive-operator/keepalive-operator/api/v1alpha1"
	"github.com/keepalive-operator/keepalive-operator/internal/keepalive"
	"github.com/keepalive-operator/keepalive-operator/internal/testobj"
)

// TestPolicySetFromStores checks inScope on the cache's stores: what it
// remembers of each stored object follows the objects the cache replaces,
// a policy being deleted or whose spec does not compute is not in force,
// and the objects the stores dropped are forgotten.
func TestPolicySetFromStores(t *testing.T) {
	newStore := func() toolscache.Indexer {
		return toolscache.NewIndexer(toolscache.MetaNamespaceKeyFunc, toolscache.Indexers{toolscache.NamespaceIndex: toolscache.MetaNamespaceIndexFunc})
	}
	st := &policyStores{kaps: newStore(), ckaps: newStore()}
	s := newPolicySet(nil)
	s.stores = st

	ckap := func(name string, seconds int32, gen int64) *v1alpha1.ClusterKeepalivePolicy {
		return &v1alpha1.ClusterKeepalivePolicy{
			ObjectMeta: metav1.ObjectMeta{Name: name, UID: types.UID("uid-" + name), Generation: gen},
			Spec:       v1alpha1.ClusterKeepalivePolicySpec{KeepalivePolicySpec: v1alpha1.KeepalivePolicySpec{IdleTimeouts: []v1alpha1.Hop{{Seconds: ptr.To(seconds)}}}},
		}
	}
	kap := func(ns, name string) *v1alpha1.KeepalivePolicy {
		return &v1alpha1.KeepalivePolicy{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID("uid-" + ns + name), Generation: 1},
			Spec:       v1alpha1.KeepalivePolicySpec{IdleTimeouts: []v1alpha1.Hop{{Preset: v1alpha1.PresetAWSNLB}}},
		}
	}
	times := func(ns string) (namespaced []string, cluster []string) {
		t.Helper()
		nsd, cl, err := s.inScope(context.Background(), ns)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range nsd {
			namespaced = append(namespaced, p.Ref.Name)
		}
		for _, p := range cl {
			cluster = append(cluster, fmt.Sprintf("%s=%d", p.Ref.Name, p.Result.Values.TimeSeconds))
		}
		slices.Sort(cluster)
		return namespaced, cluster
	}

	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(st.ckaps.Add(ckap("a", 600, 1)))
	must(st.ckaps.Add(ckap("b", 350, 1)))
	must(st.kaps.Add(kap("shop", "db")))
	must(st.kaps.Add(kap("other", "db")))
	if nsd, cl := times("shop"); !slices.Equal(nsd, []string{"db"}) || !slices.Equal(cl, []string{"a=300", "b=175"}) {
		t.Errorf("first: namespaced %v, cluster %v", nsd, cl)
	}
	// The cache replaces an object on a change.
	must(st.ckaps.Update(ckap("a", 100, 2)))
	if _, cl := times("shop"); !slices.Equal(cl, []string{"a=50", "b=175"}) {
		t.Errorf("after a's change: cluster %v, want a=50 b=175", cl)
	}
	deleting := ckap("b", 350, 1)
	deleting.DeletionTimestamp = ptr.To(metav1.Now())
	must(st.ckaps.Update(deleting))
	if _, cl := times("shop"); !slices.Equal(cl, []string{"a=50"}) {
		t.Errorf("b being deleted: cluster %v, want a=50 alone", cl)
	}
	must(st.ckaps.Add(ckap("broken", 0, 1)))
	if _, cl := times("shop"); !slices.Equal(cl, []string{"a=50"}) {
		t.Errorf("with a policy that does not compute: cluster %v, want a=50 alone", cl)
	}

	// Enough changes to prune: only the stored objects stay remembered.
	for i := range 1100 {
		must(st.ckaps.Update(ckap("a", int32(100+i), int64(3+i))))
		times("shop")
	}
	if n := len(s.byObject); n > 1024+10 {
		t.Errorf("%d objects remembered after 1,100 changes of one policy, want pruned", n)
	}
	if _, cl := times("shop"); !slices.Equal(cl, []string{"a=599"}) {
		t.Errorf("after the changes: cluster %v, want a=599", cl)
	}
}

// TestPolicySetSelectionFollowsChanges checks that forNamespace, which keeps
// per namespace the ClusterKeepalivePolicies that select it, answers as the
// stores are now: after a relabelling, a selector change, a deletion and a
// namespace gone and back; and that it works the selection out once, not
// for every call.
func TestPolicySetSelectionFollowsChanges(t *testing.T) {
	newStore := func() toolscache.Indexer {
		return toolscache.NewIndexer(toolscache.MetaNamespaceKeyFunc, toolscache.Indexers{toolscache.NamespaceIndex: toolscache.MetaNamespaceIndexFunc})
	}
	st := &policyStores{kaps: newStore(), ckaps: newStore(), namespaces: newStore()}
	s := newPolicySet(nil)
	s.stores = st
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	namespace := func(name string, labels map[string]string) *corev1.Namespace {
		return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
	}
	ckap := func(name string, nsLabels map[string]string, gen int64) *v1alpha1.ClusterKeepalivePolicy {
		p := testobj.Spec().Preset(v1alpha1.PresetAWSNLB).ClusterPolicy(name, nsLabels)
		p.UID, p.Generation = types.UID("uid-"+name), gen
		return p
	}
	// The informer moves the version after each policy change; the test
	// moves it as the informer would.
	addPolicy := func(p *v1alpha1.ClusterKeepalivePolicy) { must(st.ckaps.Add(p)); s.clusterChanged() }
	updatePolicy := func(p *v1alpha1.ClusterKeepalivePolicy) { must(st.ckaps.Update(p)); s.clusterChanged() }
	selected := func(ns string) ([]string, bool) {
		t.Helper()
		got, _, cluster, ok, err := s.forNamespace(context.Background(), ns)
		must(err)
		if ok && got.Name != ns {
			t.Errorf("forNamespace(%s) returned namespace %q", ns, got.Name)
		}
		var names []string
		for _, p := range cluster {
			names = append(names, p.Ref.Name)
		}
		slices.Sort(names)
		return names, ok
	}
	want := func(step, ns string, names ...string) {
		t.Helper()
		got, ok := selected(ns)
		if !ok {
			t.Errorf("%s: namespace %s not found", step, ns)
		}
		if !slices.Equal(got, names) {
			t.Errorf("%s: %s selected by %v, want %v", step, ns, got, names)
		}
	}

	must(st.namespaces.Add(namespace("shop", map[string]string{"tier": "web"})))
	must(st.namespaces.Add(namespace("batch", map[string]string{"tier": "jobs"})))
	addPolicy(ckap("all", nil, 1))
	addPolicy(ckap("web", map[string]string{"tier": "web"}, 1))
	want("first", "shop", "all", "web")
	want("first", "batch", "all")

	must(st.namespaces.Add(namespace("shop-2", map[string]string{"tier": "web"})))
	_, _, one, _, err := s.forNamespace(context.Background(), "shop")
	must(err)
	_, _, two, _, err := s.forNamespace(context.Background(), "shop-2")
	must(err)
	if len(one) != 2 || len(two) != 2 || &one[0] != &two[0] {
		t.Error("two namespaces selected by the same policies hold a copy each")
	}

	misses := s.misses
	for range 100 {
		want("unchanged", "shop", "all", "web")
	}
	if s.misses != misses {
		t.Errorf("100 calls with nothing changed worked the selection out %d times, want 0", s.misses-misses)
	}

	// The cache replaces the namespace object on a relabelling.
	must(st.namespaces.Update(namespace("shop", map[string]string{"tier": "jobs"})))
	want("shop relabelled", "shop", "all")

	updatePolicy(ckap("web", map[string]string{"tier": "jobs"}, 2))
	want("web's selector changed", "shop", "all", "web")
	want("web's selector changed", "batch", "all", "web")

	deleting := ckap("all", nil, 1)
	deleting.DeletionTimestamp = ptr.To(metav1.Now())
	updatePolicy(deleting)
	want("all being deleted", "batch", "web")
	must(st.ckaps.Delete(deleting))
	s.clusterChanged()
	want("all deleted", "batch", "web")

	must(st.namespaces.Delete(namespace("batch", nil)))
	if _, ok := selected("batch"); ok {
		t.Error("batch deleted: still found")
	}
	must(st.namespaces.Add(namespace("batch", nil)))
	want("batch back without labels", "batch")
}

// TestTallyCountsAfterClusterPolicyRecount checks the order of two handlers
// of the ClusterKeepalivePolicy informer, which run in no set order: when
// the tally recounts a new policy before the policy set's own handler has
// run, a pod event counted next still finds the policy.
func TestTallyCountsAfterClusterPolicyRecount(t *testing.T) {
	ctx := context.Background()
	newStore := func() toolscache.Indexer {
		return toolscache.NewIndexer(toolscache.MetaNamespaceKeyFunc, toolscache.Indexers{toolscache.NamespaceIndex: toolscache.MetaNamespaceIndexFunc})
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop"}}
	policy := testobj.Spec().Preset(v1alpha1.PresetAWSNLB).ClusterPolicy("nlb", nil)
	policy.UID, policy.Generation = "uid-nlb", 1
	pod := testobj.MakePod("shop", "api-0").Labels(map[string]string{"app": "api"}).Obj()
	pod.Status.Phase = corev1.PodRunning
	cached, err := toCachedPod(pod)
	must(err)

	scheme := runtime.NewScheme()
	must(errors.Join(clientgoscheme.AddToScheme(scheme), v1alpha1.AddToScheme(scheme)))
	c := fake.NewClientBuilder().WithScheme(scheme).WithObjects(ns).Build()
	st := &policyStores{kaps: newStore(), ckaps: newStore(), namespaces: newStore()}
	s := newPolicySet(nil)
	s.stores = st
	must(st.namespaces.Add(ns))
	pods := newStore()
	must(pods.Add(cached))
	tl := newTally(c, &indexes{pods: podStore{indexer: pods}}, func() keepalive.Cluster { return keepalive.Cluster{} }, s, func(string) {})
	tl.synced = []func() bool{func() bool { return true }}

	tl.podChanged(ctx, cached) // no policy yet: the namespace's selection is empty
	// The policy arrives: the stores and the API have it, and the tally's
	// handler runs first.
	must(st.ckaps.Add(policy))
	must(c.Create(ctx, policy.DeepCopy()))
	tl.recountPolicy(ctx, policy)
	tl.podChanged(ctx, cached) // a status update of the pod, say
	ref := keepalive.Ref{Kind: keepalive.KindClusterKeepalivePolicy, Name: "nlb"}
	got, ok := tl.get(ref)
	if !ok || got.counts.Matched != 1 {
		t.Errorf("policy %s matches %d pods, want 1", ref, got.counts.Matched)
	}
}
