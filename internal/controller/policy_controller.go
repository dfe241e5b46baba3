// Package controller reconciles KeepalivePolicies and
// ClusterKeepalivePolicies: it reports their values and the pods they select
// in status, and patches and restores the pod templates of workloads.
package controller

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/tools/events"
	"k8s.io/client-go/util/retry"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/keepalive-operator/keepalive-operator/api/v1alpha1"
	"github.com/keepalive-operator/keepalive-operator/internal/keepalive"
)

// Finalizer holds a policy until the templates it patched are restored.
const Finalizer = "keepalive.io/restore"

// Options configure the reconcilers.
type Options struct {
	// Cluster is what the decisions need of the cluster.
	Cluster func() keepalive.Cluster
	// MaxConcurrentRollouts is how many workloads may roll at once across
	// the cluster because of the operator.
	MaxConcurrentRollouts int
	// RequeueAfter is how soon a policy with rollouts under way or waiting
	// is looked at again. Zero means 30 seconds.
	RequeueAfter time.Duration
	// MaxConcurrentReconciles per kind. Zero means 2: a pass lists the
	// pods in scope, and rollouts serialise on the shared limit anyway.
	MaxConcurrentReconciles int
}

// policyObject is either kind of policy.
type policyObject interface {
	client.Object
	PolicySpec() *v1alpha1.KeepalivePolicySpec
	PolicyStatus() *v1alpha1.KeepalivePolicyStatus
}

// reconciler reconciles one kind of policy.
type reconciler[T policyObject] struct {
	client   client.Client // reads from the cache
	live     client.Reader // reads from the API server, before writing
	events   events.EventRecorder
	opts     Options
	rollouts *Rollouts

	kind       string
	namespaced bool
	newObj     func() T
	newList    func() client.ObjectList
	compile    func(T) (keepalive.Policy, error)
}

// +kubebuilder:rbac:groups=keepalive.io,resources=keepalivepolicies;clusterkeepalivepolicies,verbs=get;list;watch;update;patch
// +kubebuilder:rbac:groups=keepalive.io,resources=keepalivepolicies/status;clusterkeepalivepolicies/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=keepalive.io,resources=keepalivepolicies/finalizers;clusterkeepalivepolicies/finalizers,verbs=update
// +kubebuilder:rbac:groups="",resources=pods;namespaces;nodes,verbs=get;list;watch
// +kubebuilder:rbac:groups=apps,resources=deployments;statefulsets;daemonsets;replicasets,verbs=get;list;watch;update;patch
// +kubebuilder:rbac:groups=batch,resources=cronjobs,verbs=get;list;watch;update;patch
// +kubebuilder:rbac:groups=batch,resources=jobs,verbs=get;list;watch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// Setup adds the reconcilers of both kinds to the manager; they run on the
// leader only.
func Setup(mgr ctrl.Manager, opts Options) error {
	if opts.RequeueAfter == 0 {
		opts.RequeueAfter = 30 * time.Second
	}
	if opts.MaxConcurrentReconciles == 0 {
		opts.MaxConcurrentReconciles = 2
	}
	rollouts := NewRollouts(opts.MaxConcurrentRollouts)
	recorder := mgr.GetEventRecorder("keepalive-operator")
	kap := &reconciler[*v1alpha1.KeepalivePolicy]{
		client: mgr.GetClient(), live: mgr.GetAPIReader(), events: recorder, opts: opts, rollouts: rollouts,
		kind: keepalive.KindKeepalivePolicy, namespaced: true,
		newObj:  func() *v1alpha1.KeepalivePolicy { return &v1alpha1.KeepalivePolicy{} },
		newList: func() client.ObjectList { return &v1alpha1.KeepalivePolicyList{} },
		compile: keepalive.NewPolicy,
	}
	ckap := &reconciler[*v1alpha1.ClusterKeepalivePolicy]{
		client: mgr.GetClient(), live: mgr.GetAPIReader(), events: recorder, opts: opts, rollouts: rollouts,
		kind:    keepalive.KindClusterKeepalivePolicy,
		newObj:  func() *v1alpha1.ClusterKeepalivePolicy { return &v1alpha1.ClusterKeepalivePolicy{} },
		newList: func() client.ObjectList { return &v1alpha1.ClusterKeepalivePolicyList{} },
		compile: keepalive.NewClusterPolicy,
	}
	return errors.Join(kap.setup(mgr), ckap.setup(mgr))
}

