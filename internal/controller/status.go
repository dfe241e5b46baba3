package controller

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/keepalive-operator/keepalive-operator/api/v1alpha1"
	"github.com/keepalive-operator/keepalive-operator/internal/keepalive"
)

// Condition types and reasons of a policy's status.
const (
	ConditionReady         = "Ready"
	ConditionL7ProxyInPath = "L7ProxyInPath"
	ConditionPodsBlocked   = "PodsBlocked"
	// ConditionKeepaliveNotEnabled is set where the audit runs.
	ConditionKeepaliveNotEnabled = "KeepaliveNotEnabled"

	ReasonApplied           = "Applied"
	ReasonInvalidSpec       = "InvalidSpec"
	ReasonRolloutInProgress = "RolloutInProgress"
	ReasonAuditOnly         = "AuditOnly"
	ReasonRolloutDisabled   = "RolloutDisabled"
	ReasonWorkloadsFailed   = "WorkloadsFailed"
	ReasonTemplatesReverted = "TemplatesReverted"
	ReasonL7Proxy           = "KeepaliveDoesNotResetProxyTimer"
	ReasonNoL7Proxy         = "NoL7Proxy"
	ReasonBlocked           = "PodsCannotTakeSysctls"
	ReasonNoneBlocked       = "NoneBlocked"
	ReasonConnectionsLack   = "ConnectionsWithoutKeepalive"
	ReasonAuditIncomplete   = "AuditIncomplete"
	ReasonKeepaliveEnabled  = "KeepaliveEnabled"
)

// applicationsDoc is where the README tells each language how to turn
// keepalive on.
const applicationsDoc = "https://github.com/keepalive-operator/keepalive-operator#your-application-must-turn-keepalive-on"

// podTally is what a pass found among the pods a policy selects.
type podTally struct {
	counts v1alpha1.PodCounts
	// blocked counts skipped pods by the cause in their way.
	blocked map[keepalive.SkipReason]int32
	// blockedNamespaces and blockedNodes count the pods that Pod Security
	// and old kubelets or kernels block, by namespace and node.
	blockedNamespaces map[string]int32
	blockedNodes      map[string]int32
	// nodes counts the matched pods by node, for the audit's reports.
	nodes map[string]int32
	// unpatchable counts stale pods of Jobs, bare pods and pods of other
	// controllers: they get the values only when created anew.
	unpatchable int32
}

func newPodTally() podTally {
	return podTally{blocked: map[keepalive.SkipReason]int32{}, blockedNamespaces: map[string]int32{}, blockedNodes: map[string]int32{}, nodes: map[string]int32{}}
}

// workloadTally is where the workloads of a policy stand.
type workloadTally struct {
	counts v1alpha1.WorkloadCounts
	// failedExample names one of the failed workloads.
	failedExample string
}

