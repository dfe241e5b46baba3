package main

import (
	"context"
	"fmt"
	"sync/atomic"

	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/keepalive-operator/keepalive-operator/api/v1alpha1"
)

// watcher watches the Deployments and the policies through the admin's
// client: it plays the Deployment controller, and tells when the operator is
// done. Watching costs the API server far less than polling lists would, and
// the program shares the machine with what it measures.
type watcher struct {
	cache cache.Cache
	c     client.Client
	queue workqueue.TypedInterface[types.NamespacedName]
	// rollouts counts the rollouts the fake Deployment controller reported
	// done after the first one of each Deployment.
	rollouts atomic.Int64
}

func startWatcher(ctx context.Context, p *plane, scheme *kruntime.Scheme) (*watcher, error) {
	c, err := cache.New(p.cfg, cache.Options{
		Scheme: scheme,
		// The program only reads what it caches.
		DefaultUnsafeDisableDeepCopy: ptr.To(true),
		DefaultTransform:             cache.TransformStripManagedFields(),
	})
	if err != nil {
		return nil, fmt.Errorf("create the program's cache: %w", err)
	}
	w := &watcher{cache: c, c: p.c, queue: workqueue.NewTyped[types.NamespacedName]()}
	deployments, err := c.GetInformer(ctx, &appsv1.Deployment{})
	if err != nil {
		return nil, fmt.Errorf("watch Deployments: %w", err)
	}
	enqueue := func(obj any) {
		if d, ok := obj.(*appsv1.Deployment); ok && d.Generation > d.Status.ObservedGeneration {
			w.queue.Add(types.NamespacedName{Namespace: d.Namespace, Name: d.Name})
		}
	}
	if _, err := deployments.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc:    enqueue,
		UpdateFunc: func(_, obj any) { enqueue(obj) },
	}); err != nil {
		return nil, fmt.Errorf("handle Deployment events: %w", err)
	}
	for _, obj := range []client.Object{&v1alpha1.KeepalivePolicy{}, &v1alpha1.ClusterKeepalivePolicy{}} {
		if _, err := c.GetInformer(ctx, obj); err != nil {
			return nil, fmt.Errorf("watch %T: %w", obj, err)
		}
	}
	go func() { _ = c.Start(ctx) }()
	go func() {
		<-ctx.Done()
		w.queue.ShutDown()
	}()
	if !c.WaitForCacheSync(ctx) {
		return nil, fmt.Errorf("the program's cache did not sync")
	}
	for range 4 {
		go w.work(ctx)
	}
	return w, nil
}

func (w *watcher) work(ctx context.Context) {
	for {
		key, shutdown := w.queue.Get()
		if shutdown {
			return
		}
		if err := w.finishRollout(ctx, key); err != nil && ctx.Err() == nil {
			fmt.Fprintln(logOut, "benchscale: fake Deployment controller:", err)
			w.queue.Add(key)
		}
		w.queue.Done(key)
	}
}

// finishRollout reports a Deployment's rollout of its current generation
// done, as the Deployment controller would once every replica runs the new
// template. It does not replace the pods.
func (w *watcher) finishRollout(ctx context.Context, key types.NamespacedName) error {
	d := &appsv1.Deployment{}
	if err := w.cache.Get(ctx, key, d); err != nil {
		return client.IgnoreNotFound(err)
	}
	if d.Generation <= d.Status.ObservedGeneration {
		return nil
	}
	n := ptr.Deref(d.Spec.Replicas, 1)
	patch := fmt.Sprintf(`{"status":{"observedGeneration":%d,"replicas":%d,"updatedReplicas":%d,"readyReplicas":%d,"availableReplicas":%d}}`,
		d.Generation, n, n, n, n)
	obj := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: key.Namespace, Name: key.Name}}
	if err := w.c.Status().Patch(ctx, obj, client.RawPatch(types.MergePatchType, []byte(patch))); err != nil {
		return fmt.Errorf("report the rollout of Deployment %s done: %w", key, err)
	}
	if d.Generation > 1 {
		w.rollouts.Add(1)
	}
	return nil
}

// rolledOut says whether every Deployment reports its current generation
// rolled out.
func (w *watcher) rolledOut(ctx context.Context) (bool, error) {
	var list appsv1.DeploymentList
	if err := w.cache.List(ctx, &list); err != nil {
		return false, fmt.Errorf("list Deployments: %w", err)
	}
	for i := range list.Items {
		if d := &list.Items[i]; d.Generation > d.Status.ObservedGeneration {
			return false, nil
		}
	}
	return true, nil
}

// remaining says what keeps the run from having converged, "" when nothing
// does: a selected template without the values, a policy whose status is
// not current (generation, pending workloads, pod count).
func (w *watcher) remaining(ctx context.Context, l layout, matched map[string]int32) (string, error) {
	want := map[types.NamespacedName]bool{}
	for _, d := range l.deployments {
		if d.selected {
			want[types.NamespacedName{Namespace: d.namespace, Name: d.name}] = true
		}
	}
	var deployments appsv1.DeploymentList
	if err := w.cache.List(ctx, &deployments); err != nil {
		return "", fmt.Errorf("list Deployments: %w", err)
	}
	unpatched := 0
	for i := range deployments.Items {
		d := &deployments.Items[i]
		if want[types.NamespacedName{Namespace: d.Namespace, Name: d.Name}] && !hasValues(d) {
			unpatched++
		}
	}
	var kaps v1alpha1.KeepalivePolicyList
	var ckaps v1alpha1.ClusterKeepalivePolicyList
	if err := w.cache.List(ctx, &kaps); err != nil {
		return "", fmt.Errorf("list KeepalivePolicies: %w", err)
	}
	if err := w.cache.List(ctx, &ckaps); err != nil {
		return "", fmt.Errorf("list ClusterKeepalivePolicies: %w", err)
	}
	seen, stale := 0, 0
	check := func(key string, generation int64, s *v1alpha1.KeepalivePolicyStatus) {
		want, ok := matched[key]
		if !ok {
			return
		}
		seen++
		if s.ObservedGeneration != generation || s.Workloads == nil || s.Workloads.Pending != 0 ||
			s.Pods == nil || s.Pods.Matched != want {
			stale++
		}
	}
	for i := range kaps.Items {
		p := &kaps.Items[i]
		check(p.Namespace+"/"+p.Name, p.Generation, &p.Status)
	}
	for i := range ckaps.Items {
		p := &ckaps.Items[i]
		check("/"+p.Name, p.Generation, &p.Status)
	}
	stale += len(matched) - seen
	if unpatched == 0 && stale == 0 {
		return "", nil
	}
	return fmt.Sprintf("%d of %d selected Deployments without the values, %d of %d policies not current",
		unpatched, len(want), stale, len(matched)), nil
}

// hasValues says whether a Deployment's template carries the values.
func hasValues(d *appsv1.Deployment) bool {
	sc := d.Spec.Template.Spec.SecurityContext
	if sc == nil {
		return false
	}
	found := 0
	for _, s := range sc.Sysctls {
		if v, ok := wantSysctls[s.Name]; ok {
			if s.Value != v {
				return false
			}
			found++
		}
	}
	return found == len(wantSysctls)
}