func (r *reconciler[T]) ref(namespace, name string) keepalive.Ref {
	if !r.namespaced {
		namespace = ""
	}
	return keepalive.Ref{Kind: r.kind, Namespace: namespace, Name: name}
}

// Reconcile brings one policy's status, and the templates it patches, up to
// date.
func (r *reconciler[T]) Reconcile(ctx context.Context, req ctrl.Request) (result ctrl.Result, retErr error) {
	defer func() { reconciles.WithLabelValues(r.kind, resultLabel(result, retErr)).Inc() }()
	obj := r.newObj()
	if err := r.client.Get(ctx, req.NamespacedName, obj); err != nil {
		if apierrors.IsNotFound(err) {
			forgetPods(r.ref(req.Namespace, req.Name).String())
			r.rollouts.setWaiting(r.kind, req.NamespacedName, false)
			return ctrl.Result{}, nil
		}
		return ctrl.Result{}, fmt.Errorf("get %s: %w", r.kind, err)
	}
	if !obj.GetDeletionTimestamp().IsZero() {
		return r.reconcileDelete(ctx, obj)
	}
	if controllerutil.AddFinalizer(obj, Finalizer) {
		if err := r.client.Update(ctx, obj); err != nil {
			return ctrl.Result{}, fmt.Errorf("add finalizer: %w", err)
		}
	}

	before := obj.DeepCopyObject().(T)
	defer func() {
		if retErr == nil {
			obj.PolicyStatus().ObservedGeneration = obj.GetGeneration()
		}
		if err := r.client.Status().Patch(ctx, obj, client.MergeFrom(before)); err != nil && !apierrors.IsNotFound(err) {
			retErr = errors.Join(retErr, fmt.Errorf("write status: %w", err))
		}
	}()
	return r.reconcileNormal(ctx, obj)
}

func resultLabel(res ctrl.Result, err error) string {
	switch {
	case err != nil:
		return "error"
	case res.RequeueAfter > 0:
		return "requeue"
	}
	return "success"
}

// setCondition sets a condition for the current generation.
func setCondition(obj policyObject, c metav1.Condition) {
	c.ObservedGeneration = obj.GetGeneration()
	meta.SetStatusCondition(&obj.PolicyStatus().Conditions, c)
}