// readyCondition says whether the policy is in force.
func readyCondition(spec *v1alpha1.KeepalivePolicySpec, s podTally, w workloadTally) metav1.Condition {
	c := metav1.Condition{Type: ConditionReady, Status: metav1.ConditionTrue}
	n := w.counts
	switch {
	case spec.Mode == v1alpha1.ModeAudit:
		c.Reason = ReasonAuditOnly
		c.Message = fmt.Sprintf("Audit mode: values computed, nothing changed; %d of %d pods would need them", s.counts.Stale, s.counts.Matched)
	case n.Failed > 0:
		c.Status, c.Reason = metav1.ConditionFalse, ReasonWorkloadsFailed
		c.Message = fmt.Sprintf("%d workloads could not be brought to their values, %s among them; the policy's events give the errors", n.Failed, w.failedExample)
	case n.Reverted > 0:
		c.Status, c.Reason = metav1.ConditionFalse, ReasonTemplatesReverted
		c.Message = fmt.Sprintf("%d workloads are left alone: another writer reverted their template %d times within %s; "+
			"the policy's events name it and the ways out", n.Reverted, revertLimit, revertWindow)
	case n.Pending > 0 || n.Rolling > 0:
		c.Status, c.Reason = metav1.ConditionFalse, ReasonRolloutInProgress
		c.Message = fmt.Sprintf("%d workloads rolling out, %d waiting for a rollout slot", n.Rolling, n.Pending)
	case spec.Rollout == v1alpha1.RolloutNone:
		c.Reason = ReasonRolloutDisabled
		c.Message = fmt.Sprintf("rollout: None: new pods get the values; %d running pods keep older ones until their workloads roll", s.counts.Stale)
	default:
		c.Reason = ReasonApplied
		c.Message = fmt.Sprintf("%d of %d pods compliant, %d workload templates carry the values", s.counts.Compliant, s.counts.Matched, n.Patched)
		if n.WaitingForOwner > 0 {
			c.Message += fmt.Sprintf("; %d of them wait for their owner to replace the pods (paused, OnDelete or partitioned)", n.WaitingForOwner)
		}
		if s.unpatchable > 0 {
			c.Message += fmt.Sprintf("; %d stale pods belong to Jobs or no workload and get the values when created anew", s.unpatchable)
		}
	}
	return c
}

// invalidCondition is Ready for a spec that does not compute.
func invalidCondition(err error) metav1.Condition {
	return metav1.Condition{Type: ConditionReady, Status: metav1.ConditionFalse, Reason: ReasonInvalidSpec, Message: err.Error()}
}

// l7Condition warns of layer-7 proxies, whose idle timers keepalive probes
// do not reset.
func l7Condition(res keepalive.Result) metav1.Condition {
	if len(res.L7Hops) == 0 {
		return metav1.Condition{Type: ConditionL7ProxyInPath, Status: metav1.ConditionFalse, Reason: ReasonNoL7Proxy,
			Message: "every hop tracks TCP segments: keepalive probes reset their idle timers"}
	}
	names := make([]string, len(res.L7Hops))
	for i, h := range res.L7Hops {
		names[i] = fmt.Sprintf("%s (%d s)", h.Name, h.Seconds)
	}
	return metav1.Condition{Type: ConditionL7ProxyInPath, Status: metav1.ConditionTrue, Reason: ReasonL7Proxy,
		Message: strings.Join(names, ", ") + ": an HTTP proxy counts only application data, so TCP keepalive probes keep the pod's connection " +
			"and the layer-4 hops alive but do not reset the proxy's idle timer. Keep the HTTP keep-alive timeout of the servers behind it " +
			"above the proxy's idle timeout, and send application-level heartbeats on connections that idle longer"}
}

// blockedCauses describes each cause for PodsBlocked.
var blockedCauses = map[keepalive.SkipReason]string{
	keepalive.SkipHostNetwork:        "hostNetwork",
	keepalive.SkipWindows:            "Windows",
	keepalive.SkipPodSecurityVersion: "Pod Security enforce-version older than v1.29",
	keepalive.SkipNodeKubelet:        "kubelet older than 1.29",
	keepalive.SkipNodeKernel:         "kernel older than 4.5",
	keepalive.SkipClusterVersion:     "cluster older than 1.29 without --unsafe-sysctls-allowed",
	keepalive.SkipInvalidValue:       "keepalive sysctl value the kernel refuses",
}

