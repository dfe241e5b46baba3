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
// whose templates constrain where their pods run. An upgrade that replaces
// nodes one by one so costs a pass over the pinned workloads per node.
type oldNodeWatch struct {
	client    client.Reader // the cache
	cluster   func() keepalive.Cluster
	workloads *queue[workloadKey]
	kap, ckap *queue[reconcile.Request]
	delay     time.Duration

	mu  sync.Mutex
	any bool // some schedulable node refused the sysctls at the last change
}

func (w *oldNodeWatch) changed() {
	c := w.cluster()
	w.mu.Lock()
	before := w.any
	w.any = keepalive.DescribeOldNodes(c) != ""
	all := before != w.any
	w.mu.Unlock()
	if !w.workloads.running() {
		// Not the leader, or not yet: a controller that starts reconciles
		// every workload anyway.
		return
	}
	ctx := context.Background()
	log := logf.Log.WithName("nodes")

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
			if ours(o) && (all || templateView(podTemplate(o)).Placement.Constrained()) {
				keys = append(keys, keyOf(kind, o))
			}
		})
	}
	log.Info("nodes that refuse the keepalive sysctls changed", "oldNodes", len(c.OldNodes), "schedulable", w.any, "workloads", len(keys))
	w.workloads.addAfter(w.delay, keys...)
}
