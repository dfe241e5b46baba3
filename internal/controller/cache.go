package controller

import (
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/keepalive-operator/keepalive-operator/internal/keepalive"
)

// StripForCache keeps of an object what the operator reads from its cache,
// so that caching every pod, node and workload of a cluster costs little.
// Workloads are read live before any write, so their cached copies need no
// more than their record, ownership and rollout status.
func StripForCache(obj any) (any, error) {
	if m, ok := obj.(metav1.Object); ok {
		m.SetManagedFields(nil)
	}
	switch o := obj.(type) {
	case *corev1.Pod:
		return stripPod(o), nil
	case *corev1.Node:
		return &corev1.Node{
			TypeMeta:   o.TypeMeta,
			ObjectMeta: metav1.ObjectMeta{Name: o.Name, UID: o.UID, ResourceVersion: o.ResourceVersion, Labels: o.Labels},
			Status: corev1.NodeStatus{NodeInfo: corev1.NodeSystemInfo{
				KubeletVersion: o.Status.NodeInfo.KubeletVersion, KernelVersion: o.Status.NodeInfo.KernelVersion,
			}},
		}, nil
	case *corev1.Namespace:
		o.Annotations = nil
	case metav1.Object:
		if t := podTemplate(obj); t != nil {
			stripWorkload(o, t)
		}
	}
	return obj, nil
}

func stripPod(p *corev1.Pod) *corev1.Pod {
	out := &corev1.Pod{
		TypeMeta: p.TypeMeta,
		ObjectMeta: metav1.ObjectMeta{
			Name: p.Name, Namespace: p.Namespace, UID: p.UID, ResourceVersion: p.ResourceVersion,
			Labels: p.Labels, OwnerReferences: p.OwnerReferences, DeletionTimestamp: p.DeletionTimestamp,
		},
		Spec:   corev1.PodSpec{NodeName: p.Spec.NodeName, HostNetwork: p.Spec.HostNetwork, OS: p.Spec.OS},
		Status: corev1.PodStatus{Phase: p.Status.Phase},
	}
	if p.Spec.SecurityContext != nil && len(p.Spec.SecurityContext.Sysctls) > 0 {
		out.Spec.SecurityContext = &corev1.PodSecurityContext{Sysctls: p.Spec.SecurityContext.Sysctls}
	}
	return out
}

// stripWorkload keeps the operator's record of the annotations and the
// sysctls of the template.
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
	*t = corev1.PodTemplateSpec{Spec: corev1.PodSpec{SecurityContext: sc}}
}
