// Package testobj builds API objects for tests.
package testobj

import (
	"encoding/json"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/keepalive-operator/keepalive-operator/api/v1alpha1"
)

// SpecWrapper builds a KeepalivePolicySpec.
type SpecWrapper struct{ v1alpha1.KeepalivePolicySpec }

// Spec starts an empty spec.
func Spec() *SpecWrapper { return &SpecWrapper{} }

// Preset adds a hop with a preset's default timeout.
func (w *SpecWrapper) Preset(p v1alpha1.Preset) *SpecWrapper {
	w.IdleTimeouts = append(w.IdleTimeouts, v1alpha1.Hop{Preset: p})
	return w
}

// PresetSeconds adds a hop with a preset and an overriding timeout.
func (w *SpecWrapper) PresetSeconds(p v1alpha1.Preset, seconds int32) *SpecWrapper {
	w.IdleTimeouts = append(w.IdleTimeouts, v1alpha1.Hop{Preset: p, Seconds: &seconds})
	return w
}

// Custom adds a hop without preset; name may be empty.
func (w *SpecWrapper) Custom(name string, seconds int32) *SpecWrapper {
	w.IdleTimeouts = append(w.IdleTimeouts, v1alpha1.Hop{Name: name, Seconds: &seconds})
	return w
}

// Hop adds a hop as given.
func (w *SpecWrapper) Hop(h v1alpha1.Hop) *SpecWrapper {
	w.IdleTimeouts = append(w.IdleTimeouts, h)
	return w
}

// TimePercent sets timePercent.
func (w *SpecWrapper) TimePercent(p int32) *SpecWrapper {
	w.KeepalivePolicySpec.TimePercent = p
	return w
}

// Interval sets intervalSeconds.
func (w *SpecWrapper) Interval(s int32) *SpecWrapper { w.IntervalSeconds = &s; return w }

// Probes sets probes.
func (w *SpecWrapper) Probes(n int32) *SpecWrapper { w.KeepalivePolicySpec.Probes = n; return w }

// Mode sets mode.
func (w *SpecWrapper) Mode(m v1alpha1.Mode) *SpecWrapper { w.KeepalivePolicySpec.Mode = m; return w }

// Rollout sets rollout.
func (w *SpecWrapper) Rollout(r v1alpha1.Rollout) *SpecWrapper {
	w.KeepalivePolicySpec.Rollout = r
	return w
}

// PodLabels sets podSelector to match these labels.
func (w *SpecWrapper) PodLabels(l map[string]string) *SpecWrapper {
	w.PodSelector = matchLabels(l)
	return w
}

// matchLabels is a selector of the objects that carry all these labels.
func matchLabels(l map[string]string) *v1alpha1.LabelSelector {
	s := &v1alpha1.LabelSelector{MatchLabels: make(map[string]v1alpha1.LabelValue, len(l))}
	for k, v := range l {
		s.MatchLabels[k] = v1alpha1.LabelValue(v)
	}
	return s
}

// Obj returns the spec.
func (w *SpecWrapper) Obj() v1alpha1.KeepalivePolicySpec { return *w.DeepCopy() }

// Policy returns a KeepalivePolicy with this spec.
func (w *SpecWrapper) Policy(namespace, name string) *v1alpha1.KeepalivePolicy {
	return &v1alpha1.KeepalivePolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name},
		Spec:       w.Obj(),
	}
}

// ClusterPolicy returns a ClusterKeepalivePolicy with this spec and a
// namespaceSelector matching nsLabels (nil: every namespace).
func (w *SpecWrapper) ClusterPolicy(name string, nsLabels map[string]string) *v1alpha1.ClusterKeepalivePolicy {
	p := &v1alpha1.ClusterKeepalivePolicy{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:       v1alpha1.ClusterKeepalivePolicySpec{KeepalivePolicySpec: w.Obj()},
	}
	if nsLabels != nil {
		p.Spec.NamespaceSelector = matchLabels(nsLabels)
	}
	return p
}

// PodWrapper builds a Pod.
type PodWrapper struct{ corev1.Pod }

// MakePod starts a pod with one container.
func MakePod(namespace, name string) *PodWrapper {
	return &PodWrapper{corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "app:1"}}},
	}}
}

// Labels sets labels.
func (w *PodWrapper) Labels(l map[string]string) *PodWrapper { w.ObjectMeta.Labels = l; return w }

// Sysctl adds a sysctl to the pod's securityContext.
func (w *PodWrapper) Sysctl(name, value string) *PodWrapper {
	if w.Spec.SecurityContext == nil {
		w.Spec.SecurityContext = &corev1.PodSecurityContext{}
	}
	w.Spec.SecurityContext.Sysctls = append(w.Spec.SecurityContext.Sysctls, corev1.Sysctl{Name: name, Value: value})
	return w
}

// HostNetwork puts the pod in the node's network namespace.
func (w *PodWrapper) HostNetwork() *PodWrapper { w.Spec.HostNetwork = true; return w }

// OS sets spec.os.name.
func (w *PodWrapper) OS(name corev1.OSName) *PodWrapper {
	w.Spec.OS = &corev1.PodOS{Name: name}
	return w
}

// Obj returns the pod.
func (w *PodWrapper) Obj() *corev1.Pod { return w.DeepCopy() }

// Owner makes obj the pod's controller.
func (w *PodWrapper) Owner(obj metav1.Object, apiVersion, kind string) *PodWrapper {
	w.OwnerReferences = []metav1.OwnerReference{*metav1.NewControllerRef(obj, schema.FromAPIVersionAndKind(apiVersion, kind))}
	return w
}

// Node puts the pod on a node.
func (w *PodWrapper) Node(name string) *PodWrapper { w.Spec.NodeName = name; return w }

// ReviewUID is the request UID of every Review, which an answer must echo.
const ReviewUID = "0df28fbd-5f5f-4d5f-8f6c-9a1b2c3d4e5f"

// Review returns the AdmissionReview the API server sends for an operation
// on a pod (podJSON) in namespace.
func Review(operation admissionv1.Operation, namespace string, podJSON []byte) ([]byte, error) {
	return json.Marshal(admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{
			UID:       ReviewUID,
			Kind:      metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
			Resource:  metav1.GroupVersionResource{Version: "v1", Resource: "pods"},
			Namespace: namespace,
			Operation: operation,
			Object:    runtime.RawExtension{Raw: podJSON},
		},
	})
}
