package controller

import (
	"context"
	"fmt"
	"slices"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"

	"github.com/keepalive-operator/keepalive-operator/api/v1alpha1"
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
