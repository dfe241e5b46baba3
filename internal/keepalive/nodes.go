package keepalive

import (
	"fmt"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corev1helpers "k8s.io/component-helpers/scheduling/corev1"
	"k8s.io/component-helpers/scheduling/corev1/nodeaffinity"
)

// Node is a node whose kubelet or kernel is too old for the keepalive
// sysctls, as admission needs to know it: while a pod could be scheduled on
// one that refuses them (NodeInfo.Blocks), it must not get them, or the
// kubelet fails it.
type Node struct {
	Name   string
	Labels map[string]string
	// Unschedulable is a cordoned node: only a pod that names it in
	// spec.nodeName, or tolerates node.kubernetes.io/unschedulable (a
	// DaemonSet's), can still land there.
	Unschedulable bool
	// Taints keep off the pods that do not tolerate them.
	Taints []corev1.Taint
	Info   NodeInfo
}

// NodeOf is a node as the decisions read it.
func NodeOf(n *corev1.Node) Node {
	return Node{Name: n.Name, Labels: n.Labels, Unschedulable: n.Spec.Unschedulable, Taints: n.Spec.Taints,
		Info: NodeInfo{KubeletVersion: n.Status.NodeInfo.KubeletVersion, KernelVersion: n.Status.NodeInfo.KernelVersion}}
}

// Old reports whether the node's kubelet or kernel is old enough for some
// cluster to refuse the sysctls there: the nodes Cluster.OldNodes holds,
// whose refusal Cluster decides.
func (n Node) Old() bool { return n.Info.Blocks(Cluster{}) != "" }

// Placement is where a pod may be scheduled: its spec.nodeName,
// nodeSelector, required node affinity and tolerations. The zero value is
// any node without taints.
type Placement struct {
	NodeName     string
	NodeSelector map[string]string
	NodeAffinity *corev1.NodeAffinity
	Tolerations  []corev1.Toleration
}

// Constrained reports whether the placement depends on which nodes there
// are beyond their count: it names, selects or tolerates some.
func (p Placement) Constrained() bool {
	return p.NodeName != "" || len(p.NodeSelector) > 0 || len(p.Tolerations) > 0 ||
		p.NodeAffinity != nil && p.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution != nil
}

// DaemonSetTolerations are those the DaemonSet controller gives each of its
// pods, which the template does not show: its pods run on cordoned and
// failing nodes too.
var DaemonSetTolerations = []corev1.Toleration{
	{Key: corev1.TaintNodeNotReady, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute},
	{Key: corev1.TaintNodeUnreachable, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute},
	{Key: corev1.TaintNodeDiskPressure, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule},
	{Key: corev1.TaintNodeMemoryPressure, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule},
	{Key: corev1.TaintNodePIDPressure, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule},
	{Key: corev1.TaintNodeUnschedulable, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule},
}

// unschedulable is the taint that stands for a cordon.
var unschedulable = corev1.Taint{Key: corev1.TaintNodeUnschedulable, Effect: corev1.TaintEffectNoSchedule}

// passing are the taints the node controller sets for a condition that
// passes (not ready, unreachable, under pressure): a node that has them
// takes pods again once it recovers, so they keep no pod off it for good.
var passing = map[string]bool{
	corev1.TaintNodeNotReady: true, corev1.TaintNodeUnreachable: true, corev1.TaintNodeMemoryPressure: true,
	corev1.TaintNodeDiskPressure: true, corev1.TaintNodePIDPressure: true, corev1.TaintNodeNetworkUnavailable: true,
}

