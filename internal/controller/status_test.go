package controller

import (
	"errors"
	"fmt"
	"testing"

	"github.com/google/go-cmp/cmp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/keepalive-operator/keepalive-operator/api/v1alpha1"
	"github.com/keepalive-operator/keepalive-operator/internal/keepalive"
)

func TestReadyCondition(t *testing.T) {
	enforce := &v1alpha1.KeepalivePolicySpec{Mode: v1alpha1.ModeEnforce, Rollout: v1alpha1.RolloutPatchTemplates}
	audit := &v1alpha1.KeepalivePolicySpec{Mode: v1alpha1.ModeAudit, Rollout: v1alpha1.RolloutPatchTemplates}
	none := &v1alpha1.KeepalivePolicySpec{Mode: v1alpha1.ModeEnforce, Rollout: v1alpha1.RolloutNone}
	pods := podTally{counts: v1alpha1.PodCounts{Matched: 10, Compliant: 7, Stale: 3}}
	w := func(c v1alpha1.WorkloadCounts) workloadTally { return workloadTally{counts: c} }
	cases := map[string]struct {
		spec *v1alpha1.KeepalivePolicySpec
		s    podTally
		w    workloadTally
		want metav1.Condition
	}{
		"applied": {enforce, pods, w(v1alpha1.WorkloadCounts{Patched: 2}), metav1.Condition{Type: ConditionReady, Status: metav1.ConditionTrue, Reason: ReasonApplied,
			Message: "7 of 10 pods compliant, 2 workload templates carry the values"}},
		"applied, with pods no template reaches": {enforce, podTally{counts: pods.counts, unpatchable: 2}, w(v1alpha1.WorkloadCounts{Patched: 1}), metav1.Condition{Type: ConditionReady, Status: metav1.ConditionTrue, Reason: ReasonApplied,
			Message: "7 of 10 pods compliant, 1 workload templates carry the values; 2 stale pods belong to Jobs or no workload and get the values when created anew"}},
		"applied, some waiting for their owner": {enforce, pods, w(v1alpha1.WorkloadCounts{Patched: 3, WaitingForOwner: 2}), metav1.Condition{Type: ConditionReady, Status: metav1.ConditionTrue, Reason: ReasonApplied,
			Message: "7 of 10 pods compliant, 3 workload templates carry the values; 2 of them wait for their owner to replace the pods (paused, OnDelete or partitioned)"}},
		"rolling": {enforce, pods, w(v1alpha1.WorkloadCounts{Patched: 2, Rolling: 1}), metav1.Condition{Type: ConditionReady, Status: metav1.ConditionFalse, Reason: ReasonRolloutInProgress,
			Message: "1 workloads rolling out, 0 waiting for a rollout slot"}},
		"waiting for slots": {enforce, pods, w(v1alpha1.WorkloadCounts{Pending: 4}), metav1.Condition{Type: ConditionReady, Status: metav1.ConditionFalse, Reason: ReasonRolloutInProgress,
			Message: "0 workloads rolling out, 4 waiting for a rollout slot"}},
		"failed": {enforce, pods, workloadTally{counts: v1alpha1.WorkloadCounts{Patched: 2, Rolling: 1, Failed: 2}, failedExample: "Deployment/shop/api"},
			metav1.Condition{Type: ConditionReady, Status: metav1.ConditionFalse, Reason: ReasonWorkloadsFailed,
				Message: "2 workloads could not be brought to their values, Deployment/shop/api among them; the policy's events give the errors"}},
		"audit": {audit, pods, workloadTally{}, metav1.Condition{Type: ConditionReady, Status: metav1.ConditionTrue, Reason: ReasonAuditOnly,
			Message: "Audit mode: values computed, nothing changed; 3 of 10 pods would need them"}},
		"rollout None": {none, pods, workloadTally{}, metav1.Condition{Type: ConditionReady, Status: metav1.ConditionTrue, Reason: ReasonRolloutDisabled,
			Message: "rollout: None: new pods get the values; 3 running pods keep older ones until their workloads roll"}},
		"rollout None while restoring": {none, pods, w(v1alpha1.WorkloadCounts{Pending: 1}), metav1.Condition{Type: ConditionReady, Status: metav1.ConditionFalse, Reason: ReasonRolloutInProgress,
			Message: "0 workloads rolling out, 1 waiting for a rollout slot"}},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, readyCondition(tc.spec, tc.s, tc.w)); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
	if diff := cmp.Diff(metav1.Condition{Type: ConditionReady, Status: metav1.ConditionFalse, Reason: ReasonInvalidSpec, Message: "idleTimeouts: bad"},
		invalidCondition(errors.New("idleTimeouts: bad"))); diff != "" {
		t.Errorf("invalid (-want +got):\n%s", diff)
	}
}

