package controller

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/keepalive-operator/keepalive-operator/internal/keepalive"
)

// Reasons of the events on workloads and policies.
const (
	ReasonTemplatePatched = "TemplatePatched"
	ReasonWriteFailed     = "TemplateWriteFailed"
	ReasonRecordBroken    = "RecordUnreadable"
	ReasonRecordRemoved   = "RecordRemoved"
	ReasonRolloutStuck    = "RolloutStuck"
)

// workloadReconciler brings one workload's pod template to its desired
// state: the decision the webhook makes for a pod of the template, over all
// the policies in scope. Each pass reads the cache only, and writes only
// when the desired state differs from the template.
type workloadReconciler struct {
	client  client.Client // reads from the cache
	live    client.Reader // reads from the API server, after a conflict
	events  events.EventRecorder
	cluster func() keepalive.Cluster

	policies *policySet
	slots    *slots
	failures *failures
	reverts  *reverts
	indexes  *indexes
	// wake enqueues workloads; notify enqueues a policy's status pass.
	wake   func(...workloadKey)
	notify func(ref string)
}

func (r *workloadReconciler) Reconcile(ctx context.Context, key workloadKey) (result ctrl.Result, retErr error) {
	defer func() { reconciles.WithLabelValues("Workload", resultLabel(result, retErr)).Inc() }()
	if err := r.indexes.ensure(ctx); err != nil {
		return ctrl.Result{}, err
	}
	r.slots.rebuild(time.Now(), func() map[workloadKey]slot { return r.rolloutsUnderWay(ctx) })
	obj := newWorkload(key.Kind)
	if err := r.client.Get(ctx, key.objectKey(), obj); err != nil {
		if apierrors.IsNotFound(err) {
			r.forget(key)
			return ctrl.Result{}, nil
		}
		return ctrl.Result{}, fmt.Errorf("get %s: %w", key, err)
	}
	if !ours(obj) {
		return ctrl.Result{}, nil
	}
	retryIn := r.observeSlot(ctx, key, obj)

	err := r.converge(ctx, key, obj)
	if apierrors.IsConflict(err) {
		// The cache lags the API server: decide again on what is there.
		fresh := newWorkload(key.Kind)
		if err = r.live.Get(ctx, key.objectKey(), fresh); err == nil {
			err = r.converge(ctx, key, fresh)
		}
	}
	if apierrors.IsNotFound(err) {
		r.forget(key)
		return ctrl.Result{}, nil
	}
	if err != nil {
		return ctrl.Result{}, err
	}
	return ctrl.Result{RequeueAfter: retryIn}, nil
}

// forget drops what is known of a workload that is gone.
func (r *workloadReconciler) forget(key workloadKey) {
	policy, wake := r.slots.release(key)
	r.wake(wake...)
	if p, had := r.failures.clear(key); had {
		r.notify(p)
	}
	if p, was := r.reverts.forget(key); was {
		r.notify(p)
	}
	r.notify(policy)
}

// observeSlot frees the workload's slot when its rollout is over, and says
// when to look again at one still rolling under a deadline.
func (r *workloadReconciler) observeSlot(ctx context.Context, key workloadKey, obj client.Object) time.Duration {
	p, policy, retryIn := r.slots.observe(key, obj, time.Now())
	switch p {
	case stuck:
		note := fmt.Sprintf("%s made no progress for %s; its rollout slot is freed", key, r.slots.deadline)
		logf.FromContext(ctx).Info("rollout stuck", "workload", key.String(), "deadline", r.slots.deadline.String())
		r.events.Eventf(obj, nil, corev1.EventTypeWarning, ReasonRolloutStuck, "Rollout", "%s", note)
		if pol := policyObjectOf(ctx, r.client, policy); pol != nil {
			r.events.Eventf(pol, obj, corev1.EventTypeWarning, ReasonRolloutStuck, "Rollout", "%s", note)
		}
		fallthrough
	case finished:
		r.wake(r.slots.wake()...)
		r.notify(policy)
	}
	return retryIn
}

