package controller

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/keepalive-operator/keepalive-operator/api/v1alpha1"
	"github.com/keepalive-operator/keepalive-operator/internal/keepalive"
)

var (
	reconciles = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "keepalive_reconciles_total",
		Help: "Policy reconciles by kind and result (success, requeue, error).",
	}, []string{"kind", "result"})

	policyPods = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "keepalive_policy_pods",
		Help: "Pods a policy selects, by state (matched, compliant, stale, skipped).",
	}, []string{"policy", "state"})

	policyConnections = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "keepalive_policy_connections",
		Help: "Established TCP connections of a policy's pods by keepalive state (armed, armedLate, notArmed, unknown), as the audit agents read them.",
	}, []string{"policy", "state"})

	policyPodsUnaudited = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "keepalive_policy_pods_unaudited",
		Help: "Running pods of a policy on nodes without a fresh audit report.",
	}, []string{"policy"})

	policyReady = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "keepalive_policy_ready",
		Help: "1 when a policy's Ready condition is True, 0 otherwise; reason is the condition's reason (one series per policy).",
	}, []string{"policy", "reason"})

	policyPodsBlocked = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "keepalive_policy_pods_blocked",
		Help: "Pods of a policy that cannot take the keepalive sysctls, by cause (the PodsBlocked condition's counts).",
	}, []string{"policy", "cause"})

	rolloutsInProgress = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "keepalive_rollouts_in_progress",
		Help: "Workloads rolling out a template change of the operator, across the cluster.",
	})
)

func init() {
	metrics.Registry.MustRegister(reconciles, policyPods, policyConnections, policyPodsUnaudited, policyReady, policyPodsBlocked, rolloutsInProgress)
}

// readyReasons is the reason label each policy's ready series carries, so
// that a new reason replaces the old series without a gap in between: an
// alert's pending time starts anew at a gap.
var readyReasons = struct {
	sync.Mutex
	m map[string]string
}{m: map[string]string{}}

func recordReady(policy string, c metav1.Condition) {
	v := 0.0
	if c.Status == metav1.ConditionTrue {
		v = 1
	}
	readyReasons.Lock()
	defer readyReasons.Unlock()
	policyReady.WithLabelValues(policy, c.Reason).Set(v)
	if old, ok := readyReasons.m[policy]; ok && old != c.Reason {
		policyReady.DeleteLabelValues(policy, old)
	}
	readyReasons.m[policy] = c.Reason
}

func forgetReady(policy string) {
	readyReasons.Lock()
	defer readyReasons.Unlock()
	policyReady.DeletePartialMatch(prometheus.Labels{"policy": policy})
	delete(readyReasons.m, policy)
}

// recordBlocked sets a series for each cause that blocks pods and drops
// the others.
func recordBlocked(policy string, blocked map[keepalive.SkipReason]int32) {
	for cause := range blockedCauses {
		if n := blocked[cause]; n > 0 {
			policyPodsBlocked.WithLabelValues(policy, string(cause)).Set(float64(n))
		} else {
			policyPodsBlocked.DeleteLabelValues(policy, string(cause))
		}
	}
}

func recordPods(policy string, matched, compliant, stale, skipped int32) {
	policyPods.WithLabelValues(policy, "matched").Set(float64(matched))
	policyPods.WithLabelValues(policy, "compliant").Set(float64(compliant))
	policyPods.WithLabelValues(policy, "stale").Set(float64(stale))
	policyPods.WithLabelValues(policy, "skipped").Set(float64(skipped))
}

func forgetPods(policy string) {
	policyPods.DeletePartialMatch(prometheus.Labels{"policy": policy})
	policyPodsBlocked.DeletePartialMatch(prometheus.Labels{"policy": policy})
}

func recordConnections(policy string, a v1alpha1.ConnectionAudit) {
	for state, n := range map[keepalive.ConnState]int32{keepalive.ConnArmed: a.Armed, keepalive.ConnArmedLate: a.ArmedLate,
		keepalive.ConnNotArmed: a.NotArmed, keepalive.ConnUnknown: a.Unknown} {
		policyConnections.WithLabelValues(policy, string(state)).Set(float64(n))
	}
	policyPodsUnaudited.WithLabelValues(policy).Set(float64(a.PodsUnaudited))
}

// forgetPolicy drops every series of a policy deleted or being deleted.
func forgetPolicy(policy string) {
	forgetCounts(policy)
	forgetReady(policy)
}

// forgetCounts drops a policy's counts of pods and connections, which are
// no longer kept: it is going, or its spec does not compute.
func forgetCounts(policy string) {
	forgetPods(policy)
	forgetConnections(policy)
}

func forgetConnections(policy string) {
	policyConnections.DeletePartialMatch(prometheus.Labels{"policy": policy})
	policyPodsUnaudited.DeleteLabelValues(policy)
}
