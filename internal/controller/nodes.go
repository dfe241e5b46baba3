package controller

import (
	"context"
	"sync"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/keepalive-operator/keepalive-operator/api/v1alpha1"
	"github.com/keepalive-operator/keepalive-operator/internal/keepalive"
)

// oldNodeWatch wakes, when the nodes that refuse the keepalive sysctls
// change, every policy for its PodsBlocked condition, and the workloads
// whose template decision can change: all of them when the first
// schedulable old node comes or the last one goes, otherwise only those
// whose templates name, select or tolerate nodes. It runs on the leader, in
// a goroutine of its own, so that node events are never held up; changes
// that come while it works are gathered into its next pass, which lists the
// policies and workloads from the cache once.
type oldNodeWatch struct {
	client    client.Reader // the cache
	cluster   func() keepalive.Cluster
	workloads *queue[workloadKey]
	kap, ckap *queue[reconcile.Request]
	delay     time.Duration
	kick      chan struct{}

	mu  sync.Mutex
	any bool // some schedulable node refused the sysctls at the last change
	all bool // a pass must wake every workload
}

func newOldNodeWatch(c client.Reader, cluster func() keepalive.Cluster, workloads *queue[workloadKey], kap, ckap *queue[reconcile.Request], delay time.Duration) *oldNodeWatch {
	return &oldNodeWatch{client: c, cluster: cluster, workloads: workloads, kap: kap, ckap: ckap, delay: delay, kick: make(chan struct{}, 1)}
}

// changed is called after each change of the old nodes.
func (w *oldNodeWatch) changed() {
	w.mu.Lock()
	before := w.any
	w.any = keepalive.DescribeOldNodes(w.cluster()) != ""
	w.all = w.all || before != w.any
	w.mu.Unlock()
	select {
	case w.kick <- struct{}{}:
	default: // a pass is due already
	}
}

// Start runs the passes until ctx ends.
func (w *oldNodeWatch) Start(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-w.kick:
			w.pass(ctx)
		}
	}
}

func (w *oldNodeWatch) pass(ctx context.Context) {
	log := logf.Log.WithName("nodes")
	w.mu.Lock()
	all := w.all
	w.all = false
	w.mu.Unlock()

	var kaps v1alpha1.KeepalivePolicyList
	var ckaps v1alpha1.ClusterKeepalivePolicyList
	if err := w.client.List(ctx, &kaps); err != nil {
		log.Error(err, "list KeepalivePolicies after a node change")
	}
	if err := w.client.List(ctx, &ckaps); err != nil {
		log.Error(err, "list ClusterKeepalivePolicies after a node change")
	}
	for i := range kaps.Items {
		w.kap.addAfter(w.delay, requestFor(keepalive.Ref{Namespace: kaps.Items[i].Namespace, Name: kaps.Items[i].Name}))
	}
	for i := range ckaps.Items {
		w.ckap.addAfter(w.delay, requestFor(keepalive.Ref{Name: ckaps.Items[i].Name}))
	}

	var keys []workloadKey
	for _, kind := range patchableKinds {
		list := newWorkloadList(kind)
		if err := w.client.List(ctx, list, client.UnsafeDisableDeepCopy); err != nil {
			log.Error(err, "list workloads after a node change", "kind", kind)
			continue
		}
		_ = eachObject(list, func(o client.Object) {
			if ours(o) && (all || keepalive.TemplateView(o).Placement.Constrained()) {
				keys = append(keys, keyOf(kind, o))
			}
		})
	}
	log.Info("nodes that refuse the keepalive sysctls changed", "oldNodes", len(w.cluster().OldNodes), "all", all, "workloads", len(keys))
	w.workloads.addAfter(w.delay, keys...)
}
