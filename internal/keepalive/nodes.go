package keepalive

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/component-helpers/scheduling/corev1/nodeaffinity"
)

// Node is a node whose kubelet or kernel refuses the keepalive sysctls
// (NodeInfo.Blocks), as admission needs to know it: while a pod could be
// scheduled there, it must not get them, or the kubelet fails it.
type Node struct {
	Name   string
	Labels map[string]string
	// Unschedulable is a cordoned node: only a pod that names it in
	// spec.nodeName can still land there.
	Unschedulable bool
	Info          NodeInfo
}

// Placement is where a pod may be scheduled: its spec.nodeName, nodeSelector
// and required node affinity. The zero value is anywhere.
type Placement struct {
	NodeName     string
	NodeSelector map[string]string
	NodeAffinity *corev1.NodeAffinity
}

// Constrained reports whether the placement rules out some nodes.
func (p Placement) Constrained() bool {
	return p.NodeName != "" || len(p.NodeSelector) > 0 ||
		p.NodeAffinity != nil && p.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution != nil
}

// landsOnOldNode returns the first of the cluster's old nodes a pod could
// land on and how many it could, given its placement: the node it names,
// whether cordoned or not, or else every schedulable old node its
// nodeSelector and required node affinity match. A placement rule the
// scheduler cannot read counts as a match: better no values than a failed
// pod.
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
		if node.Unschedulable || node.Info.Blocks(c) == "" {
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
