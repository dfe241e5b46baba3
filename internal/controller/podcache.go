package controller

import (
	"fmt"
	"maps"
	"runtime"
	"slices"
	"strconv"
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
// ObjectMeta alone 240 bytes. What the replicas of a ReplicaSet have in
// common (namespace, owner, labels, keepalive sysctls) is one shared
// podShape, and node names are interned, so that a pod costs 48 bytes
// besides its name. It is a client.Object for the informer and its event
// handlers, but a read-only one: see noMeta.
type cachedPod struct {
	noMeta
	Name              string
	node              unique.Handle[string]
	DeletionTimestamp *metav1.Time
	shape             *podShape
	// Finished is true once the pod succeeded or failed.
	Finished bool
}

// podShape is what the decisions read of a pod besides its name, node and
// phase. It is shared by the pods that have the same and never changed.
type podShape struct {
	namespace string
	// ownerKind and ownerName name the pod's controller; empty for none.
	ownerKind, ownerName string
	os                   string
	hostNetwork          bool
	labels               map[string]string
	// keepalive holds the pod's keepalive sysctls, the only ones read.
	keepalive []corev1.Sysctl
}

var noShape podShape

func (p *cachedPod) shaped() *podShape {
	if p.shape == nil {
		return &noShape
	}
	return p.shape
}

// Labels are the pod's labels, shared with the pods that have the same.
// Never change them.
func (p *cachedPod) Labels() map[string]string { return p.shaped().labels }

// Keepalive are the pod's keepalive sysctls, in their order. Never change
// them.
func (p *cachedPod) Keepalive() []corev1.Sysctl { return p.shaped().keepalive }

// Owner is the kind and name of the pod's controller, empty for none.
func (p *cachedPod) Owner() (kind, name string) { return p.shaped().ownerKind, p.shaped().ownerName }

func (p *cachedPod) OS() string        { return p.shaped().os }
func (p *cachedPod) HostNetwork() bool { return p.shaped().hostNetwork }

// Node is the name of the pod's node, "" while it is not scheduled.
func (p *cachedPod) Node() string { return valueOf(p.node) }

func (p *cachedPod) GetName() string                  { return p.Name }
func (p *cachedPod) GetNamespace() string             { return p.shaped().namespace }
func (p *cachedPod) GetLabels() map[string]string     { return p.Labels() }
func (p *cachedPod) GetObjectKind() schema.ObjectKind { return schema.EmptyObjectKind }

func (p *cachedPod) GetDeletionTimestamp() *metav1.Time { return p.DeletionTimestamp }

func (p *cachedPod) DeepCopyObject() kruntime.Object {
	out := *p // the shape is never changed
	return &out
}

// toCachedPod is the cache's transform for pods.
func toCachedPod(obj any) (any, error) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	shape := podShape{namespace: pod.Namespace, hostNetwork: pod.Spec.HostNetwork, labels: pod.Labels}
	if ref := metav1.GetControllerOf(pod); ref != nil {
		shape.ownerKind, shape.ownerName = ref.Kind, ref.Name
	}
	if pod.Spec.OS != nil {
		shape.os = string(pod.Spec.OS.Name)
	}
	if sc := pod.Spec.SecurityContext; sc != nil {
		shape.keepalive = keepalive.SysctlsOf(sc.Sysctls)
	}
	return &cachedPod{
		Name: pod.Name, node: unique.Make(pod.Spec.NodeName), shape: sharedShape(shape),
		DeletionTimestamp: pod.DeletionTimestamp,
		Finished:          pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed,
	}, nil
}

func intern(s string) string { return unique.Make(s).Value() }

// valueOf is the string of a handle, "" for the zero handle.
func valueOf(h unique.Handle[string]) string {
	if h == (unique.Handle[string]{}) {
		return ""
	}
	return h.Value()
}

// shapes holds the one shape of each identity while a cached pod holds it.
var shapes struct {
	mu sync.Mutex
	m  map[string]weak.Pointer[podShape]
}

// forgetShape drops an identity no pod holds, unless another shape took its
// place meanwhile.
func forgetShape(id string) {
	shapes.mu.Lock()
	defer shapes.mu.Unlock()
	if shapes.m[id].Value() == nil {
		delete(shapes.m, id)
	}
}

// sharedShape returns the one shape equal to p, made with its strings
// interned when no pod holds it. Its identity quotes every string: sysctl
// values, unlike label values, may hold any byte.
func sharedShape(p podShape) *podShape {
	id := strconv.AppendQuote(nil, p.namespace)
	id = strconv.AppendQuote(id, p.ownerKind)
	id = strconv.AppendQuote(id, p.ownerName)
	id = strconv.AppendQuote(id, p.os)
	id = strconv.AppendBool(id, p.hostNetwork)
	keys := slices.Sorted(maps.Keys(p.labels))
	for _, k := range keys {
		id = strconv.AppendQuote(strconv.AppendQuote(id, k), p.labels[k])
	}
	id = append(id, '|')
	for _, c := range p.keepalive {
		id = strconv.AppendQuote(strconv.AppendQuote(id, c.Name), c.Value)
	}
	shapes.mu.Lock()
	defer shapes.mu.Unlock()
	if shapes.m == nil {
		shapes.m = map[string]weak.Pointer[podShape]{}
	}
	if v := shapes.m[string(id)].Value(); v != nil {
		return v
	}
	out := &podShape{namespace: intern(p.namespace), ownerKind: intern(p.ownerKind), ownerName: intern(p.ownerName),
		os: intern(p.os), hostNetwork: p.hostNetwork}
	if len(p.labels) > 0 {
		out.labels = make(map[string]string, len(p.labels))
		for _, k := range keys {
			out.labels[intern(k)] = intern(p.labels[k])
		}
	}
	if len(p.keepalive) > 0 {
		out.keepalive = make([]corev1.Sysctl, len(p.keepalive))
		for i, c := range p.keepalive {
			out.keepalive[i] = corev1.Sysctl{Name: intern(c.Name), Value: intern(c.Value)}
		}
	}
	shapes.m[string(id)] = weak.Make(out)
	runtime.AddCleanup(out, forgetShape, string(id))
	return out
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
