package controller

import (
	"fmt"
	"maps"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"unique"
	"weak"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	toolscache "k8s.io/client-go/tools/cache"

	"github.com/keepalive-operator/keepalive-operator/internal/keepalive"
)

// cachedPod is what the operator keeps of a pod: a cluster may run tens of
// thousands, and a whole corev1.Pod, even stripped, is over a kilobyte, its
// ObjectMeta alone 240 bytes. The strings most pods share (namespaces,
// nodes, owners, label keys and values) are interned, and pods with the same
// labels or keepalive sysctls, such as the replicas of one ReplicaSet, share
// one map or list. It is a client.Object for the informer and its event
// handlers, but a read-only one: see noMeta.
type cachedPod struct {
	noMeta
	Name, Namespace string
	// Owner is the kind and name of the pod's controller; empty for none.
	OwnerKind, OwnerName string
	NodeName             string
	OS                   string
	HostNetwork          bool
	// Finished is true once the pod succeeded or failed.
	Finished          bool
	DeletionTimestamp *metav1.Time

	labels *shared[map[string]string]
	// sysctls holds the pod's keepalive sysctls, the only ones read.
	sysctls *shared[[]corev1.Sysctl]
}

// Labels are the pod's labels, shared with the pods that have the same.
// Never change them.
func (p *cachedPod) Labels() map[string]string {
	if p.labels == nil {
		return nil
	}
	return p.labels.v
}

// Keepalive are the pod's keepalive sysctls, in their order. Never change
// them.
func (p *cachedPod) Keepalive() []corev1.Sysctl {
	if p.sysctls == nil {
		return nil
	}
	return p.sysctls.v
}

func (p *cachedPod) GetName() string                  { return p.Name }
func (p *cachedPod) GetNamespace() string             { return p.Namespace }
func (p *cachedPod) GetLabels() map[string]string     { return p.Labels() }
func (p *cachedPod) GetObjectKind() schema.ObjectKind { return schema.EmptyObjectKind }

func (p *cachedPod) GetDeletionTimestamp() *metav1.Time { return p.DeletionTimestamp }

func (p *cachedPod) DeepCopyObject() kruntime.Object {
	out := *p // the shared labels and sysctls are never changed
	return &out
}

// toCachedPod is the cache's transform for pods.
func toCachedPod(obj any) (any, error) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	out := &cachedPod{
		Name: pod.Name, Namespace: intern(pod.Namespace), NodeName: intern(pod.Spec.NodeName),
		HostNetwork:       pod.Spec.HostNetwork,
		DeletionTimestamp: pod.DeletionTimestamp,
		Finished:          pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed,
	}
	if ref := metav1.GetControllerOf(pod); ref != nil {
		out.OwnerKind, out.OwnerName = intern(ref.Kind), intern(ref.Name)
	}
	if pod.Spec.OS != nil {
		out.OS = intern(string(pod.Spec.OS.Name))
	}
	if len(pod.Labels) > 0 {
		out.labels = sharedLabels(pod.Labels)
	}
	var sysctls []corev1.Sysctl
	if sc := pod.Spec.SecurityContext; sc != nil {
		for _, s := range sc.Sysctls {
			if s.Name == keepalive.SysctlTime || s.Name == keepalive.SysctlInterval || s.Name == keepalive.SysctlProbes {
				sysctls = append(sysctls, s)
			}
		}
	}
	if len(sysctls) > 0 {
		out.sysctls = sharedSysctls(sysctls)
	}
	return out, nil
}

func intern(s string) string { return unique.Make(s).Value() }

// shared is a value, a labels map or a list of sysctls, that the pods
// which have the same one hold together. It is never changed once made.
type shared[T any] struct{ v T }

// sharing hands out the one shared value for each identity, while a cached
// pod holds it.
type sharing[T any] struct {
	mu sync.Mutex
	m  map[string]weak.Pointer[shared[T]]
}

// get returns the shared value of id, made by build when no pod holds it.
func (s *sharing[T]) get(id string, build func() T) *shared[T] {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = map[string]weak.Pointer[shared[T]]{}
	}
	if v := s.m[id].Value(); v != nil {
		return v
	}
	v := &shared[T]{v: build()}
	s.m[id] = weak.Make(v)
	runtime.AddCleanup(v, s.forget, id)
	return v
}

// forget drops an identity no pod holds, unless another value took its
// place meanwhile.
func (s *sharing[T]) forget(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m[id].Value() == nil {
		delete(s.m, id)
	}
}

var (
	labelMaps    sharing[map[string]string]
	sysctlSlices sharing[[]corev1.Sysctl]
)

