package controller

import (
	"context"
	"errors"
	"fmt"
	"sync"

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
// inScope runs for every pod event, so it reads the cache's own stores
// without copying the objects, and remembers what each stored object
// compiled to: with 500 ClusterKeepalivePolicies, listing them through the
// client and looking each up by name cost 0.5 ms of CPU per pod.
type policySet struct {
	cache cache.Cache

	storesMu sync.Mutex
	stores   *policyStores

	mu       sync.Mutex
	compiled map[keepalive.Ref]compiled
	// byObject is what each object of the stores compiled to, by pointer:
	// the cache replaces an object on every change, so an entry never
	// goes stale, only unused; misses counts the lookups since the last
	// pruning of those.
	byObject map[policyObject]compiled
	misses   int
}

// policyStores are the cache's stores of both policy kinds.
type policyStores struct{ kaps, ckaps toolscache.Indexer }

type compiled struct {
	uid        types.UID
	generation int64
	pol        keepalive.Policy
	err        error
}

func newPolicySet(c cache.Cache) *policySet {
	return &policySet{cache: c, compiled: map[keepalive.Ref]compiled{}, byObject: map[policyObject]compiled{}}
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
	}{{&v1alpha1.KeepalivePolicy{}, &st.kaps}, {&v1alpha1.ClusterKeepalivePolicy{}, &st.ckaps}} {
		inf, err := s.cache.GetInformer(ctx, k.obj)
		if err != nil {
			return nil, fmt.Errorf("get the informer of %T: %w", k.obj, err)
		}
		shared, ok := inf.(toolscache.SharedIndexInformer)
		if !ok {
			return nil, fmt.Errorf("the informer of %T is a %T, not a SharedIndexInformer", k.obj, inf)
		}
		*k.to = shared.GetIndexer()
	}
	s.stores = &st
	return s.stores, nil
}

// inScope returns the policies in force that may apply in a namespace: its
// KeepalivePolicies and every ClusterKeepalivePolicy.
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

// prune forgets the objects the stores no longer hold.
func (s *policySet) prune(st *policyStores) {
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
