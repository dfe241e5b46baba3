package controller

import (
	"math"
	"slices"
	"sync"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/client"
)

// slots limits how many workloads replace their pods because of the
// operator at once, across the cluster, and keeps the workloads waiting for
// one in the order they asked. A workload holds a slot from the template
// change the operator makes until its status reports that change rolled out,
// or until its progress deadline passes.
type slots struct {
	max      int           // 0: no limit
	deadline time.Duration // how long a StatefulSet or DaemonSet may go without progress

	mu      sync.Mutex
	held    map[workloadKey]*slot
	waiting []workloadKey // in the order they asked
	// waitingFor names the policy each waiting workload's change is for.
	waitingFor map[workloadKey]string
	rebuilt    bool
}

type slot struct {
	policy string
	// generation is what the operator's change made the workload's; its
	// status must reach it before the slot frees. MaxInt64 until the write
	// returns.
	generation int64
	// progressAt is when the slot was taken or the rollout last advanced.
	progressAt time.Time
	updated    int32
}

func newSlots(max int, deadline time.Duration) *slots {
	return &slots{max: max, deadline: deadline, held: map[workloadKey]*slot{}, waitingFor: map[workloadKey]string{}}
}

// rebuild, on the first call only, counts the workloads found rolling as
// holding slots, even beyond the limit: a new leader cannot tell whose
// change they roll, so no new rollout starts until they are done.
func (s *slots) rebuild(now time.Time, list func() map[workloadKey]slot) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.rebuilt {
		return
	}
	s.rebuilt = true
	for k, sl := range list() {
		sl.progressAt = now
		s.held[k] = &sl
	}
	rolloutsInProgress.Set(float64(len(s.held)))
}

// acquire takes a slot for a change of the workload for policy; a workload
// that holds one keeps it. When none is free the workload joins the queue,
// and acquire reports whether it joined just now.
func (s *slots) acquire(k workloadKey, policy string, now time.Time) (ok, joined bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if sl, held := s.held[k]; held {
		sl.policy, sl.generation, sl.progressAt = policy, math.MaxInt64, now
		return true, false
	}
	if s.max > 0 && len(s.held) >= s.max {
		_, was := s.waitingFor[k]
		if !was {
			s.waiting = append(s.waiting, k)
		}
		s.waitingFor[k] = policy
		return false, !was
	}
	s.dropWaiting(k)
	s.held[k] = &slot{policy: policy, generation: math.MaxInt64, progressAt: now}
	rolloutsInProgress.Set(float64(len(s.held)))
	return true, false
}

// started records the generation the change gave the workload.
func (s *slots) started(k workloadKey, generation int64, updated int32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if sl, ok := s.held[k]; ok {
		sl.generation, sl.updated = generation, updated
	}
}

// release frees the workload's slot, or its place in the queue, and returns
// the workloads to wake: as many of the first waiting as slots are free.
func (s *slots) release(k workloadKey) (policy string, wake []workloadKey) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if sl, ok := s.held[k]; ok {
		policy = sl.policy
		delete(s.held, k)
		rolloutsInProgress.Set(float64(len(s.held)))
	} else if p, ok := s.waitingFor[k]; ok {
		policy = p
		s.dropWaiting(k)
	}
	return policy, s.wakeable()
}

// leaveQueue takes a workload that no longer needs a slot out of the queue,
// reporting whether it was in it.
func (s *slots) leaveQueue(k workloadKey) (policy string, was bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	policy, was = s.waitingFor[k]
	s.dropWaiting(k)
	return policy, was
}

func (s *slots) dropWaiting(k workloadKey) {
	if _, ok := s.waitingFor[k]; ok {
		delete(s.waitingFor, k)
		s.waiting = slices.DeleteFunc(s.waiting, func(w workloadKey) bool { return w == k })
	}
}

func (s *slots) wakeable() []workloadKey {
	free := len(s.waiting)
	if s.max > 0 {
		free = min(free, s.max-len(s.held))
	}
	if free <= 0 {
		return nil
	}
	return slices.Clone(s.waiting[:free])
}

// progress is what observe found of a slot.
type progress int

const (
	notHeld progress = iota
	stillRolling
	finished
	stuck // past its progress deadline
)

// observe looks at a workload that may hold a slot, and frees the slot when
// the operator's change is rolled out, the workload no longer replaces pods
// by itself, or it went longer than the deadline without progress. A
// Deployment's own progress deadline counts through rolling().
func (s *slots) observe(k workloadKey, obj client.Object, now time.Time) (p progress, policy string, retryIn time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sl, ok := s.held[k]
	if !ok {
		return notHeld, "", 0
	}
	policy = sl.policy
	if sl.generation == math.MaxInt64 {
		return stillRolling, policy, 0 // the write has not returned yet
	}
	if u := updatedReplicas(obj); u > sl.updated {
		sl.updated, sl.progressAt = u, now
	}
	switch {
	case !rollsPods(obj) || (obj.GetGeneration() >= sl.generation && !rolling(obj)):
		p = finished
	case kindOf(obj) != kindDeployment && now.Sub(sl.progressAt) > s.deadline:
		p = stuck
	default:
		if kindOf(obj) != kindDeployment {
			retryIn = s.deadline - now.Sub(sl.progressAt) + time.Second
		}
		return stillRolling, policy, retryIn
	}
	delete(s.held, k)
	rolloutsInProgress.Set(float64(len(s.held)))
	return p, policy, 0
}

// holds reports whether the workload holds a slot.
func (s *slots) holds(k workloadKey) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.held[k]
	return ok
}

// wake returns the workloads a freed slot can serve.
func (s *slots) wake() []workloadKey {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.wakeable()
}

// count returns how many workloads hold a slot, and wait for one, for a
// policy.
func (s *slots) count(policy string) (rolling, pending int32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, sl := range s.held {
		if sl.policy == policy {
			rolling++
		}
	}
	for _, p := range s.waitingFor {
		if p == policy {
			pending++
		}
	}
	return rolling, pending
}
