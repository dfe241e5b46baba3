package controller

import (
	"context"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/workqueue"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/keepalive-operator/keepalive-operator/internal/keepalive"
)

// setup watches the policies of the reconciler's kind, and the pods,
// namespaces, nodes and workloads that affect them.
func (r *reconciler[T]) setup(mgr ctrl.Manager) error {
	b := ctrl.NewControllerManagedBy(mgr).
		Named(strings.ToLower(r.kind)).
		WithOptions(controller.Options{MaxConcurrentReconciles: r.opts.MaxConcurrentReconciles}).
		// Status writes of the reconciler itself do not start another pass.
		For(r.newObj(), builder.WithPredicates(predicate.Or(predicate.GenerationChangedPredicate{}, deletionStarted))).
		Watches(&corev1.Pod{}, handler.EnqueueRequestsFromMapFunc(r.forNamespaceOf), builder.WithPredicates(podChanged)).
		Watches(&corev1.Namespace{}, handler.EnqueueRequestsFromMapFunc(r.forNamespace)).
		Watches(&corev1.Node{}, handler.EnqueueRequestsFromMapFunc(r.forAll), builder.WithPredicates(nodeInfoChanged))
	for _, kind := range patchableKinds {
		b = b.Watches(newWorkload(kind), r.workloadEvents(kind))
	}
	return b.Complete(r)
}

// workloadEvents enqueues the policy a workload's record names, frees the
// rollout slot of a workload that is deleted, and wakes the policies waiting
// for a slot when a workload holding one stops rolling or is deleted.
func (r *reconciler[T]) workloadEvents(kind string) handler.EventHandler {
	enqueue := func(ctx context.Context, obj client.Object, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
		for _, req := range r.forRecord(ctx, obj) {
			q.Add(req)
		}
	}
	wake := func(q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
		for _, p := range r.rollouts.waiters(r.kind) {
			q.Add(reconcile.Request{NamespacedName: p})
		}
	}
	key := func(obj client.Object) workloadKey {
		return workloadKey{Kind: kind, Namespace: obj.GetNamespace(), Name: obj.GetName()}
	}
	return handler.Funcs{
		CreateFunc: func(ctx context.Context, e event.CreateEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			enqueue(ctx, e.Object, q)
		},
		UpdateFunc: func(ctx context.Context, e event.UpdateEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			enqueue(ctx, e.ObjectNew, q)
			if r.rollouts.holds(key(e.ObjectNew)) && !rolling(e.ObjectNew) {
				wake(q)
			}
		},
		DeleteFunc: func(ctx context.Context, e event.DeleteEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			r.rollouts.release(key(e.Object))
			enqueue(ctx, e.Object, q)
			wake(q)
		},
	}
}

// policies lists the policies of the reconciler's kind that may apply in a
// namespace ("" for every namespace).
func (r *reconciler[T]) policies(ctx context.Context, namespace string) []reconcile.Request {
	list := r.newList()
	var opts []client.ListOption
	if r.namespaced && namespace != "" {
		opts = append(opts, client.InNamespace(namespace))
	}
	if err := r.client.List(ctx, list, opts...); err != nil {
		logf.FromContext(ctx).Error(err, "list policies to reconcile")
		return nil
	}
	var reqs []reconcile.Request
	_ = meta.EachListItem(list, func(o runtime.Object) error {
		obj := o.(client.Object)
		reqs = append(reqs, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(obj)})
		return nil
	})
	return reqs
}

func (r *reconciler[T]) forNamespaceOf(ctx context.Context, obj client.Object) []reconcile.Request {
	return r.policies(ctx, obj.GetNamespace())
}

func (r *reconciler[T]) forNamespace(ctx context.Context, obj client.Object) []reconcile.Request {
	return r.policies(ctx, obj.GetName())
}

func (r *reconciler[T]) forAll(ctx context.Context, _ client.Object) []reconcile.Request {
	return r.policies(ctx, "")
}

// forRecord maps a workload to the policy its template record names.
func (r *reconciler[T]) forRecord(_ context.Context, obj client.Object) []reconcile.Request {
	m, ok, err := keepalive.ParseManaged(obj.GetAnnotations())
	if !ok || err != nil {
		return nil
	}
	ref, err := keepalive.ParseRef(m.Policy)
	if err != nil || ref.Kind != r.kind {
		return nil
	}
	return []reconcile.Request{{NamespacedName: types.NamespacedName{Namespace: ref.Namespace, Name: ref.Name}}}
}

// deletionStarted passes the update that marks a policy for deletion.
var deletionStarted = predicate.Funcs{
	UpdateFunc: func(e event.UpdateEvent) bool {
		return e.ObjectOld.GetDeletionTimestamp().IsZero() && !e.ObjectNew.GetDeletionTimestamp().IsZero()
	},
}

// podChanged passes pod events that can change a policy's counts or
// rollouts, and not the many status updates of running pods.
var podChanged = predicate.Funcs{
	UpdateFunc: func(e event.UpdateEvent) bool {
		o, ok1 := e.ObjectOld.(*corev1.Pod)
		n, ok2 := e.ObjectNew.(*corev1.Pod)
		if !ok1 || !ok2 {
			return true
		}
		return !equality.Semantic.DeepEqual(o.Labels, n.Labels) ||
			!equality.Semantic.DeepEqual(o.Spec.SecurityContext, n.Spec.SecurityContext) ||
			o.Spec.NodeName != n.Spec.NodeName || o.Status.Phase != n.Status.Phase ||
			!o.DeletionTimestamp.Equal(n.DeletionTimestamp)
	},
}

// nodeInfoChanged passes node events that can change what a node blocks.
var nodeInfoChanged = predicate.Funcs{
	UpdateFunc: func(e event.UpdateEvent) bool {
		o, ok1 := e.ObjectOld.(*corev1.Node)
		n, ok2 := e.ObjectNew.(*corev1.Node)
		return !ok1 || !ok2 || o.Status.NodeInfo.KubeletVersion != n.Status.NodeInfo.KubeletVersion ||
			o.Status.NodeInfo.KernelVersion != n.Status.NodeInfo.KernelVersion
	},
}
