package webhook

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/keepalive-operator/keepalive-operator/api/v1alpha1"
	"github.com/keepalive-operator/keepalive-operator/internal/keepalive"
)

// Store holds what admission reads for every pod, kept current by informer
// events: the policies, parsed and computed once per change, indexed by
// namespace, and the labels of each namespace. A lookup costs in proportion
// to the policies of one namespace plus the cluster policies that select it:
// which ones do is worked out once per namespace after it or a cluster policy
// changes, not for every pod.
//
// Slices handed out are never changed afterwards: a change builds a new one.
type Store struct {
	log logr.Logger

	mu         sync.RWMutex
	namespaced map[string][]keepalive.Policy // by namespace
	// cluster is kept by reference alone: a change of one of 500 cluster
	// policies costs a map write, not a copy of them all.
	cluster    map[keepalive.Ref]keepalive.Policy
	namespaces map[string]map[string]string // labels by name
	// clusterFor holds, by namespace, the cluster policies whose
	// namespaceSelector selects it; an entry goes when its namespace
	// changes, all go when a cluster policy does.
	clusterFor map[string][]keepalive.Policy
	// shared keeps one copy of each list in clusterFor.
	shared keepalive.SharedLists

	oldNodes   map[string]keepalive.Node
	oldList    []keepalive.Node // oldNodes by name
	onOldNodes []func()

	synced []func() bool
}

// NewStore returns an empty store.
func NewStore(log logr.Logger) *Store {
	return &Store{
		log:        log,
		namespaced: map[string][]keepalive.Policy{},
		cluster:    map[keepalive.Ref]keepalive.Policy{},
		namespaces: map[string]map[string]string{},
		clusterFor: map[string][]keepalive.Policy{},
		oldNodes:   map[string]keepalive.Node{},
	}
}

// OldNodes returns the nodes whose kubelet is older than 1.29 or kernel
// older than 4.5, by name; whether an old kubelet refuses the sysctls is the
// decision's (keepalive.Cluster). The slice is never changed afterwards.
func (s *Store) OldNodes() []keepalive.Node {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.oldList
}

// OnOldNodes calls f after each change of OldNodes.
func (s *Store) OnOldNodes(f func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.onOldNodes = append(s.onOldNodes, f)
}

// Lookup returns the labels of a namespace (known reports whether the store
// has seen it) and the policies that may apply to its pods: its own, and the
// cluster policies that select it (all of them when the store has not seen
// the namespace).
func (s *Store) Lookup(namespace string) (labels map[string]string, known bool, namespaced, cluster []keepalive.Policy) {
	s.mu.RLock()
	labels, known = s.namespaces[namespace]
	namespaced = s.namespaced[namespace]
	cluster, cached := s.clusterFor[namespace]
	if !known {
		// Rare: a namespace whose event has not reached the store yet.
		cluster = slices.Collect(maps.Values(s.cluster))
	}
	s.mu.RUnlock()
	if known && !cached {
		return s.selectCluster(namespace)
	}
	return labels, known, namespaced, cluster
}

