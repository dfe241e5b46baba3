package controller

import (
	"context"
	"errors"
	"fmt"
	"sync"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/keepalive-operator/keepalive-operator/api/v1alpha1"
	"github.com/keepalive-operator/keepalive-operator/internal/keepalive"
)

// policySet reads the policies in force from the cache, each parsed and
// computed once per generation. A policy being deleted is in force no more:
// its finalizer waits for the templates to leave it.
//
// Pod events read it (forNamespace), so it reads the cache's own stores
// without copying the objects, remembers what each stored object compiled
// to, and remembers per namespace which ClusterKeepalivePolicies select it:
// with 500 of them, listing them through the client for every pod cost
// 0.5 ms of CPU, and matching every namespaceSelector 0.5 ms more.
type policySet struct {
	cache cache.Cache

	storesMu sync.Mutex
	stores   *policyStores

	mu       sync.Mutex
	compiled map[keepalive.Ref]compiled
	// byObject is what each object of the stores compiled to, by pointer:
	// the cache replaces an object on every change, so an entry never
	// goes stale, only unused; misses counts the lookups since the last
	// pruning of those and of selected.
	byObject map[policyObject]compiled
	misses   int
	// selected holds, by namespace, the ClusterKeepalivePolicies in force
	// that select it, valid while the cache holds the same namespace object
	// and clusterVersion has not moved: every change of a
	// ClusterKeepalivePolicy moves it.
	selected       map[string]selection
	clusterVersion uint64
	// shared keeps one copy of each selection made at clusterVersion.
	shared keepalive.SharedLists
}

// policyStores are the cache's stores of both policy kinds and of the
// namespaces.
type policyStores struct{ kaps, ckaps, namespaces toolscache.Indexer }

// selection is what forNamespace worked out for a namespace.
type selection struct {
	namespace *corev1.Namespace
	version   uint64
	cluster   []keepalive.Policy
}

type compiled struct {
	uid        types.UID
	generation int64
	pol        keepalive.Policy
	err        error
}

func newPolicySet(c cache.Cache) *policySet {
	return &policySet{cache: c, compiled: map[keepalive.Ref]compiled{},
		byObject: map[policyObject]compiled{}, selected: map[string]selection{}}
}

// cacheStores returns the cache's stores of the policies.
func (s *policySet) cacheStores(ctx context.Context) (*policyStores, error) {
	s.storesMu.Lock()
	defer s.storesMu.Unlock()
	if s.stores != nil {
		return s.stores, nil
	}
	var st policyStores
	for _, k := range []struct {
		obj client.Object
		to  *toolscache.Indexer
	}{{&v1alpha1.KeepalivePolicy{}, &st.kaps}, {&v1alpha1.ClusterKeepalivePolicy{}, &st.ckaps}, {&corev1.Namespace{}, &st.namespaces}} {
		inf, err := s.cache.GetInformer(ctx, k.obj)
		if err != nil {
			return nil, fmt.Errorf("get the informer of %T: %w", k.obj, err)
		}
		shared, ok := inf.(toolscache.SharedIndexInformer)
		if !ok {
			return nil, fmt.Errorf("the informer of %T is a %T, not a SharedIndexInformer", k.obj, inf)
		}
		*k.to = shared.GetIndexer()
		if _, cluster := k.obj.(*v1alpha1.ClusterKeepalivePolicy); cluster {
			// The tally moves the version too, under its own lock, before it
			// recounts: handlers of one informer run in no set order.
			if _, err := inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
				AddFunc: func(any) { s.clusterChanged() },
				UpdateFunc: func(old, o any) {
					before, ok1 := old.(metav1.Object)
					after, ok2 := o.(metav1.Object)
					if !ok1 || !ok2 || keepalive.PolicyChanged(before, after) {
						s.clusterChanged()
					}
				},
				DeleteFunc: func(any) { s.clusterChanged() },
			}); err != nil {
				return nil, fmt.Errorf("watch ClusterKeepalivePolicies: %w", err)
			}
		}
	}
	s.stores = &st
	return s.stores, nil
}

// clusterChanged marks every namespace's selection out of date.
func (s *policySet) clusterChanged() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.clusterVersion++
	s.shared.Reset()
}