// podsBlockedCondition counts the pods that cannot take the values, by
// cause, and names the schedulable nodes that keep new pods from them
// (oldNodes, from keepalive.DescribeOldNodes).
func podsBlockedCondition(s podTally, oldNodes string) metav1.Condition {
	var total int32
	var parts []string
	for _, reason := range slices.Sorted(maps.Keys(s.blocked)) {
		n := s.blocked[reason]
		total += n
		part := fmt.Sprintf("%d %s", n, blockedCauses[reason])
		switch reason {
		case keepalive.SkipPodSecurityVersion:
			part += " (namespaces " + strings.Join(slices.Sorted(maps.Keys(s.blockedNamespaces)), ", ") + ")"
		case keepalive.SkipNodeKubelet, keepalive.SkipNodeKernel:
			part += " (nodes " + strings.Join(slices.Sorted(maps.Keys(s.blockedNodes)), ", ") + ")"
		}
		parts = append(parts, part)
	}
	var msgs []string
	if total > 0 {
		msgs = append(msgs, fmt.Sprintf("%d pods cannot take the keepalive sysctls: %s", total, strings.Join(parts, "; ")))
	}
	if oldNodes != "" {
		msgs = append(msgs, oldNodes+"; new pods that could be scheduled there are admitted without the values, "+
			"and neither are the templates of workloads whose pods could be, until those nodes are upgraded, cordoned or gone")
	}
	if len(msgs) == 0 {
		return metav1.Condition{Type: ConditionPodsBlocked, Status: metav1.ConditionFalse, Reason: ReasonNoneBlocked,
			Message: "no selected pod is kept from the values"}
	}
	return metav1.Condition{Type: ConditionPodsBlocked, Status: metav1.ConditionTrue, Reason: ReasonBlocked, Message: strings.Join(msgs, ". ")}
}

// keepaliveNotEnabledCondition says whether the selected pods' connections
// use keepalive within the policy's time, as the audit agents read them.
// Pods on nodes without a fresh report are never counted as fine.
func keepaliveNotEnabledCondition(a connectionAudit, timeSeconds int32) metav1.Condition {
	c := metav1.Condition{Type: ConditionKeepaliveNotEnabled}
	n := a.status
	var msgs []string
	if lacking := n.NotArmed + n.ArmedLate; lacking > 0 {
		c.Status, c.Reason = metav1.ConditionTrue, ReasonConnectionsLack
		pods := make([]string, len(a.lacking))
		for i, p := range a.lacking {
			pods[i] = fmt.Sprintf("%s (%d not armed, %d armed late)", p.name, p.notArmed, p.armedLate)
		}
		msgs = append(msgs, fmt.Sprintf("%d of %d connections of %d reported pods lack keepalive within %d s: %d not armed "+
			"(the application never turned SO_KEEPALIVE on), %d armed late (a per-socket idle time longer than the policy's, "+
			"or a pod without its values); %s; see %s", lacking, total(n.ConnectionCounts), n.PodsReported, timeSeconds,
			n.NotArmed, n.ArmedLate, strings.Join(pods, ", "), applicationsDoc))
	}
	if n.PodsUnaudited > 0 {
		if c.Status == "" {
			c.Status, c.Reason = metav1.ConditionUnknown, ReasonAuditIncomplete
		}
		nodes := slices.Sorted(maps.Keys(a.unaudited))
		shown := make([]string, 0, maxLacking)
		for _, node := range nodes[:min(len(nodes), maxLacking)] {
			shown = append(shown, node+" ("+a.unaudited[node]+")")
		}
		if more := len(nodes) - len(shown); more > 0 {
			shown = append(shown, fmt.Sprintf("%d more", more))
		}
		msgs = append(msgs, fmt.Sprintf("%d selected pods are on nodes without a fresh audit report, their connections unknown: %s",
			n.PodsUnaudited, strings.Join(shown, ", ")))
	}
	if c.Status == "" {
		c.Status, c.Reason = metav1.ConditionFalse, ReasonKeepaliveEnabled
		msgs = append(msgs, fmt.Sprintf("no connection lacks keepalive: %d armed within %d s, %d unknown, in %d reported pods",
			n.Armed, timeSeconds, n.Unknown, n.PodsReported))
	}
	c.Message = strings.Join(msgs, ". ")
	return c
}

func total(c v1alpha1.ConnectionCounts) int32 { return c.Armed + c.ArmedLate + c.NotArmed + c.Unknown }
