package controller

import (
	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
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

	rolloutsInProgress = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "keepalive_rollouts_in_progress",
		Help: "Workloads rolling out a template change of the operator, across the cluster.",
	})
)

func init() {
	metrics.Registry.MustRegister(reconciles, policyPods, rolloutsInProgress)
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
