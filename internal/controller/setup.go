package controller

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	"github.com/keepalive-operator/keepalive-operator/api/v1alpha1"
	"github.com/keepalive-operator/keepalive-operator/internal/keepalive"
)

// Cache indexes.
const (
	// indexOwner is "Kind/name" of the controller of a ReplicaSet or a Job.
	indexOwner = "keepalive.io/owner"
	// indexRecord is the policy the record of a workload names.
	indexRecord = "keepalive.io/record"
)

// Setup adds the workload reconciler and the status reconcilers of both
// policy kinds to the manager; they run on the leader only.
func Setup(mgr ctrl.Manager, opts Options) error {
	if opts.ProgressDeadline == 0 {
		opts.ProgressDeadline = 10 * time.Minute
	}
	if opts.StatusDelay == 0 {
		opts.StatusDelay = time.Second
	}
	if opts.PolicyDelay == 0 {
		opts.PolicyDelay = time.Second
	}
	if opts.MaxConcurrentReconciles == 0 {
		opts.MaxConcurrentReconciles = 4
	}
	idx := &indexes{cache: mgr.GetCache()}
	c := mgr.GetClient()
	recorder := mgr.GetEventRecorder("keepalive-operator")
	policies := newPolicySet(mgr.GetCache())
	sl := newSlots(opts.MaxConcurrentRollouts, opts.ProgressDeadline)
	fl := newFailures()
	rv := newReverts()
	var workloadQ queue[workloadKey]
	var kapQ, ckapQ queue[reconcile.Request]
	notify := func(ref string) {
		parsed, err := keepalive.ParseRef(ref)
		if err != nil {
			return
		}
		req := requestFor(parsed)
		if parsed.Kind == keepalive.KindClusterKeepalivePolicy {
			ckapQ.addAfter(opts.StatusDelay, req)
		} else {
			kapQ.addAfter(opts.StatusDelay, req)
		}
	}
	m := &mapper{client: c, cluster: opts.Cluster, policies: policies, events: recorder, indexes: idx}
	t := newTally(c, idx, opts.Cluster, policies, notify)
	if err := mgr.Add(t); err != nil {
		return err
	}
	au := newAudits(mgr.GetCache(), notify)
	if err := mgr.Add(au); err != nil {
		return err
	}

	w := &workloadReconciler{
		client: c, live: mgr.GetAPIReader(), events: recorder, cluster: opts.Cluster,
		policies: policies, slots: sl, failures: fl, reverts: rv, indexes: idx,
		wake: func(keys ...workloadKey) { workloadQ.addAfter(0, keys...) }, notify: notify,
	}
	b := builder.TypedControllerManagedBy[workloadKey](mgr).
		Named("workload").
		WithOptions(controller.TypedOptions[workloadKey]{MaxConcurrentReconciles: opts.MaxConcurrentReconciles}).
		Watches(&corev1.Pod{}, m.podToWorkload()).
		Watches(&corev1.Namespace{}, m.namespaceToWorkloads()).
		Watches(&v1alpha1.KeepalivePolicy{}, m.policyToWorkloads(opts.PolicyDelay)).
		Watches(&v1alpha1.ClusterKeepalivePolicy{}, m.policyToWorkloads(opts.PolicyDelay)).
		WatchesRawSource(source.TypedFunc[workloadKey](workloadQ.capture))
	for _, kind := range patchableKinds {
		b = b.Watches(newWorkload(kind), m.workloadEvents(kind, sl))
	}
	if err := b.Complete(w); err != nil {
		return err
	}

	kap := &policyReconciler[*v1alpha1.KeepalivePolicy]{
		client: c, events: recorder, cluster: opts.Cluster, policies: policies, slots: sl, failures: fl, reverts: rv, tally: t, audits: au, indexes: idx,
		kind: keepalive.KindKeepalivePolicy, namespaced: true,
		newObj: func() *v1alpha1.KeepalivePolicy { return &v1alpha1.KeepalivePolicy{} },
	}
	ckap := &policyReconciler[*v1alpha1.ClusterKeepalivePolicy]{
		client: c, events: recorder, cluster: opts.Cluster, policies: policies, slots: sl, failures: fl, reverts: rv, tally: t, audits: au, indexes: idx,
		kind:   keepalive.KindClusterKeepalivePolicy,
		newObj: func() *v1alpha1.ClusterKeepalivePolicy { return &v1alpha1.ClusterKeepalivePolicy{} },
	}
	if opts.OnOldNodes != nil {
		nodes := newOldNodeWatch(c, opts.Cluster, &workloadQ, &kapQ, &ckapQ, opts.StatusDelay)
		if err := mgr.Add(nodes); err != nil {
			return err
		}
		opts.OnOldNodes(nodes.changed)
	}
	return errors.Join(
		setupPolicy(mgr, kap, m, &kapQ, opts.StatusDelay),
		setupPolicy(mgr, ckap, m, &ckapQ, opts.StatusDelay),
	)
}