// converge decides on obj and writes the change, within the rollout limit.
func (r *workloadReconciler) converge(ctx context.Context, key workloadKey, obj client.Object) error {
	var ns corev1.Namespace
	if err := r.client.Get(ctx, client.ObjectKey{Name: key.Namespace}, &ns); err != nil {
		// Not in the cache yet, or going away with its workloads: retried,
		// never taken for the workload being gone.
		return fmt.Errorf("get namespace %s: %s", key.Namespace, err.Error())
	}
	namespaced, cluster, err := r.policies.inScope(ctx, key.Namespace)
	if err != nil {
		return err
	}
	tmpl := keepalive.PodTemplate(obj)
	nsView := keepalive.Namespace{Name: ns.Name, Labels: ns.Labels}
	rec, hasRecord, recErr := keepalive.ParseManaged(obj.GetAnnotations())
	if recErr != nil {
		// Without the record the user's originals are unknown: touching the
		// template could lose them for good.
		d := keepalive.DesiredTemplate(keepalive.TemplateView(obj), nil, nsView, r.cluster(), namespaced, cluster)
		r.fail(ctx, key, obj, governing(d, nil), ReasonRecordBroken,
			fmt.Sprintf("%v; the template is left as it is until the annotation is fixed or removed", recErr))
		return nil
	}
	var prev *keepalive.Managed
	if hasRecord {
		prev = &rec
	}
	d := keepalive.DesiredTemplate(keepalive.TemplateView(obj), prev, nsView, r.cluster(), namespaced, cluster)
	policy := governing(d, prev)
	if !d.Changed() {
		r.settled(key, obj, templateSysctls(tmpl))
		return nil
	}
	if prev == nil {
		// A template the operator never patched is patched only when its
		// pods need the values: pods the webhook already gave them are not
		// rolled for nothing.
		stale, err := r.hasStalePods(ctx, key, nsView, d.Policy)
		if err != nil || !stale {
			return err
		}
	}

	policyGeneration := generationOf(ctx, r.client, policy)
	if d.SysctlsChanged {
		if alone, newly := r.reverts.observe(key, obj, d.Sysctls, policy, policyGeneration, time.Now()); alone {
			if newly {
				r.leaveAlone(ctx, key, obj, d, policy)
			}
			if p, was := r.slots.leaveQueue(key); was {
				r.notify(p)
			}
			return nil
		}
	}

	needsSlot := d.SysctlsChanged && rollsPods(obj)
	if needsSlot {
		ok, joined := r.slots.acquire(key, policy, time.Now())
		if !ok {
			if joined {
				r.notify(policy)
			}
			return nil
		}
	} else if p, was := r.slots.leaveQueue(key); was {
		r.notify(p)
	}

	written := newWorkload(key.Kind)
	written.SetNamespace(key.Namespace)
	written.SetName(key.Name)
	if err := r.client.Patch(ctx, written, templatePatch(key.Kind, obj.GetResourceVersion(), d), client.FieldOwner(FieldOwner)); err != nil {
		if needsSlot {
			_, wake := r.slots.release(key)
			r.wake(wake...)
		}
		if apierrors.IsConflict(err) || apierrors.IsNotFound(err) {
			return err
		}
		r.fail(ctx, key, obj, policy, ReasonWriteFailed, err.Error())
		return fmt.Errorf("patch %s: %w", key, err)
	}
	if needsSlot {
		r.slots.started(key, written.GetGeneration(), updatedReplicas(obj))
	}
	if d.SysctlsChanged {
		r.reverts.wrote(key, written, d.Sysctls, policy, policyGeneration)
	}
	if p, had := r.failures.clear(key); had {
		r.notify(p)
	}
	r.notify(policy)
	if prev != nil && prev.Policy != policy {
		r.notify(prev.Policy)
	}
	if d.SysctlsChanged {
		note := fmt.Sprintf("pod template sysctls of %s set to %s", key, keepalive.Describe(d.Sysctls))
		by := "no policy: the user's own values are back"
		if d.Record != nil {
			by = "for " + d.Record.Policy
		}
		// On the workload only, the policy as the related object: a policy
		// that selects thousands of workloads gets no event per workload.
		r.events.Eventf(written, policyObjectOf(ctx, r.client, policy), corev1.EventTypeNormal, ReasonTemplatePatched, "Rollout", "%s, %s", note, by)
		logf.FromContext(ctx).Info("pod template patched", "workload", key.String(), "sysctls", keepalive.Describe(d.Sysctls), "policy", policy)
	}
	return nil
}

// governing names the policy a change is for: the one whose values the
// template gets, or the one whose values it loses.
func governing(d keepalive.Template, prev *keepalive.Managed) string {
	switch {
	case d.Record != nil:
		return d.Record.Policy
	case prev != nil:
		return prev.Policy
	case d.Policy != nil:
		return d.Policy.Ref.String()
	}
	return ""
}

// settled is a workload at its desired state: it needs no slot, and what
// failed before is over.
func (r *workloadReconciler) settled(key workloadKey, obj client.Object, sysctls []corev1.Sysctl) {
	if p, was := r.slots.leaveQueue(key); was {
		r.notify(p)
	}
	if p, had := r.failures.clear(key); had {
		r.notify(p)
	}
	if p, was := r.reverts.settled(key, obj, sysctls); was {
		r.notify(p)
	}
}

