// Package controller brings workload pod templates to the keepalive values
// of the policies in scope, and reports on KeepalivePolicies and
// ClusterKeepalivePolicies: their values, the pods they select and the
// workloads that carry their values.
package controller

import (
	"context"
	"errors"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	"github.com/keepalive-operator/keepalive-operator/api/v1alpha1"
	"github.com/keepalive-operator/keepalive-operator/internal/keepalive"
)

// Finalizer holds a policy until no template carries its values.
const Finalizer = "keepalive.io/restore"

// Options configure the reconcilers.
type Options struct {
	// Cluster is what the decisions need of the cluster.
	Cluster func() keepalive.Cluster
	// OnOldNodes registers a function to call after each change of
	// Cluster().OldNodes; nil when they never change.
	OnOldNodes func(func())
	// MaxConcurrentRollouts is how many workloads may replace their pods
	// because of the operator at once, across the cluster; 0 is no limit.
	MaxConcurrentRollouts int
	// ProgressDeadline is how long a StatefulSet or DaemonSet may hold a
	// rollout slot without progress. Zero means 10 minutes.
	ProgressDeadline time.Duration
	// StatusDelay gathers the pod events of this long into one status pass
	// of a policy. Zero means a second.
	StatusDelay time.Duration
	// PolicyDelay gathers the policy changes of this long before the
	// templates they concern are written, so that policies applied together
	// roll a workload once. Zero means a second.
	PolicyDelay time.Duration
	// MaxConcurrentReconciles of the workload reconciler. Zero means 4.
	MaxConcurrentReconciles int
}

// policyObject is either kind of policy.
type policyObject interface {
	client.Object
	PolicySpec() *v1alpha1.KeepalivePolicySpec
	PolicyStatus() *v1alpha1.KeepalivePolicyStatus
}

// policyReconciler reports on one kind of policy, and holds a deleted policy
// until no template carries its values.
type policyReconciler[T policyObject] struct {
	client   client.Client // reads from the cache
	events   events.EventRecorder
	cluster  func() keepalive.Cluster
	policies *policySet
	slots    *slots
	failures *failures
	reverts  *reverts
	tally    *tally
	audits   *audits
	indexes  *indexes

	kind       string
	namespaced bool
	newObj     func() T
}

// +kubebuilder:rbac:groups=keepalive.io,resources=keepalivepolicies;clusterkeepalivepolicies,verbs=get;list;watch;update;patch
// +kubebuilder:rbac:groups=keepalive.io,resources=keepalivepolicies/status;clusterkeepalivepolicies/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=keepalive.io,resources=keepalivepolicies/finalizers;clusterkeepalivepolicies/finalizers,verbs=update
// +kubebuilder:rbac:groups=keepalive.io,resources=keepalivenodereports,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=pods;namespaces;nodes,verbs=get;list;watch
// +kubebuilder:rbac:groups=apps,resources=deployments;statefulsets;daemonsets;replicasets,verbs=get;list;watch;update;patch
// +kubebuilder:rbac:groups=batch,resources=cronjobs,verbs=get;list;watch;update;patch
// +kubebuilder:rbac:groups=batch,resources=jobs,verbs=get;list;watch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

func (r *policyReconciler[T]) ref(namespace, name string) keepalive.Ref {
	if !r.namespaced {
		namespace = ""
	}
	return keepalive.Ref{Kind: r.kind, Namespace: namespace, Name: name}
}

