package controller

import (
	"context"
	"encoding/json"
	"fmt"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/keepalive-operator/keepalive-operator/internal/keepalive"
)

// workloadKey names a workload.
type workloadKey struct {
	Kind      string
	Namespace string
	Name      string
}

func (k workloadKey) String() string { return k.Kind + "/" + k.Namespace + "/" + k.Name }

func (k workloadKey) objectKey() client.ObjectKey {
	return client.ObjectKey{Namespace: k.Namespace, Name: k.Name}
}

func keyOf(kind string, obj client.Object) workloadKey {
	return workloadKey{Kind: kind, Namespace: obj.GetNamespace(), Name: obj.GetName()}
}

// kindOf names the workload kind of an object, "" for anything else.
func kindOf(obj client.Object) string {
	switch obj.(type) {
	case *appsv1.Deployment:
		return kindDeployment
	case *appsv1.StatefulSet:
		return kindStatefulSet
	case *appsv1.DaemonSet:
		return kindDaemonSet
	case *appsv1.ReplicaSet:
		return kindReplicaSet
	case *batchv1.CronJob:
		return kindCronJob
	}
	return ""
}

func newJobList() client.ObjectList { return &batchv1.JobList{} }

// kindOfOwned names a ReplicaSet or a Job in the owner index.
func kindOfOwned(obj client.Object) string {
	if _, ok := obj.(*batchv1.Job); ok {
		return kindJob
	}
	return kindReplicaSet
}

// ours reports whether the operator patches the object's template: a
// ReplicaSet that a Deployment controls carries a copy of the Deployment's
// annotations, record included, but only the Deployment is ours to change.
func ours(obj client.Object) bool {
	_, isRS := obj.(*appsv1.ReplicaSet)
	return !isRS || metav1.GetControllerOf(obj) == nil
}

// The workload kinds whose pod templates the operator patches.
const (
	kindDeployment  = "Deployment"
	kindStatefulSet = "StatefulSet"
	kindDaemonSet   = "DaemonSet"
	kindReplicaSet  = "ReplicaSet"
	kindCronJob     = "CronJob"
	kindJob         = "Job"
)

// patchableKinds are listed when looking for the templates a policy patched.
var patchableKinds = []string{kindDeployment, kindStatefulSet, kindDaemonSet, kindReplicaSet, kindCronJob}

func newWorkload(kind string) client.Object {
	switch kind {
	case kindDeployment:
		return &appsv1.Deployment{}
	case kindStatefulSet:
		return &appsv1.StatefulSet{}
	case kindDaemonSet:
		return &appsv1.DaemonSet{}
	case kindReplicaSet:
		return &appsv1.ReplicaSet{}
	case kindCronJob:
		return &batchv1.CronJob{}
	}
	return nil
}

func newWorkloadList(kind string) client.ObjectList {
	switch kind {
	case kindDeployment:
		return &appsv1.DeploymentList{}
	case kindStatefulSet:
		return &appsv1.StatefulSetList{}
	case kindDaemonSet:
		return &appsv1.DaemonSetList{}
	case kindReplicaSet:
		return &appsv1.ReplicaSetList{}
	case kindCronJob:
		return &batchv1.CronJobList{}
	}
	return nil
}

// templateSysctls returns the sysctls of a pod template.
func templateSysctls(t *corev1.PodTemplateSpec) []corev1.Sysctl {
	if t.Spec.SecurityContext == nil {
		return nil
	}
	return t.Spec.SecurityContext.Sysctls
}

// rolling reports whether a template change is still rolling out: the
// controller has not seen the new generation, or not every replica runs it.
// A Deployment past its progress deadline is stuck, not rolling: it must not
// hold a slot forever. A ReplicaSet or a CronJob does not replace its pods on
// a template change: new pods get the template, and nothing rolls.
func rolling(obj client.Object) bool {
	switch o := obj.(type) {
	case *appsv1.Deployment:
		want := ptr.Deref(o.Spec.Replicas, 1)
		s := o.Status
		for _, c := range s.Conditions {
			if c.Type == appsv1.DeploymentProgressing && c.Status == corev1.ConditionFalse && c.Reason == "ProgressDeadlineExceeded" {
				return false
			}
		}
		return s.ObservedGeneration < o.Generation || s.UpdatedReplicas < want || s.Replicas > s.UpdatedReplicas || s.AvailableReplicas < s.UpdatedReplicas
	case *appsv1.StatefulSet:
		want := ptr.Deref(o.Spec.Replicas, 1)
		s := o.Status
		return s.ObservedGeneration < o.Generation || s.UpdatedReplicas < want || (s.UpdateRevision != "" && s.CurrentRevision != s.UpdateRevision)
	case *appsv1.DaemonSet:
		s := o.Status
		return s.ObservedGeneration < o.Generation || s.UpdatedNumberScheduled < s.DesiredNumberScheduled || s.NumberAvailable < s.DesiredNumberScheduled
	}
	return false
}