// generationOf is the generation of a policy named by reference, 0 when it
// is gone.
func generationOf(ctx context.Context, c client.Reader, ref string) int64 {
	if pol, ok := policyObjectOf(ctx, c, ref).(client.Object); ok {
		return pol.GetGeneration()
	}
	return 0
}

// fail records a workload the operator cannot bring to its desired state,
// with one Warning event on it and its policy per new error.
func (r *workloadReconciler) fail(ctx context.Context, key workloadKey, obj client.Object, policy, reason, message string) {
	logf.FromContext(ctx).Info("workload not converged", "workload", key.String(), "policy", policy, "reason", reason, "error", message)
	if !r.failures.set(key, policy, message) {
		return
	}
	note := fmt.Sprintf("%s: %s", key, message)
	r.events.Eventf(obj, nil, corev1.EventTypeWarning, reason, "Rollout", "%s", note)
	if pol := policyObjectOf(ctx, r.client, policy); pol != nil {
		r.events.Eventf(pol, obj, corev1.EventTypeWarning, reason, "Rollout", "%s", note)
	}
	r.notify(policy)
}

// hasStalePods reports whether a running pod of the workload lacks the
// policy's values.
func (r *workloadReconciler) hasStalePods(ctx context.Context, key workloadKey, ns keepalive.Namespace, pol *keepalive.Policy) (bool, error) {
	if pol == nil {
		return false, nil
	}
	owners := []string{key.Kind + "/" + key.Name}
	switch key.Kind {
	case kindDeployment, kindCronJob:
		list := newWorkloadList(kindReplicaSet)
		if key.Kind == kindCronJob {
			list = newJobList()
		}
		if err := r.client.List(ctx, list, client.InNamespace(key.Namespace), client.MatchingFields{indexOwner: owners[0]}, client.UnsafeDisableDeepCopy); err != nil {
			return false, fmt.Errorf("list what %s owns: %w", key, err)
		}
		owners = owners[:0]
		_ = eachObject(list, func(o client.Object) { owners = append(owners, kindOfOwned(o)+"/"+o.GetName()) })
	}
	pods, err := r.indexes.pods.inNamespace(key.Namespace)
	if err != nil {
		return false, err
	}
	cluster := r.cluster()
	for _, pod := range pods {
		kind, name := pod.Owner()
		if !running(pod) || !slices.Contains(owners, kind+"/"+name) {
			continue
		}
		node, err := nodeInfo(ctx, r.client, pod.Node())
		if err != nil {
			return false, err
		}
		if state, _ := keepalive.Classify(podView(pod), ns, cluster, pol, node); state == keepalive.PodStale {
			return true, nil
		}
	}
	return false, nil
}

// rolloutsUnderWay lists the workloads with a record of the operator that
// are replacing pods, for a new leader's slots.
func (r *workloadReconciler) rolloutsUnderWay(ctx context.Context) map[workloadKey]slot {
	out := map[workloadKey]slot{}
	for _, kind := range []string{kindDeployment, kindStatefulSet, kindDaemonSet} {
		list := newWorkloadList(kind)
		if err := r.client.List(ctx, list, client.UnsafeDisableDeepCopy); err != nil {
			logf.FromContext(ctx).Error(err, "list workloads to rebuild the rollout slots", "kind", kind)
			continue
		}
		_ = eachObject(list, func(o client.Object) {
			rec, ok, err := keepalive.ParseManaged(o.GetAnnotations())
			if ok && err == nil && rollsPods(o) && rolling(o) {
				out[keyOf(kind, o)] = slot{policy: rec.Policy, generation: o.GetGeneration(), updated: updatedReplicas(o)}
			}
		})
	}
	return out
}

// failures remembers the workloads whose last write failed, so that the
// policy's status counts them and each error is told once.
type failures struct {
	mu sync.Mutex
	m  map[workloadKey]failure
}

type failure struct{ policy, message string }

func newFailures() *failures { return &failures{m: map[workloadKey]failure{}} }

// set records a failure and reports whether it is new.
func (f *failures) set(k workloadKey, policy, message string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	old, ok := f.m[k]
	f.m[k] = failure{policy, message}
	return !ok || old.message != message || old.policy != policy
}

func (f *failures) clear(k workloadKey) (policy string, had bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	old, had := f.m[k]
	delete(f.m, k)
	return old.policy, had
}

// count returns how many workloads of a policy failed, and one of them.
func (f *failures) count(policy string) (n int32, example string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for k, v := range f.m {
		if v.policy == policy {
			n++
			if example == "" || k.String() < example {
				example = k.String()
			}
		}
	}
	return n, example
}