// Reconcile brings one policy's status up to date, or releases a deleted
// policy.
func (r *policyReconciler[T]) Reconcile(ctx context.Context, req ctrl.Request) (result ctrl.Result, retErr error) {
	defer func() { reconciles.WithLabelValues(r.kind, resultLabel(result, retErr)).Inc() }()
	obj := r.newObj()
	ref := r.ref(req.Namespace, req.Name)
	if err := r.client.Get(ctx, req.NamespacedName, obj); err != nil {
		if apierrors.IsNotFound(err) {
			forgetPolicy(ref.String())
			r.policies.forget(ref)
			return ctrl.Result{}, nil
		}
		return ctrl.Result{}, fmt.Errorf("get %s: %w", r.kind, err)
	}
	if err := r.indexes.ensure(ctx); err != nil {
		return ctrl.Result{}, err
	}
	if !obj.GetDeletionTimestamp().IsZero() {
		forgetPolicy(ref.String())
		return ctrl.Result{}, r.reconcileDelete(ctx, obj)
	}
	if !controllerutil.ContainsFinalizer(obj, Finalizer) {
		before := obj.DeepCopyObject().(T)
		controllerutil.AddFinalizer(obj, Finalizer)
		if err := r.client.Patch(ctx, obj, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{})); err != nil {
			return ctrl.Result{}, fmt.Errorf("add finalizer: %w", err)
		}
	}

	before := obj.DeepCopyObject().(T)
	defer func() {
		if retErr == nil && result.RequeueAfter == 0 {
			obj.PolicyStatus().ObservedGeneration = obj.GetGeneration()
		}
		if equality.Semantic.DeepEqual(before.PolicyStatus(), obj.PolicyStatus()) {
			return // nothing changed: nothing sent
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

func (r *policyReconciler[T]) reconcileNormal(ctx context.Context, obj T) (ctrl.Result, error) {
	spec, status := obj.PolicySpec(), obj.PolicyStatus()
	pol, err := r.policies.compile(obj)
	if err != nil {
		status.Keepalive, status.GoverningTimeout = nil, nil
		c := invalidCondition(err)
		if old := meta.FindStatusCondition(status.Conditions, ConditionReady); old == nil || old.Reason != c.Reason || old.Message != c.Message {
			r.events.Eventf(obj, nil, corev1.EventTypeWarning, ReasonInvalidSpec, "Compute", "%s", err.Error())
		}
		setCondition(obj, c)
		// The counts of the last spec that computed are not this spec's.
		ref := r.ref(obj.GetNamespace(), obj.GetName()).String()
		forgetCounts(ref)
		recordReady(ref, c)
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

	s, ok := r.tally.get(pol.Ref)
	if !ok {
		// The counts are not complete yet: never a short count.
		return ctrl.Result{RequeueAfter: time.Second}, nil
	}
	w, err := r.workloads(ctx, pol.Ref)
	if err != nil {
		return ctrl.Result{}, err
	}
	status.Pods = &s.counts
	status.Workloads = &w.counts
	recordPods(pol.Ref.String(), s.counts.Matched, s.counts.Compliant, s.counts.Stale, s.counts.Skipped)
	recordBlocked(pol.Ref.String(), s.blocked)

	blocked := podsBlockedCondition(s, keepalive.DescribeOldNodes(r.cluster()))
	if old := meta.FindStatusCondition(status.Conditions, ConditionPodsBlocked); blocked.Status == metav1.ConditionTrue &&
		(old == nil || old.Status != metav1.ConditionTrue) {
		r.events.Eventf(obj, nil, corev1.EventTypeWarning, ReasonBlocked, "Survey", "%s", blocked.Message)
	}
	setCondition(obj, blocked)

	r.reportConnections(obj, pol, s)

	ready := readyCondition(spec, s, w)
	if old := meta.FindStatusCondition(status.Conditions, ConditionReady); old != nil && old.Reason == ReasonRolloutInProgress && ready.Reason != ReasonRolloutInProgress {
		r.events.Eventf(obj, nil, corev1.EventTypeNormal, "RolloutCompleted", "Rollout", "%s", ready.Message)
	}
	setCondition(obj, ready)
	recordReady(pol.Ref.String(), ready)
	return ctrl.Result{}, nil
}

// reportConnections sets status.connections and KeepaliveNotEnabled from
// the audit's node reports, and removes both where no agent reports.
func (r *policyReconciler[T]) reportConnections(obj T, pol keepalive.Policy, s podTally) {
	status := obj.PolicyStatus()
	a, state := r.audits.get(pol.Ref.String(), s.nodes)
	switch state {
	case auditUnsynced:
		return // keep what the last pass said
	case auditAbsent:
		status.Connections = nil
		meta.RemoveStatusCondition(&status.Conditions, ConditionKeepaliveNotEnabled)
		forgetConnections(pol.Ref.String())
		return
	}
	status.Connections = &a.status
	recordConnections(pol.Ref.String(), a.status)
	c := keepaliveNotEnabledCondition(a, pol.Result.Values.TimeSeconds)
	if old := meta.FindStatusCondition(status.Conditions, ConditionKeepaliveNotEnabled); c.Status == metav1.ConditionTrue &&
		(old == nil || old.Status != metav1.ConditionTrue) {
		r.events.Eventf(obj, nil, corev1.EventTypeWarning, ReasonConnectionsLack, "Audit", "%s", c.Message)
	}
	setCondition(obj, c)
}

// reconcileDelete removes the finalizer once no template carries the
// policy's values: the workload reconciler moved each to the other
// policies' values or the user's own as soon as the deletion started.
func (r *policyReconciler[T]) reconcileDelete(ctx context.Context, obj T) error {
	if !controllerutil.ContainsFinalizer(obj, Finalizer) {
		return nil
	}
	ref := r.ref(obj.GetNamespace(), obj.GetName())
	n := 0
	if err := eachRecorded(ctx, r.client, ref.String(), func(client.Object) { n++ }); err != nil {
		return err
	}
	if n > 0 {
		return nil // a workload event wakes the policy when its template moves on
	}
	before := obj.DeepCopyObject().(T)
	controllerutil.RemoveFinalizer(obj, Finalizer)
	if err := r.client.Patch(ctx, obj, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{})); err != nil {
		return client.IgnoreNotFound(fmt.Errorf("remove finalizer: %w", err))
	}
	return nil
}

// workloads counts the workloads whose templates carry the policy's values
// or wait to.
func (r *policyReconciler[T]) workloads(ctx context.Context, ref keepalive.Ref) (workloadTally, error) {
	var w workloadTally
	err := eachRecorded(ctx, r.client, ref.String(), func(o client.Object) {
		w.counts.Patched++
		if !rollsPods(o) && rolling(o) {
			w.counts.WaitingForOwner++
		}
	})
	w.counts.Rolling, w.counts.Pending = r.slots.count(ref.String())
	w.counts.Failed, w.failedExample = r.failures.count(ref.String())
	w.counts.Reverted = r.reverts.count(ref.String())
	return w, err
}

// eachRecorded calls fn with every workload whose record names the policy.
func eachRecorded(ctx context.Context, c client.Reader, ref string, fn func(client.Object)) error {
	for _, kind := range patchableKinds {
		list := newWorkloadList(kind)
		if err := c.List(ctx, list, client.MatchingFields{indexRecord: ref}, client.UnsafeDisableDeepCopy); err != nil {
			return fmt.Errorf("list %ss: %w", kind, err)
		}
		if err := eachObject(list, fn); err != nil {
			return err
		}
	}
	return nil
}

// running reports whether a pod counts: not finished, not going away.
func running(pod *cachedPod) bool {
	return pod.DeletionTimestamp == nil && !pod.Finished
}

func podView(pod *cachedPod) keepalive.PodView {
	return keepalive.PodView{Labels: pod.Labels(), HostNetwork: pod.HostNetwork(), OS: pod.OS(), Sysctls: pod.Keepalive(),
		Placement: keepalive.Placement{NodeName: pod.Node()}}
}

// nodeInfo returns the kubelet and kernel of a node, nil for an unscheduled
// pod or a node that is gone.
func nodeInfo(ctx context.Context, c client.Reader, name string) (*keepalive.NodeInfo, error) {
	if name == "" {
		return nil, nil
	}
	var node corev1.Node
	// Read only, once per pod event: no copy of the cached object.
	switch err := c.Get(ctx, client.ObjectKey{Name: name}, &node, client.UnsafeDisableDeepCopy); {
	case apierrors.IsNotFound(err):
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("get node %s: %w", name, err)
	}
	info := keepalive.NodeOf(&node).Info
	return &info, nil
}

// namespaceOf returns a cached namespace as the decisions read it; false
// while it is not cached.
func namespaceOf(ctx context.Context, c client.Reader, name string) (keepalive.Namespace, bool) {
	var ns corev1.Namespace
	// Read only, once per pod event: no copy of the cached object.
	if err := c.Get(ctx, client.ObjectKey{Name: name}, &ns, client.UnsafeDisableDeepCopy); err != nil {
		return keepalive.Namespace{}, false
	}
	return keepalive.Namespace{Name: ns.Name, Labels: ns.Labels}, true
}