func (r *reconciler[T]) reconcileNormal(ctx context.Context, obj T) (ctrl.Result, error) {
	spec, status := obj.PolicySpec(), obj.PolicyStatus()
	pol, err := r.compile(obj)
	if err != nil {
		status.Keepalive, status.GoverningTimeout = nil, nil
		setCondition(obj, invalidCondition(err))
		r.events.Eventf(obj, nil, corev1.EventTypeWarning, ReasonInvalidSpec, "Compute", "%s", err.Error())
		return ctrl.Result{}, nil // nothing to retry until the spec changes
	}

	v := pol.Result.Values
	values := &v1alpha1.KeepaliveValues{TimeSeconds: v.TimeSeconds, IntervalSeconds: v.IntervalSeconds, Probes: v.Probes, DetectionSeconds: v.DetectionSeconds()}
	if status.Keepalive != nil && *status.Keepalive != *values {
		r.events.Eventf(obj, nil, corev1.EventTypeNormal, "ValuesChanged", "Compute",
			"keepalive values changed from %d/%d/%d to %d/%d/%d", status.Keepalive.TimeSeconds, status.Keepalive.IntervalSeconds,
			status.Keepalive.Probes, v.TimeSeconds, v.IntervalSeconds, v.Probes)
	}
	status.Keepalive = values
	status.GoverningTimeout = &v1alpha1.GoverningTimeout{Name: pol.Result.Governing.Name, Seconds: pol.Result.Governing.Seconds}
	setCondition(obj, l7Condition(pol.Result))

	s, err := r.survey(ctx, &pol)
	if err != nil {
		return ctrl.Result{}, err
	}
	var w rollout
	if spec.Mode != v1alpha1.ModeAudit && spec.Rollout != v1alpha1.RolloutNone {
		w, err = r.rollOut(ctx, obj, &pol, s.staleWorkloads)
	} else {
		w, err = r.restoreAll(ctx, obj, pol.Ref)
	}
	if err != nil {
		return ctrl.Result{}, err
	}

	status.Pods = &s.counts
	status.Workloads = &v1alpha1.WorkloadCounts{Patched: w.patched, Pending: w.pending}
	recordPods(pol.Ref.String(), s.counts.Matched, s.counts.Compliant, s.counts.Stale, s.counts.Skipped)
	blocked := podsBlockedCondition(s)
	if old := meta.FindStatusCondition(status.Conditions, ConditionPodsBlocked); blocked.Status == metav1.ConditionTrue &&
		(old == nil || old.Message != blocked.Message) {
		r.events.Eventf(obj, nil, corev1.EventTypeWarning, ReasonBlocked, "Survey", "%s", blocked.Message)
	}
	setCondition(obj, blocked)

	ready := readyCondition(spec, s, w)
	if old := meta.FindStatusCondition(status.Conditions, ConditionReady); old != nil && old.Reason == ReasonRolloutInProgress && ready.Reason != ReasonRolloutInProgress {
		r.events.Eventf(obj, nil, corev1.EventTypeNormal, "RolloutCompleted", "Rollout", "%s", ready.Message)
	}
	setCondition(obj, ready)
	if w.pending > 0 || w.rolling > 0 {
		return ctrl.Result{RequeueAfter: r.opts.RequeueAfter}, nil
	}
	return ctrl.Result{}, nil
}

func (r *reconciler[T]) reconcileDelete(ctx context.Context, obj T) (ctrl.Result, error) {
	if !controllerutil.ContainsFinalizer(obj, Finalizer) {
		return ctrl.Result{}, nil
	}
	w, err := r.restoreAll(ctx, obj, r.ref(obj.GetNamespace(), obj.GetName()))
	if err != nil {
		return ctrl.Result{}, err
	}
	if w.pending > 0 {
		return ctrl.Result{RequeueAfter: r.opts.RequeueAfter}, nil
	}
	controllerutil.RemoveFinalizer(obj, Finalizer)
	if err := r.client.Update(ctx, obj); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(fmt.Errorf("remove finalizer: %w", err))
	}
	return ctrl.Result{}, nil
}