// setupPolicy watches a policy kind for its status pass, and the records
// of the workloads for their counts; the tally wakes it when its pod counts
// change.
func setupPolicy[T policyObject](mgr ctrl.Manager, r *policyReconciler[T], m *mapper, q *queue[reconcile.Request], delay time.Duration) error {
	b := ctrl.NewControllerManagedBy(mgr).
		Named(strings.ToLower(r.kind)).
		// Status writes of the reconciler itself do not start another pass.
		For(r.newObj(), builder.WithPredicates(predicate.Or(predicate.GenerationChangedPredicate{}, deletionStarted))).
		WatchesRawSource(source.Func(q.capture))
	for _, kind := range patchableKinds {
		b = b.Watches(newWorkload(kind), m.recordToPolicies(r.kind, delay))
	}
	return b.Complete(r)
}

// queue holds a controller's work queue once the controller runs (on the
// leader), for what other controllers wake.
type queue[T comparable] struct {
	mu sync.Mutex
	q  workqueue.TypedRateLimitingInterface[T]
}

func (q *queue[T]) capture(_ context.Context, wq workqueue.TypedRateLimitingInterface[T]) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.q = wq
	return nil
}

func (q *queue[T]) addAfter(d time.Duration, items ...T) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.q == nil {
		return
	}
	for _, it := range items {
		if d > 0 {
			q.q.AddAfter(it, d)
		} else {
			q.q.Add(it)
		}
	}
}

// indexes adds the cache indexes the first time the leader needs them:
// an index makes its informer start, and a replica that only serves the
// webhook need not cache pods and workloads.
type indexes struct {
	cache cache.Cache
	once  sync.Once
	err   error
	// pods reads the pod informer's store, there once ensure returned.
	pods podStore
}

func (i *indexes) ensure(ctx context.Context) error {
	i.once.Do(func() { i.err = i.add(ctx) })
	return i.err
}

func (i *indexes) add(ctx context.Context) error {
	byOwner := func(o client.Object) []string {
		if ref := metav1.GetControllerOf(o); ref != nil {
			return []string{ref.Kind + "/" + ref.Name}
		}
		return nil
	}
	inf, err := i.cache.GetInformer(ctx, &corev1.Pod{})
	if err != nil {
		return fmt.Errorf("get the pod informer: %w", err)
	}
	shared, ok := inf.(toolscache.SharedIndexInformer)
	if !ok {
		return fmt.Errorf("the pod informer is a %T, not a SharedIndexInformer", inf)
	}
	i.pods = podStore{indexer: shared.GetIndexer()}
	// Pods carry no index of the operator's: each costs memory per pod.
	errs := []error{
		i.cache.IndexField(ctx, &appsv1.ReplicaSet{}, indexOwner, byOwner),
		i.cache.IndexField(ctx, &batchv1.Job{}, indexOwner, byOwner),
	}
	for _, kind := range patchableKinds {
		errs = append(errs, i.cache.IndexField(ctx, newWorkload(kind), indexRecord, func(o client.Object) []string {
			if p := recordPolicy(o); p != "" {
				return []string{p}
			}
			return nil
		}))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("index the cache: %w", err)
	}
	return nil
}

// recordPolicy is the policy the record of one of the operator's workloads
// names, "" when there is none.
func recordPolicy(o client.Object) string {
	if !ours(o) {
		return ""
	}
	rec, ok, err := keepalive.ParseManaged(o.GetAnnotations())
	if !ok || err != nil {
		return ""
	}
	return rec.Policy
}

