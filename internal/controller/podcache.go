package controller

import (
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"
	"unique"
	"weak"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kruntime "k8s.io/apimachinery/pkg/runtime"
	toolscache "k8s.io/client-go/tools/cache"

	"github.com/keepalive-operator/keepalive-operator/internal/keepalive"
)

// cachedPod is what the operator keeps of a pod: a cluster may run tens of
// thousands, and a whole corev1.Pod, even stripped, is over a kilobyte. The
// strings most pods share (namespaces, nodes, owners, label keys and values)
// are interned, and pods with the same labels, such as the replicas of one
// ReplicaSet, share one map.
type cachedPod struct {
	metav1.TypeMeta
	// ObjectMeta has the name, namespace, labels and deletion timestamp.
	metav1.ObjectMeta
	// Owner is the kind and name of the pod's controller; empty for none.
	OwnerKind, OwnerName string
	NodeName             string
	Phase                corev1.PodPhase
	HostNetwork          bool
	OS                   string
	// Keepalive holds the pod's keepalive sysctls, the only ones read.
	Keepalive []corev1.Sysctl

	labels *labelSet // keeps the shared labels alive
}

func (p *cachedPod) DeepCopyObject() kruntime.Object {
	out := *p // the shared labels and sysctls are never changed
	out.ObjectMeta = metav1.ObjectMeta{Name: p.Name, Namespace: p.Namespace, Labels: p.Labels, DeletionTimestamp: p.DeletionTimestamp}
	return &out
}

// toCachedPod is the cache's transform for pods.
func toCachedPod(obj any) (any, error) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	out := &cachedPod{
		ObjectMeta: metav1.ObjectMeta{
			Name: pod.Name, Namespace: intern(pod.Namespace), DeletionTimestamp: pod.DeletionTimestamp,
		},
		NodeName: intern(pod.Spec.NodeName), Phase: corev1.PodPhase(intern(string(pod.Status.Phase))),
		HostNetwork: pod.Spec.HostNetwork,
	}
	out.labels = sharedLabels(pod.Labels)
	if out.labels != nil {
		out.Labels = out.labels.m
	}
	if ref := metav1.GetControllerOf(pod); ref != nil {
		out.OwnerKind, out.OwnerName = intern(ref.Kind), intern(ref.Name)
	}
	if pod.Spec.OS != nil {
		out.OS = intern(string(pod.Spec.OS.Name))
	}
	if sc := pod.Spec.SecurityContext; sc != nil {
		for _, s := range sc.Sysctls {
			if s.Name == keepalive.SysctlTime || s.Name == keepalive.SysctlInterval || s.Name == keepalive.SysctlProbes {
				out.Keepalive = append(out.Keepalive, corev1.Sysctl{Name: intern(s.Name), Value: intern(s.Value)})
			}
		}
	}
	return out, nil
}

func intern(s string) string { return unique.Make(s).Value() }

// labelSet is a labels map that pods with the same labels share. It is
// never changed once made.
type labelSet struct{ m map[string]string }

var labelSets struct {
	sync.Mutex
	m map[string]weak.Pointer[labelSet]
}

// sharedLabels returns the one labelSet with these labels, made when no
// cached pod holds it any more.
func sharedLabels(l map[string]string) *labelSet {
	if len(l) == 0 {
		return nil
	}
	keys := make([]string, 0, len(l))
	for k := range l {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b strings.Builder
	for _, k := range keys {
		b.WriteString(k)
		b.WriteByte(0)
		b.WriteString(l[k])
		b.WriteByte(0)
	}
	id := b.String()

	labelSets.Lock()
	defer labelSets.Unlock()
	if labelSets.m == nil {
		labelSets.m = map[string]weak.Pointer[labelSet]{}
	}
	if ls := labelSets.m[id].Value(); ls != nil {
		return ls
	}
	ls := &labelSet{m: make(map[string]string, len(l))}
	for k, v := range l {
		ls.m[intern(k)] = intern(v)
	}
	labelSets.m[id] = weak.Make(ls)
	runtime.AddCleanup(ls, forgetLabels, id)
	return ls
}

// forgetLabels drops a label set no pod holds, unless another took its
// place meanwhile.
func forgetLabels(id string) {
	labelSets.Lock()
	defer labelSets.Unlock()
	if labelSets.m[id].Value() == nil {
		delete(labelSets.m, id)
	}
}

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