// survey classifies the running pods the policy selects and finds the
// workloads of the stale ones.
func (r *reconciler[T]) survey(ctx context.Context, pol *keepalive.Policy) (survey, error) {
	s := survey{
		blocked: map[keepalive.SkipReason]int32{}, blockedNamespaces: map[string]bool{},
		blockedNodes: map[string]bool{}, staleWorkloads: map[workloadKey]bool{},
	}
	var pods corev1.PodList
	var opts []client.ListOption
	if r.namespaced {
		opts = append(opts, client.InNamespace(pol.Ref.Namespace))
	}
	if err := r.client.List(ctx, &pods, opts...); err != nil {
		return s, fmt.Errorf("list pods: %w", err)
	}
	cluster := r.opts.Cluster()
	namespaces := map[string]keepalive.Namespace{}
	nodes := map[string]*keepalive.NodeInfo{}
	for i := range pods.Items {
		pod := &pods.Items[i]
		if pod.DeletionTimestamp != nil || pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
			continue
		}
		ns, ok := namespaces[pod.Namespace]
		if !ok {
			var obj corev1.Namespace
			if err := r.client.Get(ctx, client.ObjectKey{Name: pod.Namespace}, &obj); err != nil {
				return s, client.IgnoreNotFound(fmt.Errorf("get namespace %s: %w", pod.Namespace, err))
			}
			ns = keepalive.Namespace{Name: obj.Name, Labels: obj.Labels}
			namespaces[pod.Namespace] = ns
		}
		if !pol.Applies(keepalive.Target{Namespace: pod.Namespace, Labels: pod.Labels, NamespaceLabels: ns.Labels}) {
			continue
		}
		s.counts.Matched++
		node, err := r.nodeInfo(ctx, nodes, pod.Spec.NodeName)
		if err != nil {
			return s, err
		}
		state, reason := keepalive.Classify(podView(pod), ns, cluster, pol, node)
		switch state {
		case keepalive.PodCompliant:
			s.counts.Compliant++
		case keepalive.PodSkipped:
			s.counts.Skipped++
			if reason.Blocks() {
				s.blocked[reason]++
			}
			switch reason {
			case keepalive.SkipPodSecurityVersion:
				s.blockedNamespaces[pod.Namespace] = true
			case keepalive.SkipNodeKubelet, keepalive.SkipNodeKernel:
				s.blockedNodes[pod.Spec.NodeName] = true
			}
		case keepalive.PodStale:
			s.counts.Stale++
			key, patchable, err := owner(ctx, r.client, pod)
			if err != nil {
				return s, err
			}
			if patchable {
				s.staleWorkloads[key] = true
			} else {
				s.unpatchable++
			}
		}
	}
	return s, nil
}

func podView(pod *corev1.Pod) keepalive.PodView {
	v := keepalive.PodView{Labels: pod.Labels, Annotations: pod.Annotations, HostNetwork: pod.Spec.HostNetwork}
	if pod.Spec.OS != nil {
		v.OS = string(pod.Spec.OS.Name)
	}
	if pod.Spec.SecurityContext != nil {
		v.Sysctls = pod.Spec.SecurityContext.Sysctls
	}
	return v
}

// nodeInfo returns the kubelet and kernel of a node, nil for an unscheduled
// pod or a node that is gone.
func (r *reconciler[T]) nodeInfo(ctx context.Context, memo map[string]*keepalive.NodeInfo, name string) (*keepalive.NodeInfo, error) {
	if name == "" {
		return nil, nil
	}
	if info, ok := memo[name]; ok {
		return info, nil
	}
	var node corev1.Node
	if err := r.client.Get(ctx, client.ObjectKey{Name: name}, &node); err != nil {
		if apierrors.IsNotFound(err) {
			memo[name] = nil
			return nil, nil
		}
		return nil, fmt.Errorf("get node %s: %w", name, err)
	}
	info := &keepalive.NodeInfo{KubeletVersion: node.Status.NodeInfo.KubeletVersion, KernelVersion: node.Status.NodeInfo.KernelVersion}
	memo[name] = info
	return info, nil
}