// mapper turns events into the workloads and policies they can affect.
type mapper struct {
	client   client.Client
	cluster  func() keepalive.Cluster
	policies *policySet
	events   interface {
		Eventf(regarding, related runtime.Object, eventtype, reason, action, note string, args ...any)
	}
	indexes *indexes
}

type (
	workloadQueue = workqueue.TypedRateLimitingInterface[workloadKey]
	policyQueue   = workqueue.TypedRateLimitingInterface[reconcile.Request]
)

// workloadEvents wakes a workload of the operator when its spec or record
// changes, or its status while it holds a rollout slot, and warns when
// someone removed the record of a template that still carries the
// operator's values.
func (m *mapper) workloadEvents(kind string, sl *slots) handler.TypedEventHandler[client.Object, workloadKey] {
	return handler.TypedFuncs[client.Object, workloadKey]{
		CreateFunc: func(_ context.Context, e event.TypedCreateEvent[client.Object], q workloadQueue) {
			if ours(e.Object) {
				q.Add(keyOf(kind, e.Object))
			}
		},
		UpdateFunc: func(ctx context.Context, e event.TypedUpdateEvent[client.Object], q workloadQueue) {
			o, n := e.ObjectOld, e.ObjectNew
			if !ours(n) {
				return
			}
			key := keyOf(kind, n)
			oldRecord, newRecord := o.GetAnnotations()[keepalive.AnnotationManagedSysctls], n.GetAnnotations()[keepalive.AnnotationManagedSysctls]
			if oldRecord != newRecord {
				m.recordRemoved(ctx, key, o, n)
			}
			if o.GetGeneration() != n.GetGeneration() || oldRecord != newRecord || sl.holds(key) {
				q.Add(key)
			}
		},
		DeleteFunc: func(_ context.Context, e event.TypedDeleteEvent[client.Object], q workloadQueue) {
			if ours(e.Object) {
				q.Add(keyOf(kind, e.Object))
			}
		},
	}
}

// recordRemoved warns when the record went while the template still
// carries the values it says the operator set: those now count as the
// user's own, and deleting the policy will not restore the originals.
func (m *mapper) recordRemoved(ctx context.Context, key workloadKey, o, n client.Object) {
	rec, ok, err := keepalive.ParseManaged(o.GetAnnotations())
	if !ok || err != nil {
		return
	}
	if _, still := n.GetAnnotations()[keepalive.AnnotationManagedSysctls]; still {
		return
	}
	sysctls := templateSysctls(keepalive.PodTemplate(n))
	for _, s := range rec.Set {
		if !slices.Contains(sysctls, s) {
			return // the template moved on: not the operator's values any more
		}
	}
	note := fmt.Sprintf("the annotation %s of %s was removed while its template carries the values set for %s; "+
		"they now count as the workload's own, and %s will not be restored when no policy applies",
		keepalive.AnnotationManagedSysctls, key, rec.Policy, keepalive.Describe(rec.Original))
	logf.FromContext(ctx).Info("record removed", "workload", key.String(), "record", rec.String())
	m.events.Eventf(n, nil, corev1.EventTypeWarning, ReasonRecordRemoved, "Rollout", "%s", note)
	if pol := policyObjectOf(ctx, m.client, rec.Policy); pol != nil {
		m.events.Eventf(pol, n, corev1.EventTypeWarning, ReasonRecordRemoved, "Rollout", "%s", note)
	}
}

// podToWorkload wakes the workload of a new pod (or a relabelled one) that
// lacks the values of the policy that governs it: a template the operator
// never patched is patched only then.
func (m *mapper) podToWorkload() handler.TypedEventHandler[client.Object, workloadKey] {
	check := func(ctx context.Context, obj client.Object, q workloadQueue) {
		pod, ok := obj.(*cachedPod)
		if !ok || !running(pod) {
			return
		}
		if kind, _ := pod.Owner(); kind == "" {
			return
		}
		d, ok := m.decide(ctx, pod)
		if !ok || d.Skip != "" || d.Sysctls == nil {
			return
		}
		if key, patchable, err := owner(ctx, m.client, pod); err == nil && patchable {
			q.Add(key)
		}
	}
	return handler.TypedFuncs[client.Object, workloadKey]{
		CreateFunc: func(ctx context.Context, e event.TypedCreateEvent[client.Object], q workloadQueue) {
			check(ctx, e.Object, q)
		},
		UpdateFunc: func(ctx context.Context, e event.TypedUpdateEvent[client.Object], q workloadQueue) {
			if !equality.Semantic.DeepEqual(e.ObjectOld.GetLabels(), e.ObjectNew.GetLabels()) {
				check(ctx, e.ObjectNew, q)
			}
		},
	}
}