// sharedLabels returns the one shared map with these labels.
func sharedLabels(l map[string]string) *shared[map[string]string] {
	keys := slices.Sorted(maps.Keys(l))
	var b strings.Builder
	for _, k := range keys {
		b.WriteString(k)
		b.WriteByte(0)
		b.WriteString(l[k])
		b.WriteByte(0)
	}
	return labelMaps.get(b.String(), func() map[string]string {
		m := make(map[string]string, len(l))
		for k, v := range l {
			m[intern(k)] = intern(v)
		}
		return m
	})
}

// sharedSysctls returns the one shared list with these sysctls, in order.
// The values are quoted: unlike label values, they may hold any byte.
func sharedSysctls(l []corev1.Sysctl) *shared[[]corev1.Sysctl] {
	var id []byte
	for _, s := range l {
		id = strconv.AppendQuote(append(id, s.Name...), s.Value)
	}
	return sysctlSlices.get(string(id), func() []corev1.Sysctl {
		out := make([]corev1.Sysctl, len(l))
		for i, s := range l {
			out[i] = corev1.Sysctl{Name: intern(s.Name), Value: intern(s.Value)}
		}
		return out
	})
}

// noMeta makes the cached pod a metav1.Object without an ObjectMeta: what
// the cache does not keep reads as empty, and setting anything does nothing,
// since cached objects are never changed. cachedPod answers for what it
// keeps.
type noMeta struct{}

func (noMeta) GetNamespace() string                          { return "" }
func (noMeta) SetNamespace(string)                           {}
func (noMeta) GetName() string                               { return "" }
func (noMeta) SetName(string)                                {}
func (noMeta) GetGenerateName() string                       { return "" }
func (noMeta) SetGenerateName(string)                        {}
func (noMeta) GetUID() types.UID                             { return "" }
func (noMeta) SetUID(types.UID)                              {}
func (noMeta) GetResourceVersion() string                    { return "" }
func (noMeta) SetResourceVersion(string)                     {}
func (noMeta) GetGeneration() int64                          { return 0 }
func (noMeta) SetGeneration(int64)                           {}
func (noMeta) GetSelfLink() string                           { return "" }
func (noMeta) SetSelfLink(string)                            {}
func (noMeta) GetCreationTimestamp() metav1.Time             { return metav1.Time{} }
func (noMeta) SetCreationTimestamp(metav1.Time)              {}
func (noMeta) GetDeletionTimestamp() *metav1.Time            { return nil }
func (noMeta) SetDeletionTimestamp(*metav1.Time)             {}
func (noMeta) GetDeletionGracePeriodSeconds() *int64         { return nil }
func (noMeta) SetDeletionGracePeriodSeconds(*int64)          {}
func (noMeta) GetLabels() map[string]string                  { return nil }
func (noMeta) SetLabels(map[string]string)                   {}
func (noMeta) GetAnnotations() map[string]string             { return nil }
func (noMeta) SetAnnotations(map[string]string)              {}
func (noMeta) GetFinalizers() []string                       { return nil }
func (noMeta) SetFinalizers([]string)                        {}
func (noMeta) GetOwnerReferences() []metav1.OwnerReference   { return nil }
func (noMeta) SetOwnerReferences([]metav1.OwnerReference)    {}
func (noMeta) GetManagedFields() []metav1.ManagedFieldsEntry { return nil }
func (noMeta) SetManagedFields([]metav1.ManagedFieldsEntry)  {}

// podStore reads the cached pods from the pod informer's store: the
// manager's client cannot, since the store holds cachedPods.
type podStore struct{ indexer toolscache.Indexer }

func (s podStore) get(namespace, name string) (*cachedPod, bool) {
	obj, ok, err := s.indexer.GetByKey(namespace + "/" + name)
	if err != nil || !ok {
		return nil, false
	}
	pod, ok := obj.(*cachedPod)
	return pod, ok
}

// inNamespace lists the pods of a namespace, or of every one for "".
func (s podStore) inNamespace(namespace string) ([]*cachedPod, error) {
	var objs []any
	if namespace == "" {
		objs = s.indexer.List()
	} else {
		var err error
		if objs, err = s.indexer.ByIndex(toolscache.NamespaceIndex, namespace); err != nil {
			return nil, fmt.Errorf("list pods of %s: %w", namespace, err)
		}
	}
	out := make([]*cachedPod, 0, len(objs))
	for _, o := range objs {
		if pod, ok := o.(*cachedPod); ok {
			out = append(out, pod)
		}
	}
	return out, nil
}

// asCachedPod reads an informer event's object.
func asCachedPod(o any) (*cachedPod, bool) {
	if tomb, ok := o.(toolscache.DeletedFinalStateUnknown); ok {
		o = tomb.Obj
	}
	pod, ok := o.(*cachedPod)
	return pod, ok
}
