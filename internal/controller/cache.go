package controller

import (
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/keepalive-operator/keepalive-operator/internal/keepalive"
)

// CacheOptions are the manager's cache options for the operator: pods kept
// as cachedPods, everything else stripped.
func CacheOptions() cache.Options {
	return cache.Options{
		DefaultTransform: StripForCache,
		ByObject:         map[client.Object]cache.ByObject{&corev1.Pod{}: {Transform: toCachedPod}},
	}
}

// StripForCache keeps of an object what the operator reads from its cache,
// so that caching every pod, node and workload of a cluster costs little.
// Workloads keep their spec and status but of their template only what the
// decisions read (labels, hostNetwork, os, sysctls, nodeName, nodeSelector,
// required node affinity, tolerations); their annotations only
// the operator's record. A Job, or a ReplicaSet with a controller, is read
// only to find its controller: the cache keeps its name and owners. Writes
// are patches of those fields alone.
func StripForCache(obj any) (any, error) {
	if m, ok := obj.(metav1.Object); ok {
		m.SetManagedFields(nil)
	}
	switch o := obj.(type) {
	case *corev1.Node:
		return &corev1.Node{
			TypeMeta:   o.TypeMeta,
			ObjectMeta: metav1.ObjectMeta{Name: o.Name, UID: o.UID, ResourceVersion: o.ResourceVersion, Labels: o.Labels},
			Spec:       corev1.NodeSpec{Unschedulable: o.Spec.Unschedulable, Taints: o.Spec.Taints},
			Status: corev1.NodeStatus{NodeInfo: corev1.NodeSystemInfo{
				KubeletVersion: o.Status.NodeInfo.KubeletVersion, KernelVersion: o.Status.NodeInfo.KernelVersion,
			}},
		}, nil
	case *corev1.Namespace:
		o.Annotations = nil
	case *appsv1.ReplicaSet:
		if metav1.GetControllerOf(o) != nil {
			return &appsv1.ReplicaSet{TypeMeta: o.TypeMeta, ObjectMeta: ownersOnly(o)}, nil
		}
		stripWorkload(o, &o.Spec.Template)
	case *batchv1.Job:
		return &batchv1.Job{TypeMeta: o.TypeMeta, ObjectMeta: ownersOnly(o)}, nil
	case metav1.Object:
		if t := keepalive.PodTemplate(obj); t != nil {
			stripWorkload(o, t)
		}
	}
	return obj, nil
}

// ownersOnly is the metadata of an object read only for its owners.
func ownersOnly(m metav1.Object) metav1.ObjectMeta {
	return metav1.ObjectMeta{Name: m.GetName(), Namespace: m.GetNamespace(), UID: m.GetUID(),
		ResourceVersion: m.GetResourceVersion(), OwnerReferences: m.GetOwnerReferences()}
}

// stripWorkload keeps the operator's record of the annotations, and of the
// template what the decisions read.
func stripWorkload(m metav1.Object, t *corev1.PodTemplateSpec) {
	record, ok := m.GetAnnotations()[keepalive.AnnotationManagedSysctls]
	m.SetAnnotations(nil)
	if ok {
		m.SetAnnotations(map[string]string{keepalive.AnnotationManagedSysctls: record})
	}
	var sc *corev1.PodSecurityContext
	if t.Spec.SecurityContext != nil && len(t.Spec.SecurityContext.Sysctls) > 0 {
		sc = &corev1.PodSecurityContext{Sysctls: t.Spec.SecurityContext.Sysctls}
	}
	var affinity *corev1.Affinity
	if a := t.Spec.Affinity; a != nil && a.NodeAffinity != nil && a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution != nil {
		affinity = &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{
			RequiredDuringSchedulingIgnoredDuringExecution: a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution}}
	}
	*t = corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{Labels: t.Labels},
		Spec: corev1.PodSpec{SecurityContext: sc, HostNetwork: t.Spec.HostNetwork, OS: t.Spec.OS,
			NodeName: t.Spec.NodeName, NodeSelector: t.Spec.NodeSelector, Affinity: affinity, Tolerations: t.Spec.Tolerations},
	}
}