// forNamespace returns a namespace as the decisions read it, false while
// the cache does not hold it, and the policies in force that may apply to
// its pods: its KeepalivePolicies and the ClusterKeepalivePolicies that
// select it. It runs for every pod event.
func (s *policySet) forNamespace(ctx context.Context, name string) (ns keepalive.Namespace, namespaced, cluster []keepalive.Policy, ok bool, err error) {
	st, err := s.cacheStores(ctx)
	if err != nil {
		return ns, nil, nil, false, err
	}
	// The version before the stores: a selection made from stores older
	// than a change never carries the version after it.
	s.mu.Lock()
	version := s.clusterVersion
	s.mu.Unlock()
	obj, exists, err := st.namespaces.GetByKey(name)
	if err != nil {
		return ns, nil, nil, false, fmt.Errorf("get namespace %s: %w", name, err)
	}
	nsObj, isNamespace := obj.(*corev1.Namespace)
	if !exists || !isNamespace {
		return ns, nil, nil, false, nil
	}
	kaps, err := st.kaps.ByIndex(toolscache.NamespaceIndex, name)
	if err != nil {
		return ns, nil, nil, false, fmt.Errorf("list KeepalivePolicies: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	namespaced = s.storedInForce(kaps)
	sel, hit := s.selected[name]
	if !hit || sel.namespace != nsObj || sel.version != version {
		s.misses++
		sel = selection{namespace: nsObj, version: version}
		all := s.storedInForce(st.ckaps.List())
		for i := range all {
			if all[i].SelectsNamespace(name, nsObj.Labels) {
				sel.cluster = append(sel.cluster, all[i])
			}
		}
		if version == s.clusterVersion {
			sel.cluster = s.shared.Share(sel.cluster)
		}
		s.selected[name] = sel
	}
	if s.misses > 1024 {
		s.prune(st)
	}
	return keepalive.Namespace{Name: nsObj.Name, Labels: nsObj.Labels}, namespaced, sel.cluster, true, nil
}

// inScope returns the policies in force that may apply in a namespace: its
// KeepalivePolicies and every ClusterKeepalivePolicy, for the events that
// need the policies of a namespace before and after its change.
func (s *policySet) inScope(ctx context.Context, namespace string) (namespaced, cluster []keepalive.Policy, err error) {
	st, err := s.cacheStores(ctx)
	if err != nil {
		return nil, nil, err
	}
	kaps, err := st.kaps.ByIndex(toolscache.NamespaceIndex, namespace)
	if err != nil {
		return nil, nil, fmt.Errorf("list KeepalivePolicies: %w", err)
	}
	ckaps := st.ckaps.List()
	s.mu.Lock()
	defer s.mu.Unlock()
	namespaced, cluster = s.storedInForce(kaps), s.storedInForce(ckaps)
	if s.misses > 1024 {
		s.prune(st)
	}
	return namespaced, cluster, nil
}

// storedInForce compiles the objects of a store that are in force.
func (s *policySet) storedInForce(objs []any) []keepalive.Policy {
	var out []keepalive.Policy
	for _, o := range objs {
		obj, ok := o.(policyObject)
		if !ok {
			continue
		}
		c, ok := s.byObject[obj]
		if !ok {
			s.misses++
			c.err = errBeingDeleted
			if obj.GetDeletionTimestamp() == nil {
				c.pol, c.err = s.compileLocked(obj)
			}
			s.byObject[obj] = c
		}
		if c.err == nil {
			out = append(out, c.pol)
		}
	}
	return out
}

// errBeingDeleted marks a policy that is in force no more.
var errBeingDeleted = errors.New("being deleted")

// prune forgets the objects the stores no longer hold, and the selections
// of namespaces they no longer hold as they were.
func (s *policySet) prune(st *policyStores) {
	for name, sel := range s.selected {
		if cur, ok, err := st.namespaces.GetByKey(name); err != nil || !ok || cur != any(sel.namespace) {
			delete(s.selected, name)
		}
	}
	for obj := range s.byObject {
		store := st.kaps
		if _, ok := obj.(*v1alpha1.ClusterKeepalivePolicy); ok {
			store = st.ckaps
		}
		key, err := toolscache.MetaNamespaceKeyFunc(obj)
		if err != nil {
			delete(s.byObject, obj)
			continue
		}
		if cur, ok, err := store.GetByKey(key); err != nil || !ok || cur != any(obj) {
			delete(s.byObject, obj)
		}
	}
	s.misses = 0
}

// inForce compiles a policy that is not being deleted and whose spec
// computes.
func (s *policySet) inForce(obj policyObject) (keepalive.Policy, bool) {
	if obj.GetDeletionTimestamp() != nil {
		return keepalive.Policy{}, false
	}
	pol, err := s.compile(obj)
	return pol, err == nil
}

// compile parses and computes a policy, once per generation.
func (s *policySet) compile(obj policyObject) (keepalive.Policy, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.compileLocked(obj)
}

func (s *policySet) compileLocked(obj policyObject) (keepalive.Policy, error) {
	ref := refOf(obj)
	if c, ok := s.compiled[ref]; ok && c.uid == obj.GetUID() && c.generation == obj.GetGeneration() {
		return c.pol, c.err
	}
	pol, err := compile(obj)
	s.compiled[ref] = compiled{uid: obj.GetUID(), generation: obj.GetGeneration(), pol: pol, err: err}
	return pol, err
}

// compile parses and computes a policy object as it is; the mappers call
// it without the memo, for an older generation.
func compile(obj policyObject) (keepalive.Policy, error) {
	switch o := obj.(type) {
	case *v1alpha1.KeepalivePolicy:
		return keepalive.NewPolicy(o)
	case *v1alpha1.ClusterKeepalivePolicy:
		return keepalive.NewClusterPolicy(o)
	}
	return keepalive.Policy{}, fmt.Errorf("not a policy: %T", obj)
}

func (s *policySet) forget(ref keepalive.Ref) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.compiled, ref)
}

// refOf names a policy object.
func refOf(obj policyObject) keepalive.Ref {
	if _, ok := obj.(*v1alpha1.ClusterKeepalivePolicy); ok {
		return keepalive.Ref{Kind: keepalive.KindClusterKeepalivePolicy, Name: obj.GetName()}
	}
	return keepalive.Ref{Kind: keepalive.KindKeepalivePolicy, Namespace: obj.GetNamespace(), Name: obj.GetName()}
}