// selectCluster is Lookup for a namespace whose cluster policies are not
// worked out yet: it matches every cluster policy's namespaceSelector once
// and keeps the result.
func (s *Store) selectCluster(namespace string) (labels map[string]string, known bool, namespaced, cluster []keepalive.Policy) {
	s.mu.Lock()
	defer s.mu.Unlock()
	labels, known = s.namespaces[namespace]
	namespaced = s.namespaced[namespace]
	if !known {
		return labels, known, namespaced, slices.Collect(maps.Values(s.cluster))
	}
	if cluster, cached := s.clusterFor[namespace]; cached {
		return labels, known, namespaced, cluster
	}
	for _, p := range s.cluster {
		if p.SelectsNamespace(namespace, labels) {
			cluster = append(cluster, p)
		}
	}
	cluster = s.shared.Share(cluster)
	s.clusterFor[namespace] = cluster
	return labels, known, namespaced, cluster
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
	handler := s.events()
	for _, obj := range []client.Object{&v1alpha1.KeepalivePolicy{}, &v1alpha1.ClusterKeepalivePolicy{}, &corev1.Namespace{}, &corev1.Node{}} {
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

// events records the informer events of every kind the store watches.
func (s *Store) events() toolscache.ResourceEventHandlerFuncs {
	return toolscache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) { s.apply(obj, false) },
		UpdateFunc: func(old, obj any) {
			if policyUnchanged(old, obj) {
				return
			}
			s.apply(obj, false)
		},
		DeleteFunc: func(obj any) {
			if tomb, ok := obj.(toolscache.DeletedFinalStateUnknown); ok {
				obj = tomb.Obj
			}
			s.apply(obj, true)
		},
	}
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
			delete(s.clusterFor, o.Name)
			s.mu.Unlock()
		} else {
			s.SetNamespace(o.Name, o.Labels)
		}
		return
	case *corev1.Node:
		s.setNode(o, deleted)
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
	if ref.Kind == keepalive.KindClusterKeepalivePolicy {
		if deleted {
			delete(s.cluster, ref)
		} else {
			s.cluster[ref] = pol
		}
		clear(s.clusterFor)
		s.shared.Reset()
		return
	}
	next := slices.DeleteFunc(slices.Clone(s.namespaced[ref.Namespace]), func(q keepalive.Policy) bool { return q.Ref == ref })
	if !deleted {
		next = append(next, pol)
	}
	if len(next) == 0 {
		delete(s.namespaced, ref.Namespace)
	} else {
		s.namespaced[ref.Namespace] = next
	}
}

// policyUnchanged passes over the updates of a policy that cannot change
// what it does, its status updates first of all.
func policyUnchanged(old, obj any) bool {
	switch obj.(type) {
	case *v1alpha1.KeepalivePolicy, *v1alpha1.ClusterKeepalivePolicy:
		before, ok1 := old.(metav1.Object)
		after, ok2 := obj.(metav1.Object)
		return ok1 && ok2 && !keepalive.PolicyChanged(before, after)
	}
	return false
}

// SetNamespace records the labels of a namespace.
func (s *Store) SetNamespace(name string, labels map[string]string) {
	if labels == nil {
		labels = map[string]string{}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.namespaces[name] = labels
	delete(s.clusterFor, name)
}

// setNode records whether a node is old. Most node events (status updates)
// change nothing that matters here and cost a map lookup.
func (s *Store) setNode(o *corev1.Node, deleted bool) {
	n := keepalive.NodeOf(o)
	old := !deleted && n.Old()
	s.mu.Lock()
	was, had := s.oldNodes[n.Name]
	if !old && !had || old && had && sameNode(was, n) {
		s.mu.Unlock()
		return
	}
	if old {
		s.oldNodes[n.Name] = n
	} else {
		delete(s.oldNodes, n.Name)
	}
	list := make([]keepalive.Node, 0, len(s.oldNodes))
	for _, v := range s.oldNodes {
		list = append(list, v)
	}
	slices.SortFunc(list, func(a, b keepalive.Node) int { return strings.Compare(a.Name, b.Name) })
	s.oldList = list
	listeners := s.onOldNodes
	s.mu.Unlock()
	s.log.Info("node with a kubelet or kernel too old for the keepalive sysctls", "node", n.Name, "old", old, "unschedulable", n.Unschedulable,
		"kubelet", n.Info.KubeletVersion, "kernel", n.Info.KernelVersion, "oldNodes", len(list))
	for _, f := range listeners {
		f()
	}
}

func sameNode(a, b keepalive.Node) bool {
	return a.Unschedulable == b.Unschedulable && a.Info == b.Info && maps.Equal(a.Labels, b.Labels) &&
		slices.EqualFunc(a.Taints, b.Taints, func(x, y corev1.Taint) bool { return x.MatchTaint(&y) && x.Value == y.Value })
}
