package keepalive

import (
	"strconv"
	"strings"
)

// PodState is where a pod that a policy selects stands.
type PodState string

// The states a pod is counted in.
const (
	// PodCompliant pods carry values at least as aggressive as the policy's,
	// from this policy or another.
	PodCompliant PodState = "compliant"
	// PodStale pods lack the values or carry larger ones.
	PodStale PodState = "stale"
	// PodSkipped pods cannot or must not get the values.
	PodSkipped PodState = "skipped"
)

// Causes that keep a pod on a node from taking the sysctls.
const (
	SkipNodeKubelet SkipReason = "node-kubelet-version" // kubelet older than 1.29 refuses them as unsafe
	SkipNodeKernel  SkipReason = "node-kernel-version"  // kernel older than 4.5 lacks them per network namespace
)

// Blocks reports whether the reason is something in the way of the values,
// as opposed to a choice (opt-out labels, excluded namespaces). A value the
// kernel refuses is in the way: the operator will not overwrite what it
// cannot read, and the pod does not start until someone fixes it.
func (r SkipReason) Blocks() bool {
	switch r {
	case SkipHostNetwork, SkipWindows, SkipClusterVersion, SkipPodSecurityVersion, SkipNodeKubelet, SkipNodeKernel,
		SkipInvalidValue:
		return true
	}
	return false
}

// NodeInfo is what a node reports of its kubelet and kernel
// (status.nodeInfo).
type NodeInfo struct {
	KubeletVersion string
	KernelVersion  string
}

// Blocks says why pods on the node cannot take the keepalive sysctls, or
// returns "". Versions it cannot read do not block.
func (n NodeInfo) Blocks(c Cluster) SkipReason {
	if minor, ok := parseMinor(versionPrefix(n.KubeletVersion)); ok && minor < FirstSafeMinor && !c.UnsafeSysctlsAllowed {
		return SkipNodeKubelet
	}
	major, minor, ok := kernelVersion(n.KernelVersion)
	if ok && (major < 4 || major == 4 && minor < 5) {
		return SkipNodeKernel
	}
	return ""
}

// versionPrefix cuts "v1.28.5-eks-1234" to "v1.28".
func versionPrefix(v string) string {
	parts := strings.SplitN(v, ".", 3)
	if len(parts) < 2 {
		return v
	}
	return parts[0] + "." + strings.TrimRightFunc(parts[1], func(r rune) bool { return r < '0' || r > '9' })
}

// kernelVersion reads "4.4.0-210-generic" as 4, 4.
func kernelVersion(v string) (major, minor int, ok bool) {
	parts := strings.SplitN(v, ".", 3)
	if len(parts) < 2 {
		return 0, 0, false
	}
	major, err1 := strconv.Atoi(parts[0])
	minor, err2 := strconv.Atoi(strings.TrimRightFunc(parts[1], func(r rune) bool { return r < '0' || r > '9' }))
	return major, minor, err1 == nil && err2 == nil
}

// Classify says where a pod that the policy selects stands, and for a
// skipped pod why. node is the pod's node, nil while it is unscheduled.
func Classify(pod PodView, ns Namespace, c Cluster, p *Policy, node *NodeInfo) (PodState, SkipReason) {
	if reason := c.leftOut(pod, ns); reason != "" {
		return PodSkipped, reason
	}
	if reason, _ := blocked(pod, ns, c); reason != "" {
		return PodSkipped, reason
	}
	if node != nil {
		if reason := node.Blocks(c); reason != "" {
			return PodSkipped, reason
		}
	}
	switch m := MergeSysctls(pod.Sysctls, p.Result.Values); {
	case len(m.Invalid) > 0:
		return PodSkipped, SkipInvalidValue
	case !m.Changed:
		return PodCompliant, ""
	}
	return PodStale, ""
}
