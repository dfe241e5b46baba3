package controller

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/keepalive-operator/keepalive-operator/internal/keepalive"
)

// FieldOwner is the field manager of the operator's writes, which tells its
// own changes from other writers' in managedFields.
const FieldOwner = "keepalive-operator"

// ReasonTemplateReverted is the event of a workload left alone because
// another writer keeps undoing the operator's change.
const ReasonTemplateReverted = "TemplateReverted"

// Reverts within revertWindow, revertLimit of them, make the operator
// leave a workload alone.
const (
	revertLimit  = 3
	revertWindow = time.Hour
)

// reverts remembers the operator's last template write of each workload,
// so that it sees another writer (a GitOps tool's self-heal) undo it: the
// workload's spec moved past the generation the write produced, and the
// operator is about to write the very same sysctls again. After revertLimit
// such reverts within revertWindow the operator stops writing, so that the
// two writers do not roll the workload in turn forever. It is the leader's
// memory: a new leader starts counting anew.
type reverts struct {
	mu sync.Mutex
	m  map[workloadKey]*revertTrack
}

type revertTrack struct {
	// What the operator wrote last, for which policy at which generation,
	// and the workload's generation its write produced.
	uid              types.UID
	generation       int64
	sysctls          []corev1.Sysctl
	policy           string
	policyGeneration int64
	// times are the reverts seen within the window; leftAlone is set at
	// the limit, with the writer named in the events.
	times     []time.Time
	leftAlone bool
}

func newReverts() *reverts { return &reverts{m: map[workloadKey]*revertTrack{}} }

// wrote records a template write of the operator.
func (r *reverts) wrote(k workloadKey, obj client.Object, sysctls []corev1.Sysctl, policy string, policyGeneration int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	t := r.m[k]
	if t == nil || t.uid != obj.GetUID() || t.policy != policy || t.policyGeneration != policyGeneration {
		t = &revertTrack{}
		r.m[k] = t
	}
	t.uid, t.generation, t.sysctls = obj.GetUID(), obj.GetGeneration(), sysctls
	t.policy, t.policyGeneration = policy, policyGeneration
}

// observe is called before the operator writes sysctls to a workload. It
// counts a revert when another writer undid the last write, and reports
// whether the workload is left alone; newly says it just reached the limit.
func (r *reverts) observe(k workloadKey, obj client.Object, sysctls []corev1.Sysctl, policy string, policyGeneration int64, now time.Time) (leftAlone, newly bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	t := r.m[k]
	if t == nil || t.uid != obj.GetUID() || t.policy != policy || t.policyGeneration != policyGeneration {
		// Nothing written yet, a new object, or a changed policy: start over.
		delete(r.m, k)
		return false, false
	}
	if t.leftAlone {
		return true, false
	}
	if obj.GetGeneration() <= t.generation || !slices.Equal(t.sysctls, sysctls) {
		return false, false // a cache behind the write, or a new decision
	}
	t.times = append(slices.DeleteFunc(t.times, func(at time.Time) bool { return now.Sub(at) > revertWindow }), now)
	t.generation = obj.GetGeneration() // one revert per change of the spec
	if len(t.times) < revertLimit {
		return false, false
	}
	t.leftAlone = true
	return true, true
}

// settled is a workload whose template is as it should be, with sysctls.
// The count clears when someone else brought it there: a workload left
// alone, or a template that differs from the operator's write. A template
// that is what the operator wrote keeps it, whatever else changed in the
// spec (a scale, a new image). It returns the policy of a workload that was
// left alone.
func (r *reverts) settled(k workloadKey, obj client.Object, sysctls []corev1.Sysctl) (policy string, wasLeftAlone bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	t := r.m[k]
	if t == nil || !t.leftAlone && t.uid == obj.GetUID() && slices.Equal(sysctls, t.sysctls) {
		return "", false
	}
	delete(r.m, k)
	return t.policy, t.leftAlone
}

// forget drops a workload that is gone.
func (r *reverts) forget(k workloadKey) (policy string, wasLeftAlone bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	t := r.m[k]
	delete(r.m, k)
	if t == nil {
		return "", false
	}
	return t.policy, t.leftAlone
}

// count returns how many workloads of a policy are left alone.
func (r *reverts) count(policy string) int32 {
	r.mu.Lock()
	defer r.mu.Unlock()
	var n int32
	for _, t := range r.m {
		if t.leftAlone && t.policy == policy {
			n++
		}
	}
	return n
}

// leaveAlone tells, once, that the workload is left alone: a Warning event
// on it and on its policy naming the writer and the ways out.
func (r *workloadReconciler) leaveAlone(ctx context.Context, key workloadKey, obj client.Object, d keepalive.Template, policy string) {
	writer := "another writer"
	live := newWorkload(key.Kind)
	if err := r.live.Get(ctx, key.objectKey(), live); err == nil {
		if w := revertedBy(live.GetManagedFields(), key.Kind); w != "" {
			writer = w
		}
	}
	note := fmt.Sprintf("%s: %s reverted the keepalive sysctls the operator set in its pod template %d times within %s; "+
		"the operator leaves it alone, or both would roll it in turn. Put %s into the manifest in Git, set rollout: None on %s "+
		"(new pods still get the values at admission), or have the tool ignore /spec/template/spec/securityContext/sysctls "+
		"(Argo CD ignoreDifferences with RespectIgnoreDifferences=true)",
		key, writer, revertLimit, revertWindow, keepalive.Describe(d.Sysctls), policy)
	logf.FromContext(ctx).Info("workload left alone", "workload", key.String(), "writer", writer, "policy", policy)
	r.events.Eventf(obj, nil, corev1.EventTypeWarning, ReasonTemplateReverted, "Rollout", "%s", note)
	if pol := policyObjectOf(ctx, r.client, policy); pol != nil {
		r.events.Eventf(pol, obj, corev1.EventTypeWarning, ReasonTemplateReverted, "Rollout", "%s", note)
	}
	r.notify(policy)
}

// revertedBy names, from managedFields, who last wrote a workload's pod
// template sysctls other than the operator: the manager that owns the list,
// else (the list removed) the last other manager to write the spec.
func revertedBy(fields []metav1.ManagedFieldsEntry, kind string) string {
	path := []string{"f:spec", "f:template", "f:spec", "f:securityContext", "f:sysctls"}
	if kind == kindCronJob {
		path = append([]string{"f:spec", "f:jobTemplate"}, path...)
	}
	name := func(e metav1.ManagedFieldsEntry) string { return fmt.Sprintf("%s (%s)", e.Manager, e.Operation) }
	var last *metav1.ManagedFieldsEntry
	for i, e := range fields {
		if e.Manager == FieldOwner || e.FieldsV1 == nil || e.Subresource != "" {
			continue
		}
		if owns(e.FieldsV1.GetRawBytes(), path) {
			return name(e)
		}
		if owns(e.FieldsV1.GetRawBytes(), path[:1]) && (last == nil || e.Time != nil && last.Time != nil && last.Time.Before(e.Time)) {
			last = &fields[i]
		}
	}
	if last != nil {
		return name(*last)
	}
	return ""
}

// owns reports whether a managedFields entry's fields hold the path.
func owns(raw []byte, path []string) bool {
	var set map[string]json.RawMessage
	if err := json.Unmarshal(raw, &set); err != nil {
		return false
	}
	for i, p := range path {
		next, ok := set[p]
		if !ok {
			return false
		}
		if i == len(path)-1 {
			return true
		}
		set = nil
		if err := json.Unmarshal(bytes.TrimSpace(next), &set); err != nil {
			return false
		}
	}
	return false
}