func TestL7Condition(t *testing.T) {
	cases := map[string]struct {
		res    keepalive.Result
		status metav1.ConditionStatus
		starts string
	}{
		"no proxy":  {keepalive.Result{}, metav1.ConditionFalse, "every hop tracks TCP segments"},
		"ALB":       {keepalive.Result{L7Hops: []keepalive.Hop{{Name: "aws-alb", Seconds: 60, Layer: keepalive.L7}}}, metav1.ConditionTrue, "aws-alb (60 s): an HTTP proxy counts only application data"},
		"ALB + CLB": {keepalive.Result{L7Hops: []keepalive.Hop{{Name: "public", Seconds: 120, Layer: keepalive.L7}, {Name: "aws-clb", Seconds: 60, Layer: keepalive.L7}}}, metav1.ConditionTrue, "public (120 s), aws-clb (60 s): "},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			c := l7Condition(tc.res)
			if c.Type != ConditionL7ProxyInPath || c.Status != tc.status || len(c.Message) < len(tc.starts) || c.Message[:len(tc.starts)] != tc.starts {
				t.Errorf("got %+v, want status %s and a message starting %q", c, tc.status, tc.starts)
			}
		})
	}
}

func TestPodsBlockedCondition(t *testing.T) {
	cases := map[string]struct {
		s        podTally
		oldNodes string
		want     metav1.Condition
	}{
		"none": {podTally{}, "", metav1.Condition{Type: ConditionPodsBlocked, Status: metav1.ConditionFalse, Reason: ReasonNoneBlocked, Message: "no selected pod is kept from the values"}},
		"every cause": {podTally{
			blocked: map[keepalive.SkipReason]int32{
				keepalive.SkipHostNetwork: 2, keepalive.SkipWindows: 1, keepalive.SkipPodSecurityVersion: 3,
				keepalive.SkipNodeKubelet: 1, keepalive.SkipNodeKernel: 1, keepalive.SkipClusterVersion: 1,
			},
			blockedNamespaces: map[string]int32{"legacy": 1, "batch": 2},
			blockedNodes:      map[string]int32{"node-b": 1, "node-a": 1},
		}, "", metav1.Condition{Type: ConditionPodsBlocked, Status: metav1.ConditionTrue, Reason: ReasonBlocked,
			Message: "9 pods cannot take the keepalive sysctls: 1 cluster older than 1.29 without --unsafe-sysctls-allowed; 2 hostNetwork; " +
				"1 kernel older than 4.5 (nodes node-a, node-b); 1 kubelet older than 1.29 (nodes node-a, node-b); " +
				"3 Pod Security enforce-version older than v1.29 (namespaces batch, legacy); 1 Windows"}},
		"old nodes and no pod blocked yet": {podTally{}, "1 schedulable node cannot take the keepalive sysctls: old-1 (kubelet v1.28.5)",
			metav1.Condition{Type: ConditionPodsBlocked, Status: metav1.ConditionTrue, Reason: ReasonBlocked,
				Message: "1 schedulable node cannot take the keepalive sysctls: old-1 (kubelet v1.28.5); new pods that could be scheduled there " +
					"are admitted without the values, and neither are the templates of workloads whose pods could be, until those nodes are upgraded, cordoned or gone"}},
		"old nodes and blocked pods": {podTally{blocked: map[keepalive.SkipReason]int32{keepalive.SkipNodeKubelet: 2}, blockedNodes: map[string]int32{"old-1": 2}},
			"1 schedulable node cannot take the keepalive sysctls: old-1 (kubelet v1.28.5)",
			metav1.Condition{Type: ConditionPodsBlocked, Status: metav1.ConditionTrue, Reason: ReasonBlocked,
				Message: "2 pods cannot take the keepalive sysctls: 2 kubelet older than 1.29 (nodes old-1). 1 schedulable node cannot take the keepalive sysctls: " +
					"old-1 (kubelet v1.28.5); new pods that could be scheduled there are admitted without the values, and neither are the templates of workloads " +
					"whose pods could be, until those nodes are upgraded, cordoned or gone"}},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, podsBlockedCondition(tc.s, tc.oldNodes)); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestKeepaliveNotEnabledCondition(t *testing.T) {
	counts := func(armed, late, notArmed, unknown int32) v1alpha1.ConnectionCounts {
		return v1alpha1.ConnectionCounts{Armed: armed, ArmedLate: late, NotArmed: notArmed, Unknown: unknown}
	}
	cases := map[string]struct {
		a    connectionAudit
		want metav1.Condition
	}{
		"every connection armed": {connectionAudit{status: v1alpha1.ConnectionAudit{ConnectionCounts: counts(12, 0, 0, 1), PodsReported: 4}},
			metav1.Condition{Type: ConditionKeepaliveNotEnabled, Status: metav1.ConditionFalse, Reason: ReasonKeepaliveEnabled,
				Message: "no connection lacks keepalive: 12 armed within 175 s, 1 unknown, in 4 reported pods"}},
		"no connection at all": {connectionAudit{status: v1alpha1.ConnectionAudit{PodsReported: 2}},
			metav1.Condition{Type: ConditionKeepaliveNotEnabled, Status: metav1.ConditionFalse, Reason: ReasonKeepaliveEnabled,
				Message: "no connection lacks keepalive: 0 armed within 175 s, 0 unknown, in 2 reported pods"}},
		"connections lacking keepalive": {connectionAudit{
			status:  v1alpha1.ConnectionAudit{ConnectionCounts: counts(5, 2, 3, 0), PodsReported: 3},
			lacking: []lackingPod{{"shop/pool-1", 3, 0}, {"shop/pool-2", 0, 2}},
		}, metav1.Condition{Type: ConditionKeepaliveNotEnabled, Status: metav1.ConditionTrue, Reason: ReasonConnectionsLack,
			Message: "5 of 10 connections of 3 reported pods lack keepalive within 175 s: 3 not armed (the application never turned SO_KEEPALIVE on), " +
				"2 armed late (a per-socket idle time longer than the policy's, or a pod without its values); shop/pool-1 (3 not armed, 0 armed late), " +
				"shop/pool-2 (0 not armed, 2 armed late); see " + applicationsDoc}},
		"nodes without a fresh report, nothing lacking": {connectionAudit{
			status:    v1alpha1.ConnectionAudit{ConnectionCounts: counts(4, 0, 0, 0), PodsReported: 2, PodsUnaudited: 9},
			unaudited: map[string]string{"n-7": "stale", "n-1": "no report", "n-2": "no report", "n-3": "no report", "n-4": "no report", "n-5": "no report"},
		}, metav1.Condition{Type: ConditionKeepaliveNotEnabled, Status: metav1.ConditionUnknown, Reason: ReasonAuditIncomplete,
			Message: "9 selected pods are on nodes without a fresh audit report, their connections unknown: n-1 (no report), n-2 (no report), " +
				"n-3 (no report), n-4 (no report), n-5 (no report), 1 more"}},
		"lacking and unaudited": {connectionAudit{
			status:    v1alpha1.ConnectionAudit{ConnectionCounts: counts(0, 0, 1, 0), PodsReported: 1, PodsUnaudited: 1},
			lacking:   []lackingPod{{"shop/pool-1", 1, 0}},
			unaudited: map[string]string{"n-7": "stale"},
		}, metav1.Condition{Type: ConditionKeepaliveNotEnabled, Status: metav1.ConditionTrue, Reason: ReasonConnectionsLack,
			Message: "1 of 1 connections of 1 reported pods lack keepalive within 175 s: 1 not armed (the application never turned SO_KEEPALIVE on), " +
				"0 armed late (a per-socket idle time longer than the policy's, or a pod without its values); shop/pool-1 (1 not armed, 0 armed late); see " +
				applicationsDoc + ". 1 selected pods are on nodes without a fresh audit report, their connections unknown: n-7 (stale)"}},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, keepaliveNotEnabledCondition(tc.a, 175)); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestMostLacking(t *testing.T) {
	var pods []lackingPod
	for i, n := range []int32{1, 7, 3, 7, 2, 9, 1} {
		pods = append(pods, lackingPod{name: fmt.Sprintf("ns/p%d", i), notArmed: n})
	}
	got := mostLacking(pods)
	want := []lackingPod{{"ns/p5", 9, 0}, {"ns/p1", 7, 0}, {"ns/p3", 7, 0}, {"ns/p2", 3, 0}, {"ns/p4", 2, 0}}
	if diff := cmp.Diff(want, got, cmp.AllowUnexported(lackingPod{})); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}