// decide is the admission decision for a pod as it is now.
func (m *mapper) decide(ctx context.Context, pod *cachedPod) (keepalive.Decision, bool) {
	ns, namespaced, cluster, ok, err := m.policies.forNamespace(ctx, pod.GetNamespace())
	if !ok || err != nil {
		return keepalive.Decision{}, false
	}
	return keepalive.Decide(podView(pod), ns, m.cluster(), namespaced, cluster), true
}

// namespaceToWorkloads wakes the workloads of a namespace whose label change
// can change what the policies do there.
func (m *mapper) namespaceToWorkloads() handler.TypedEventHandler[client.Object, workloadKey] {
	return handler.TypedFuncs[client.Object, workloadKey]{
		UpdateFunc: func(ctx context.Context, e event.TypedUpdateEvent[client.Object], q workloadQueue) {
			if !m.namespaceMatters(ctx, e.ObjectOld, e.ObjectNew) {
				return
			}
			for _, kind := range patchableKinds {
				list := newWorkloadList(kind)
				if err := m.client.List(ctx, list, client.InNamespace(e.ObjectNew.GetName()), client.UnsafeDisableDeepCopy); err != nil {
					logf.FromContext(ctx).Error(err, "list workloads of a namespace", "namespace", e.ObjectNew.GetName())
					continue
				}
				_ = eachObject(list, func(o client.Object) {
					if ours(o) {
						q.Add(keyOf(kind, o))
					}
				})
			}
		},
	}
}

func (m *mapper) namespaceMatters(ctx context.Context, o, n client.Object) bool {
	if equality.Semantic.DeepEqual(o.GetLabels(), n.GetLabels()) {
		return false
	}
	namespaced, cluster, err := m.policies.inScope(ctx, n.GetName())
	if err != nil {
		return true
	}
	return keepalive.NamespaceMatters(keepalive.Namespace{Name: o.GetName(), Labels: o.GetLabels()},
		keepalive.Namespace{Name: n.GetName(), Labels: n.GetLabels()}, m.cluster(), append(namespaced, cluster...))
}

// policyToWorkloads wakes, when a policy comes, changes its spec or goes,
// the workloads its old or new spec selects and those whose record names it.
func (m *mapper) policyToWorkloads(delay time.Duration) handler.TypedEventHandler[client.Object, workloadKey] {
	// After a delay: a workload waiting already keeps its time, so that the
	// policies of one kubectl apply reach it in one pass and one write.
	wake := func(ctx context.Context, q workloadQueue, objs ...client.Object) {
		for _, k := range m.policyWorkloads(ctx, objs...) {
			q.AddAfter(k, delay)
		}
	}
	return handler.TypedFuncs[client.Object, workloadKey]{
		CreateFunc: func(ctx context.Context, e event.TypedCreateEvent[client.Object], q workloadQueue) {
			wake(ctx, q, e.Object)
		},
		UpdateFunc: func(ctx context.Context, e event.TypedUpdateEvent[client.Object], q workloadQueue) {
			if keepalive.PolicyChanged(e.ObjectOld, e.ObjectNew) {
				wake(ctx, q, e.ObjectOld, e.ObjectNew)
			}
		},
		DeleteFunc: func(ctx context.Context, e event.TypedDeleteEvent[client.Object], q workloadQueue) {
			wake(ctx, q, e.Object)
		},
	}
}