// rollsPods reports whether a template change of the workload replaces
// running pods by itself, which is what a rollout slot is for. A paused
// Deployment, an OnDelete strategy, a StatefulSet partition at or above its
// replicas and a workload with no pods wait for their owner instead; a
// ReplicaSet or a CronJob only gives new pods the new template.
func rollsPods(obj client.Object) bool {
	switch o := obj.(type) {
	case *appsv1.Deployment:
		return !o.Spec.Paused && ptr.Deref(o.Spec.Replicas, 1) > 0
	case *appsv1.StatefulSet:
		s := o.Spec.UpdateStrategy
		if s.Type == appsv1.OnDeleteStatefulSetStrategyType {
			return false
		}
		replicas := ptr.Deref(o.Spec.Replicas, 1)
		partition := int32(0)
		if s.RollingUpdate != nil {
			partition = ptr.Deref(s.RollingUpdate.Partition, 0)
		}
		return replicas > 0 && partition < replicas
	case *appsv1.DaemonSet:
		return o.Spec.UpdateStrategy.Type != appsv1.OnDeleteDaemonSetStrategyType
	}
	return false
}

// updatedReplicas is how many pods run the workload's current template, the
// measure of a rollout's progress.
func updatedReplicas(obj client.Object) int32 {
	switch o := obj.(type) {
	case *appsv1.Deployment:
		return o.Status.UpdatedReplicas
	case *appsv1.StatefulSet:
		return o.Status.UpdatedReplicas
	case *appsv1.DaemonSet:
		return o.Status.UpdatedNumberScheduled
	}
	return 0
}

// templatePatch is a JSON merge patch that sets the workload's template
// sysctls and record, and nothing else, on the given resourceVersion: other
// writers' fields, and fields this binary does not know, stay as they are.
// Empty sysctls and a nil record remove them.
func templatePatch(kind, resourceVersion string, d keepalive.Template) client.Patch {
	meta := map[string]any{"resourceVersion": resourceVersion}
	if d.RecordChanged {
		var record any
		if d.Record != nil {
			record = d.Record.String()
		}
		meta["annotations"] = map[string]any{keepalive.AnnotationManagedSysctls: record}
	}
	body := map[string]any{"metadata": meta}
	if d.SysctlsChanged {
		var sysctls any
		if len(d.Sysctls) > 0 {
			sysctls = d.Sysctls
		}
		spec := map[string]any{"template": map[string]any{"spec": map[string]any{"securityContext": map[string]any{"sysctls": sysctls}}}}
		if kind == kindCronJob {
			spec = map[string]any{"jobTemplate": map[string]any{"spec": spec}}
		}
		body["spec"] = spec
	}
	raw, _ := json.Marshal(body) // maps of strings and sysctls: always marshals
	return client.RawPatch(types.MergePatchType, raw)
}

// owner finds the workload whose template makes the pod: through a
// ReplicaSet to its Deployment, through a Job to its CronJob, or directly a
// StatefulSet, DaemonSet or bare ReplicaSet. patchable is false for pods of a
// Job without CronJob, bare pods and pods of other controllers; key then
// names what owns them, if anything.
func owner(ctx context.Context, c client.Reader, pod *cachedPod) (key workloadKey, patchable bool, err error) {
	kind, name := pod.Owner()
	if kind == "" {
		return workloadKey{}, false, nil
	}
	key = workloadKey{Kind: kind, Namespace: pod.GetNamespace(), Name: name}
	var parent client.Object
	switch kind {
	case kindReplicaSet:
		parent = &appsv1.ReplicaSet{}
	case kindJob:
		parent = &batchv1.Job{}
	case kindStatefulSet, kindDaemonSet:
		return key, true, nil
	default:
		return key, false, nil
	}
	// Read only, once per pod event: no copy of the cached object.
	if err := c.Get(ctx, client.ObjectKey{Namespace: pod.GetNamespace(), Name: name}, parent, client.UnsafeDisableDeepCopy); err != nil {
		// A ReplicaSet not cached yet is a Deployment's or a bare one:
		// patchable either way.
		return key, kind == kindReplicaSet && apierrors.IsNotFound(err), client.IgnoreNotFound(fmt.Errorf("get %s: %w", key, err))
	}
	up := metav1.GetControllerOf(parent)
	switch {
	case up != nil && up.Kind == kindDeployment && up.APIVersion == "apps/v1":
		return workloadKey{Kind: kindDeployment, Namespace: pod.GetNamespace(), Name: up.Name}, true, nil
	case up != nil && up.Kind == kindCronJob && up.APIVersion == "batch/v1":
		return workloadKey{Kind: kindCronJob, Namespace: pod.GetNamespace(), Name: up.Name}, true, nil
	case up == nil && kind == kindReplicaSet:
		return key, true, nil
	}
	return key, false, nil
}