// managedBy lists the workloads in the policy's scope whose template record
// names the policy.
func (r *reconciler[T]) managedBy(ctx context.Context, ref keepalive.Ref) (map[workloadKey]bool, error) {
	out := map[workloadKey]bool{}
	for _, kind := range patchableKinds {
		list := newWorkloadList(kind)
		var opts []client.ListOption
		if r.namespaced {
			opts = append(opts, client.InNamespace(ref.Namespace))
		}
		if err := r.client.List(ctx, list, opts...); err != nil {
			return nil, fmt.Errorf("list %ss: %w", kind, err)
		}
		if err := meta.EachListItem(list, func(o runtime.Object) error {
			obj := o.(client.Object)
			// The Deployment controller copies a Deployment's annotations,
			// the record included, to its ReplicaSets: only the Deployment
			// is ours to change.
			if kind == kindReplicaSet && metav1.GetControllerOf(obj) != nil {
				return nil
			}
			if m, ok, _ := keepalive.ParseManaged(obj.GetAnnotations()); ok && m.Policy == ref.String() {
				out[workloadKey{Kind: kind, Namespace: obj.GetNamespace(), Name: obj.GetName()}] = true
			}
			return nil
		}); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// rollOut patches the templates of the workloads with stale pods, and
// re-patches those the policy patched before when its values changed, within
// the rollout limit.
func (r *reconciler[T]) rollOut(ctx context.Context, obj T, pol *keepalive.Policy, stale map[workloadKey]bool) (w rollout, err error) {
	defer r.noteWaiting(obj, &w)
	if err := r.freeFinished(ctx); err != nil {
		return w, err
	}
	managed, err := r.managedBy(ctx, pol.Ref)
	if err != nil {
		return w, err
	}
	// The workloads patched before come first: those done rolling free
	// their slots for the others.
	keys := sortedKeys(managed)
	for _, k := range sortedKeys(stale) {
		if !managed[k] {
			keys = append(keys, k)
		}
	}
	for _, key := range keys {
		res, err := r.changeTemplate(ctx, obj, key, func(sysctls []corev1.Sysctl, prev *keepalive.Managed) ([]corev1.Sysctl, *keepalive.Managed) {
			if prev != nil && prev.Policy != pol.Ref.String() && !r.policyExists(ctx, prev.Policy) {
				prev.Policy = pol.Ref.String() // the owner is gone: its record is ours to undo
			}
			next, m, _ := keepalive.PatchTemplate(sysctls, prev, pol.Ref.String(), pol.Result.Values)
			if len(m.Set) == 0 {
				return next, nil
			}
			return next, &m
		})
		if err != nil {
			return w, err
		}
		switch {
		case res.pending:
			w.pending++
		default:
			w.patched++
			if res.rolling {
				w.rolling++
			}
		}
	}
	return w, nil
}

// restoreAll restores the templates the policy patched, within the rollout
// limit.
func (r *reconciler[T]) restoreAll(ctx context.Context, obj T, ref keepalive.Ref) (w rollout, err error) {
	defer r.noteWaiting(obj, &w)
	if err := r.freeFinished(ctx); err != nil {
		return w, err
	}
	targets, err := r.managedBy(ctx, ref)
	if err != nil {
		return w, err
	}
	for _, key := range sortedKeys(targets) {
		res, err := r.changeTemplate(ctx, obj, key, func(sysctls []corev1.Sysctl, prev *keepalive.Managed) ([]corev1.Sysctl, *keepalive.Managed) {
			if prev == nil || prev.Policy != ref.String() {
				return sysctls, prev // someone else's now
			}
			return keepalive.RestoreTemplate(sysctls, *prev), nil
		})
		if err != nil {
			return w, err
		}
		if res.pending {
			w.pending++
		}
	}
	return w, nil
}

// freeFinished frees the slots of workloads done rolling or gone. A
// restored workload has no record left to lead a pass back to it, so every
// pass looks at all the slots.
func (r *reconciler[T]) freeFinished(ctx context.Context) error {
	for _, key := range r.rollouts.held() {
		obj := newWorkload(key.Kind)
		err := r.client.Get(ctx, client.ObjectKey{Namespace: key.Namespace, Name: key.Name}, obj)
		switch {
		case apierrors.IsNotFound(err):
			r.rollouts.release(key)
		case err != nil:
			return fmt.Errorf("get %s: %w", key, err)
		default:
			r.rollouts.observe(key, obj)
		}
	}
	return nil
}

// noteWaiting records whether the policy waits for a slot.
func (r *reconciler[T]) noteWaiting(obj T, w *rollout) {
	r.rollouts.setWaiting(r.kind, client.ObjectKeyFromObject(obj), w.pending > 0)
}

func (r *reconciler[T]) policyExists(ctx context.Context, ref string) bool {
	parsed, err := keepalive.ParseRef(ref)
	if err != nil {
		return false
	}
	var obj client.Object = &v1alpha1.KeepalivePolicy{}
	if parsed.Kind == keepalive.KindClusterKeepalivePolicy {
		obj = &v1alpha1.ClusterKeepalivePolicy{}
	}
	err = r.client.Get(ctx, client.ObjectKey{Namespace: parsed.Namespace, Name: parsed.Name}, obj)
	return !apierrors.IsNotFound(err)
}

func sortedKeys(m map[workloadKey]bool) []workloadKey {
	keys := make([]workloadKey, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b workloadKey) int { return strings.Compare(a.String(), b.String()) })
	return keys
}

// changeResult says what became of a template change.
type changeResult struct {
	pending bool // waiting for a rollout slot
	rolling bool // the workload is rolling out
}

// changeTemplate reads the workload live, computes its template's new
// sysctls and record with change, and writes them when they differ, within
// the rollout limit. A conflict with another writer reads it again.
func (r *reconciler[T]) changeTemplate(ctx context.Context, pol T, key workloadKey,
	change func(sysctls []corev1.Sysctl, prev *keepalive.Managed) ([]corev1.Sysctl, *keepalive.Managed)) (changeResult, error) {
	log := logf.FromContext(ctx).WithValues("workload", key.String())
	var res changeResult
	err := retry.RetryOnConflict(retry.DefaultBackoff, func() error {
		res = changeResult{}
		obj := newWorkload(key.Kind)
		if err := r.live.Get(ctx, client.ObjectKey{Namespace: key.Namespace, Name: key.Name}, obj); err != nil {
			return err
		}
		tmpl := podTemplate(obj)
		var prev *keepalive.Managed
		if m, ok, err := keepalive.ParseManaged(obj.GetAnnotations()); err != nil {
			log.Info("ignoring a broken record", "error", err.Error())
		} else if ok {
			prev = &m
		}
		old := templateSysctls(tmpl)
		next, record := change(slices.Clone(old), prev)
		annotation := ""
		if record != nil {
			annotation = record.String()
		}
		sysctlsChanged := !slices.Equal(old, next)
		if !sysctlsChanged && obj.GetAnnotations()[keepalive.AnnotationManagedSysctls] == annotation {
			if record != nil {
				res.rolling = r.rollouts.observe(key, obj)
			}
			return nil
		}
		needsSlot := sysctlsChanged && podTemplateRolls(key.Kind)
		if needsSlot && !r.rollouts.acquire(key) {
			res.pending = true
			return nil
		}
		if tmpl.Spec.SecurityContext == nil {
			tmpl.Spec.SecurityContext = &corev1.PodSecurityContext{}
		}
		tmpl.Spec.SecurityContext.Sysctls = next
		annotations := obj.GetAnnotations()
		if annotation == "" {
			delete(annotations, keepalive.AnnotationManagedSysctls)
		} else {
			if annotations == nil {
				annotations = map[string]string{}
			}
			annotations[keepalive.AnnotationManagedSysctls] = annotation
		}
		obj.SetAnnotations(annotations)
		if err := r.client.Update(ctx, obj); err != nil {
			if needsSlot {
				r.rollouts.release(key)
			}
			return err
		}
		if needsSlot {
			r.rollouts.started(key, obj.GetGeneration())
			res.rolling = true
		}
		if sysctlsChanged {
			note := fmt.Sprintf("pod template sysctls of %s set to %s", key, keepalive.Describe(next))
			r.events.Eventf(pol, obj, corev1.EventTypeNormal, "TemplatePatched", "Rollout", "%s", note)
			r.events.Eventf(obj, pol, corev1.EventTypeNormal, "TemplatePatched", "Rollout", "%s by %s", note, r.ref(pol.GetNamespace(), pol.GetName()))
			log.Info("pod template patched", "sysctls", keepalive.Describe(next))
		}
		return nil
	})
	if apierrors.IsNotFound(err) {
		r.rollouts.release(key)
		return changeResult{}, nil // gone meanwhile
	}
	if err != nil {
		return res, fmt.Errorf("update %s: %w", key, err)
	}
	return res, nil
}

// podTemplateRolls says whether a template change replaces running pods.
func podTemplateRolls(kind string) bool {
	return kind == kindDeployment || kind == kindStatefulSet || kind == kindDaemonSet
}
