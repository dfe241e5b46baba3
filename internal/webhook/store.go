package webhook

import (
	"context"
	"fmt"
	"slices"
	"sync"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/keepalive-operator/keepalive-operator/api/v1alpha1"
	"github.com/keepalive-operator/keepalive-operator/internal/keepalive"
)

// Store holds what admission reads for every pod, kept current by informer
// events: the policies, parsed and computed once per change, indexed by
// namespace, and the labels of each namespace. A lookup costs in proportion
// to the policies of one namespace plus the cluster policies.
//
// Slices handed out are never changed afterwards: a change builds a new one.
type Store struct {
	log logr.Logger

	mu         sync.RWMutex
	namespaced map[string][]keepalive.Policy // by namespace
	cluster    []keepalive.Policy
	namespaces map[string]map[string]string // labels by name

	synced []func() bool
}

// NewStore returns an empty store.
func NewStore(log logr.Logger) *Store {
	return &Store{
		log:        log,
		namespaced: map[string][]keepalive.Policy{},
		namespaces: map[string]map[string]string{},
	}
}

// Lookup returns the labels of a namespace (known reports whether the store
// has seen it) and the policies that may apply to its pods.
func (s *Store) Lookup(namespace string) (labels map[string]string, known bool, namespaced, cluster []keepalive.Policy) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	labels, known = s.namespaces[namespace]
	return labels, known, s.namespaced[namespace], s.cluster
}

// HasSynced reports whether the store has seen every object that existed
// when it started watching.
func (s *Store) HasSynced() bool {
	for _, synced := range s.synced {
		if !synced() {
			return false
		}
	}
	return len(s.synced) > 0
}

// Watch feeds the store from the cache's informers. Call it before the cache
// starts or after; events arrive once it runs.
func (s *Store) Watch(ctx context.Context, c cache.Cache) error {
	handler := toolscache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { s.apply(obj, false) },
		UpdateFunc: func(_, obj any) { s.apply(obj, false) },
		DeleteFunc: func(obj any) {
			if tomb, ok := obj.(toolscache.DeletedFinalStateUnknown); ok {
				obj = tomb.Obj
			}
			s.apply(obj, true)
		},
	}
	for _, obj := range []client.Object{&v1alpha1.KeepalivePolicy{}, &v1alpha1.ClusterKeepalivePolicy{}, &corev1.Namespace{}} {
		inf, err := c.GetInformer(ctx, obj, cache.BlockUntilSynced(false))
		if err != nil {
			return fmt.Errorf("get informer for %T: %w", obj, err)
		}
		reg, err := inf.AddEventHandler(handler)
		if err != nil {
			return fmt.Errorf("watch %T: %w", obj, err)
		}
		s.synced = append(s.synced, reg.HasSynced)
	}
	return nil
}

// apply records an informer event.
func (s *Store) apply(obj any, deleted bool) {
	var (
		ref keepalive.Ref
		pol keepalive.Policy
		err error
	)
	// A policy being deleted applies to no new pod: its finalizer is
	// undoing what it changed.
	switch o := obj.(type) {
	case *v1alpha1.KeepalivePolicy:
		ref = keepalive.Ref{Kind: keepalive.KindKeepalivePolicy, Namespace: o.Namespace, Name: o.Name}
		deleted = deleted || o.DeletionTimestamp != nil
		if !deleted {
			pol, err = keepalive.NewPolicy(o)
		}
	case *v1alpha1.ClusterKeepalivePolicy:
		ref = keepalive.Ref{Kind: keepalive.KindClusterKeepalivePolicy, Name: o.Name}
		deleted = deleted || o.DeletionTimestamp != nil
		if !deleted {
			pol, err = keepalive.NewClusterPolicy(o)
		}
	case *corev1.Namespace:
		if deleted {
			s.mu.Lock()
			delete(s.namespaces, o.Name)
			s.mu.Unlock()
		} else {
			s.SetNamespace(o.Name, o.Labels)
		}
		return
	default:
		return
	}
	if err != nil {
		// The API server should have rejected the spec; the policy's status
		// says why. It applies to no pod meanwhile.
		s.log.Info("policy left out of admission", "policy", ref.String(), "reason", err.Error())
		deleted = true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	list := s.cluster
	if ref.Kind == keepalive.KindKeepalivePolicy {
		list = s.namespaced[ref.Namespace]
	}
	next := slices.DeleteFunc(slices.Clone(list), func(q keepalive.Policy) bool { return q.Ref == ref })
	if !deleted {
		next = append(next, pol)
	}
	switch {
	case ref.Kind != keepalive.KindKeepalivePolicy:
		s.cluster = next
	case len(next) == 0:
		delete(s.namespaced, ref.Namespace)
	default:
		s.namespaced[ref.Namespace] = next
	}
}

// SetNamespace records the labels of a namespace.
func (s *Store) SetNamespace(name string, labels map[string]string) {
	if labels == nil {
		labels = map[string]string{}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.namespaces[name] = labels
}
