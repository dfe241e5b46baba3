package controller

import (
	"math"
	"sync"

	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// Rollouts limits how many workloads roll at once across the cluster, for
// every policy of both kinds. A workload holds a slot from the template
// change the operator makes until its status reports the new generation
// fully rolled out.
type Rollouts struct {
	max int

	mu sync.Mutex
	// rolling maps a workload to the generation its status must reach
	// before the slot frees: what the operator's change made it, or 0 for a
	// rollout found under way.
	rolling map[workloadKey]int64
	// waiting are the policies, by kind, with template changes waiting for
	// a slot: a slot that frees wakes them.
	waiting map[string]map[types.NamespacedName]bool
}

// NewRollouts allows max workloads to roll at once.
func NewRollouts(max int) *Rollouts {
	return &Rollouts{max: max, rolling: map[workloadKey]int64{}, waiting: map[string]map[types.NamespacedName]bool{}}
}

// acquire takes a slot for a template change of the workload; a workload
// that holds one keeps it.
func (r *Rollouts) acquire(k workloadKey) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.rolling[k]; ok {
		r.rolling[k] = math.MaxInt64 // until started says which generation
		return true
	}
	if len(r.rolling) >= r.max {
		return false
	}
	r.rolling[k] = math.MaxInt64
	rolloutsInProgress.Set(float64(len(r.rolling)))
	return true
}

// started records the generation the change gave the workload; release
// gives the slot back when the change failed.
func (r *Rollouts) started(k workloadKey, generation int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.rolling[k] = generation
}

func (r *Rollouts) release(k workloadKey) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.rolling, k)
	rolloutsInProgress.Set(float64(len(r.rolling)))
}

// observe looks at a cached workload the operator manages. It frees the slot
// of one that is done with the operator's change, and counts one found
// rolling (after a restart, or a change by someone else) even beyond the
// limit, so that no new rollout starts until the cluster is back under it.
// It reports whether the workload is rolling.
func (r *Rollouts) observe(k workloadKey, obj client.Object) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	gen, held := r.rolling[k]
	isRolling := rolling(obj) || (held && obj.GetGeneration() < gen) // the cache lags the change
	if isRolling && !held {
		r.rolling[k] = 0
	} else if !isRolling {
		delete(r.rolling, k)
	}
	rolloutsInProgress.Set(float64(len(r.rolling)))
	return isRolling
}

// held lists the workloads that hold a slot.
func (r *Rollouts) held() []workloadKey {
	r.mu.Lock()
	defer r.mu.Unlock()
	keys := make([]workloadKey, 0, len(r.rolling))
	for k := range r.rolling {
		keys = append(keys, k)
	}
	return keys
}

func (r *Rollouts) holds(k workloadKey) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := r.rolling[k]
	return ok
}

// setWaiting records whether a policy has changes waiting for a slot.
func (r *Rollouts) setWaiting(kind string, policy types.NamespacedName, waiting bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if waiting {
		if r.waiting[kind] == nil {
			r.waiting[kind] = map[types.NamespacedName]bool{}
		}
		r.waiting[kind][policy] = true
	} else {
		delete(r.waiting[kind], policy)
	}
}

// waiters lists the policies of a kind waiting for a slot.
func (r *Rollouts) waiters(kind string) []types.NamespacedName {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]types.NamespacedName, 0, len(r.waiting[kind]))
	for p := range r.waiting[kind] {
		out = append(out, p)
	}
	return out
}
