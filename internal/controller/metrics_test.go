package controller

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/keepalive-operator/keepalive-operator/internal/keepalive"
)

// seriesOf returns the values of c's series of one policy by their other
// label's value.
func seriesOf(t *testing.T, c prometheus.Collector, policy string) map[string]float64 {
	t.Helper()
	ch := make(chan prometheus.Metric)
	go func() { c.Collect(ch); close(ch) }()
	out := map[string]float64{}
	for m := range ch {
		var d dto.Metric
		if err := m.Write(&d); err != nil {
			t.Fatal(err)
		}
		var mine bool
		var other string
		for _, l := range d.GetLabel() {
			if l.GetName() == "policy" {
				mine = l.GetValue() == policy
			} else {
				other = l.GetValue()
			}
		}
		if mine {
			out[other] = d.GetGauge().GetValue()
		}
	}
	return out
}

// TestPolicySeries follows the series of one policy through its changes:
// one ready series whose reason follows the condition, blocked series for
// the causes that block pods now, and none of either once the policy is
// gone.
func TestPolicySeries(t *testing.T) {
	const policy = "KeepalivePolicy/metrics/p"
	check := func(step string, c prometheus.Collector, want map[string]float64) {
		t.Helper()
		got := seriesOf(t, c, policy)
		if len(got) != len(want) {
			t.Errorf("%s: series %v, want %v", step, got, want)
			return
		}
		for k, v := range want {
			if got[k] != v {
				t.Errorf("%s: series %v, want %v", step, got, want)
			}
		}
	}

	recordReady(policy, metav1.Condition{Status: metav1.ConditionFalse, Reason: ReasonRolloutInProgress})
	check("rolling", policyReady, map[string]float64{ReasonRolloutInProgress: 0})
	recordReady(policy, metav1.Condition{Status: metav1.ConditionTrue, Reason: ReasonApplied})
	check("applied", policyReady, map[string]float64{ReasonApplied: 1})

	recordBlocked(policy, map[keepalive.SkipReason]int32{keepalive.SkipHostNetwork: 2, keepalive.SkipNodeKubelet: 1})
	check("two causes", policyPodsBlocked, map[string]float64{string(keepalive.SkipHostNetwork): 2, string(keepalive.SkipNodeKubelet): 1})
	recordBlocked(policy, map[keepalive.SkipReason]int32{keepalive.SkipHostNetwork: 3})
	check("one cause left", policyPodsBlocked, map[string]float64{string(keepalive.SkipHostNetwork): 3})

	forgetPods(policy)
	forgetReady(policy)
	check("deleted", policyReady, nil)
	check("deleted", policyPodsBlocked, nil)
}