// policyWorkloads lists the workloads that versions of a policy select, and
// those whose record names it.
func (m *mapper) policyWorkloads(ctx context.Context, objs ...client.Object) []workloadKey {
	log := logf.FromContext(ctx)
	if err := m.indexes.ensure(ctx); err != nil {
		log.Error(err, "index the cache")
		return nil
	}
	seen := map[workloadKey]bool{}
	var pols []keepalive.Policy
	for _, o := range objs {
		obj, ok := o.(policyObject)
		if !ok {
			continue
		}
		if err := eachRecorded(ctx, m.client, refOf(obj).String(), func(w client.Object) { seen[keyOf(kindOf(w), w)] = true }); err != nil {
			log.Error(err, "list the workloads of a policy's records")
		}
		if pol, err := compile(obj); err == nil {
			pols = append(pols, pol)
		}
	}
	if len(pols) > 0 {
		var opts []client.ListOption
		if pols[0].Ref.Kind == keepalive.KindKeepalivePolicy {
			opts = append(opts, client.InNamespace(pols[0].Ref.Namespace))
		}
		opts = append(opts, client.UnsafeDisableDeepCopy)
		nsLabels := map[string]map[string]string{}
		for _, kind := range patchableKinds {
			list := newWorkloadList(kind)
			if err := m.client.List(ctx, list, opts...); err != nil {
				log.Error(err, "list workloads a policy may select", "kind", kind)
				continue
			}
			_ = eachObject(list, func(w client.Object) {
				if !ours(w) {
					return
				}
				labels, ok := nsLabels[w.GetNamespace()]
				if !ok {
					ns, _ := namespaceOf(ctx, m.client, w.GetNamespace())
					labels, nsLabels[w.GetNamespace()] = ns.Labels, ns.Labels
				}
				t := keepalive.Target{Namespace: w.GetNamespace(), Labels: keepalive.PodTemplate(w).Labels, NamespaceLabels: labels}
				for i := range pols {
					if pols[i].Applies(t) {
						seen[keyOf(kind, w)] = true
					}
				}
			})
		}
	}
	keys := make([]workloadKey, 0, len(seen))
	for k := range seen {
		keys = append(keys, k)
	}
	return keys
}

func requestFor(ref keepalive.Ref) reconcile.Request {
	return reconcile.Request{NamespacedName: types.NamespacedName{Namespace: ref.Namespace, Name: ref.Name}}
}

// recordToPolicies wakes the policies of a kind that a workload's record
// names, before and after the event, for their workload counts.
func (m *mapper) recordToPolicies(kind string, delay time.Duration) handler.TypedEventHandler[client.Object, reconcile.Request] {
	enqueue := func(q policyQueue, objs ...client.Object) {
		for _, o := range objs {
			if ref, err := keepalive.ParseRef(recordPolicy(o)); err == nil && ref.Kind == kind {
				q.AddAfter(requestFor(ref), delay)
			}
		}
	}
	return handler.TypedFuncs[client.Object, reconcile.Request]{
		CreateFunc: func(_ context.Context, e event.TypedCreateEvent[client.Object], q policyQueue) { enqueue(q, e.Object) },
		UpdateFunc: func(_ context.Context, e event.TypedUpdateEvent[client.Object], q policyQueue) {
			enqueue(q, e.ObjectOld, e.ObjectNew)
		},
		DeleteFunc: func(_ context.Context, e event.TypedDeleteEvent[client.Object], q policyQueue) { enqueue(q, e.Object) },
	}
}

// deletionStarted passes the update that marks a policy for deletion.
var deletionStarted = predicate.Funcs{
	UpdateFunc: func(e event.UpdateEvent) bool {
		return e.ObjectOld.GetDeletionTimestamp().IsZero() && !e.ObjectNew.GetDeletionTimestamp().IsZero()
	},
}

// eachObject calls fn with every item of a list.
func eachObject(list client.ObjectList, fn func(client.Object)) error {
	return meta.EachListItem(list, func(o runtime.Object) error {
		fn(o.(client.Object))
		return nil
	})
}

// policyObjectOf reads a policy named by reference from the cache, nil when
// it is gone.
func policyObjectOf(ctx context.Context, c client.Reader, ref string) runtime.Object {
	parsed, err := keepalive.ParseRef(ref)
	if err != nil {
		return nil
	}
	var obj client.Object = &v1alpha1.KeepalivePolicy{}
	if parsed.Kind == keepalive.KindClusterKeepalivePolicy {
		obj = &v1alpha1.ClusterKeepalivePolicy{}
	}
	if err := c.Get(ctx, client.ObjectKey{Namespace: parsed.Namespace, Name: parsed.Name}, obj); err != nil {
		return nil
	}
	return obj
}