// keptOff reports whether the node's cordon or taints keep the pod off it.
// Tolerations with comparison operators count as the API server may allow
// them: a toleration too many only costs a pod its values.
func keptOff(p Placement, node Node) bool {
	scheduling := func(t *corev1.Taint) bool {
		return !passing[t.Key] && (t.Effect == corev1.TaintEffectNoSchedule || t.Effect == corev1.TaintEffectNoExecute)
	}
	if node.Unschedulable && !corev1helpers.TolerationsTolerateTaint(logr.Discard(), p.Tolerations, &unschedulable, true) {
		return true
	}
	_, untolerated := corev1helpers.FindMatchingUntoleratedTaint(logr.Discard(), node.Taints, p.Tolerations, scheduling, true)
	return untolerated
}

// landsOnOldNode returns the first of the cluster's old nodes a pod could
// land on and how many it could, given its placement: the node it names,
// whatever its cordon and taints, or else every old node its nodeSelector
// and required node affinity match whose cordon and taints it tolerates. A
// placement rule the scheduler cannot read counts as a match: better no
// values than a failed pod.
func landsOnOldNode(p Placement, c Cluster) (first Node, n int) {
	if p.NodeName != "" {
		for _, node := range c.OldNodes {
			if node.Name == p.NodeName && node.Info.Blocks(c) != "" {
				return node, 1
			}
		}
		return Node{}, 0
	}
	var required nodeaffinity.RequiredNodeAffinity
	if p.Constrained() {
		required = nodeaffinity.GetRequiredNodeAffinity(&corev1.Pod{Spec: corev1.PodSpec{
			NodeSelector: p.NodeSelector, Affinity: &corev1.Affinity{NodeAffinity: p.NodeAffinity}}})
	}
	for _, node := range c.OldNodes {
		if node.Info.Blocks(c) == "" || keptOff(p, node) {
			continue
		}
		if p.Constrained() {
			ok, err := required.Match(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: node.Name, Labels: node.Labels}})
			if err == nil && !ok {
				continue
			}
		}
		if n == 0 {
			first = node
		}
		n++
	}
	return first, n
}

// oldNodeBlocks says why a pod must not get the values because it could
// land on a node that refuses them, or returns "".
func oldNodeBlocks(p Placement, c Cluster) (SkipReason, string) {
	if len(c.OldNodes) == 0 {
		return "", ""
	}
	node, n := landsOnOldNode(p, c)
	if n == 0 {
		return "", ""
	}
	reason := node.Info.Blocks(c)
	what := fmt.Sprintf("kubelet %s treats the keepalive sysctls as unsafe", node.Info.KubeletVersion)
	if reason == SkipNodeKernel {
		what = fmt.Sprintf("kernel %s has no keepalive sysctls per network namespace", node.Info.KernelVersion)
	}
	more := ""
	if n > 1 {
		more = fmt.Sprintf(" (and %d more such nodes)", n-1)
	}
	return reason, fmt.Sprintf("the pod could be scheduled on node %s, whose %s%s; it gets the values once such nodes are upgraded, cordoned or gone, or when it is pinned away from them",
		node.Name, what, more)
}

// DescribeOldNodes names the schedulable old nodes for a status message:
// the first few with their versions, and how many in all; "" when none.
func DescribeOldNodes(c Cluster) string {
	const shown = 5
	var names []string
	n := 0
	for _, node := range c.OldNodes {
		if node.Unschedulable || node.Info.Blocks(c) == "" {
			continue
		}
		n++
		if len(names) == shown {
			continue
		}
		if node.Info.Blocks(c) == SkipNodeKernel {
			names = append(names, fmt.Sprintf("%s (kernel %s)", node.Name, node.Info.KernelVersion))
		} else {
			names = append(names, fmt.Sprintf("%s (kubelet %s)", node.Name, node.Info.KubeletVersion))
		}
	}
	if n == 0 {
		return ""
	}
	out := fmt.Sprintf("%d schedulable nodes", n)
	if n == 1 {
		out = "1 schedulable node"
	}
	out += " cannot take the keepalive sysctls: "
	for i, s := range names {
		if i > 0 {
			out += ", "
		}
		out += s
	}
	if n > len(names) {
		out += fmt.Sprintf(", and %d more", n-len(names))
	}
	return out
}
