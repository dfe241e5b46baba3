package controller

import (
	"github.com/prometheus/client_golang/prometheus"
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

	rolloutsInProgress = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "keepalive_rollouts_in_progress",
		Help: "Workloads rolling out a template change of the operator, across the cluster.",
	})
)

func init() {
	metrics.Registry.MustRegister(reconciles, policyPods, policyConnections, policyPodsUnaudited, rolloutsInProgress)
}

func recordPods(policy string, matched, compliant, stale, skipped int32) {
	policyPods.WithLabelValues(policy, "matched").Set(float64(matched))
	policyPods.WithLabelValues(policy, "compliant").Set(float64(compliant))
	policyPods.WithLabelValues(policy, "stale").Set(float64(stale))
	policyPods.WithLabelValues(policy, "skipped").Set(float64(skipped))
}

func forgetPods(policy string) {
	policyPods.DeletePartialMatch(prometheus.Labels{"policy": policy})
}

func recordConnections(policy string, a v1alpha1.ConnectionAudit) {
	for state, n := range map[keepalive.ConnState]int32{keepalive.ConnArmed: a.Armed, keepalive.ConnArmedLate: a.ArmedLate,
		keepalive.ConnNotArmed: a.NotArmed, keepalive.ConnUnknown: a.Unknown} {
		policyConnections.WithLabelValues(policy, string(state)).Set(float64(n))
	}
	policyPodsUnaudited.WithLabelValues(policy).Set(float64(a.PodsUnaudited))
}

func forgetConnections(policy string) {
	policyConnections.DeletePartialMatch(prometheus.Labels{"policy": policy})
	policyPodsUnaudited.DeleteLabelValues(policy)
}
