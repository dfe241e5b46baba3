package keepalive

import (
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/version"

	"github.com/keepalive-operator/keepalive-operator/api/v1alpha1"
)

// Labels and annotations the operator reads and writes.
const (
	// LabelInject set to InjectDisabled on a pod or a namespace opts it out.
	LabelInject    = "keepalive.io/inject"
	InjectDisabled = "disabled"
	// AnnotationPolicy names the policy whose values a pod carries:
	// Kind/namespace/name, or Kind/name for a cluster policy.
	AnnotationPolicy = "keepalive.io/policy"
	// AnnotationOriginalSysctls holds, as a JSON list of sysctls, the pod's
	// own values that the operator replaced.
	AnnotationOriginalSysctls = "keepalive.io/original-sysctls"
)

// Pod Security Admission labels of a namespace.
const (
	labelPSAEnforce        = "pod-security.kubernetes.io/enforce"
	labelPSAEnforceVersion = "pod-security.kubernetes.io/enforce-version"
)

// FirstSafeMinor is the Kubernetes 1.x release from which the keepalive
// sysctls are safe: kubelets accept them and Pod Security baseline and
// restricted allow them.
const FirstSafeMinor = 29

// ServerMinor is the minor release of a Kubernetes 1.x API server as its
// version reports it: managed clusters write "29+" for 29.
func ServerMinor(v *version.Info) (int, error) {
	minor, err := strconv.Atoi(strings.TrimSuffix(v.Minor, "+"))
	if v.Major != "1" || err != nil {
		return 0, fmt.Errorf("unexpected API server version %q (major %q, minor %q)", v.GitVersion, v.Major, v.Minor)
	}
	return minor, nil
}

// SystemNamespaces are never injected.
var SystemNamespaces = []string{"kube-system", "kube-public", "kube-node-lease"}

// SkipReason says why a pod is admitted unchanged. It is a metric label.
type SkipReason string

// The reasons to leave a pod alone, in the order they are checked.
const (
	SkipExcludedNamespace  SkipReason = "excluded-namespace"   // a system namespace, the operator's, or excluded by flag
	SkipNamespaceOptOut    SkipReason = "namespace-opt-out"    // namespace labelled keepalive.io/inject=disabled
	SkipPodOptOut          SkipReason = "pod-opt-out"          // pod labelled keepalive.io/inject=disabled
	SkipExcludedPod        SkipReason = "excluded-pod"         // outside --object-selector
	SkipNoPolicy           SkipReason = "no-policy"            // no policy selects the pod
	SkipHostNetwork        SkipReason = "host-network"         // net.* sysctls are refused with hostNetwork
	SkipWindows            SkipReason = "windows"              // Windows pods take no sysctls
	SkipClusterVersion     SkipReason = "cluster-version"      // before 1.29 the kubelet would refuse the pod
	SkipPodSecurityVersion SkipReason = "pod-security-version" // Pod Security would refuse the pod
	SkipInvalidValue       SkipReason = "invalid-sysctl-value" // the pod sets a keepalive value the kernel refuses
	SkipAudit              SkipReason = "audit"                // the policy only reports
)

// PodView is what admission needs to know of a pod.
type PodView struct {
	Labels      map[string]string
	Annotations map[string]string
	HostNetwork bool
	OS          string
	Sysctls     []corev1.Sysctl
	// Placement is where the pod may be scheduled.
	Placement Placement
}

// Namespace is a pod's namespace.
type Namespace struct {
	Name   string
	Labels map[string]string
}

// Cluster is what admission needs to know of the cluster and the operator.
type Cluster struct {
	// Minor is the Kubernetes 1.x minor version of the API server.
	Minor int
	// UnsafeSysctlsAllowed says every kubelet allows the keepalive sysctls
	// (--allowed-unsafe-sysctls), which matters before 1.29.
	UnsafeSysctlsAllowed bool
	// OperatorNamespace is never injected.
	OperatorNamespace string
	// ExcludedNamespaces are left alone like the system namespaces.
	ExcludedNamespaces []string
	// NamespaceSelector and PodSelector, when not nil, leave alone the
	// namespaces and pods they do not match. They are the extra selectors of
	// the webhook configuration, so that templates and status count the same
	// pods the API server sends to the webhook.
	NamespaceSelector labels.Selector
	PodSelector       labels.Selector
	// OldNodes are the nodes whose kubelet is older than 1.29 or kernel
	// older than 4.5, cordoned ones included: a pod that could land on one
	// that refuses the sysctls (NodeInfo.Blocks) is left alone. Never
	// changed once handed out.
	OldNodes []Node
}

// ParseSelector reads the operator's --namespace-selector or
// --object-selector (kubectl's label selector syntax); blank is no selector,
// nil.
func ParseSelector(s string) (labels.Selector, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	return labels.Parse(s)
}

// leftOut says why the operator leaves a pod alone whatever the policies,
// or returns "": excluded namespaces and pods, and opt-out labels.
func (c Cluster) leftOut(pod PodView, ns Namespace) SkipReason {
	switch {
	case ns.Name == c.OperatorNamespace || isSystemNamespace(ns.Name) || slices.Contains(c.ExcludedNamespaces, ns.Name):
		return SkipExcludedNamespace
	case c.NamespaceSelector != nil && !c.NamespaceSelector.Matches(labels.Set(ns.Labels)):
		return SkipExcludedNamespace
	case ns.Labels[LabelInject] == InjectDisabled:
		return SkipNamespaceOptOut
	case pod.Labels[LabelInject] == InjectDisabled:
		return SkipPodOptOut
	case c.PodSelector != nil && !c.PodSelector.Matches(labels.Set(pod.Labels)):
		return SkipExcludedPod
	}
	return ""
}

// Annotation is one annotation to set on the pod.
type Annotation struct{ Key, Value string }

// Decision is the outcome of admitting a pod.
type Decision struct {
	// Skip is empty when the policy applies.
	Skip SkipReason
	// Policy is the governing policy; nil for skips decided before
	// selection.
	Policy *Policy
	// Sysctls is the pod's new sysctl list; nil when it stays as it is.
	Sysctls []corev1.Sysctl
	// Annotations are the annotations to set; the pod already has the others.
	Annotations []Annotation
	// Warnings are for the person who created the pod.
	Warnings []string
}

// Changed reports whether the pod must be patched.
func (d Decision) Changed() bool { return d.Sysctls != nil || len(d.Annotations) > 0 }

// SysctlsAfter is the pod's sysctl list once admitted: the new one, or own
// where the decision leaves it as it is.
func (d Decision) SysctlsAfter(own []corev1.Sysctl) []corev1.Sysctl {
	if d.Sysctls != nil {
		return d.Sysctls
	}
	return own
}

// Decide admits a pod: it picks the governing policy among those given
// (namespaced ones of the pod's namespace and cluster ones) and merges its
// values into the pod's sysctls, or says why it leaves the pod alone.
func Decide(pod PodView, ns Namespace, c Cluster, policies ...[]Policy) Decision {
	if reason := c.leftOut(pod, ns); reason != "" {
		return Decision{Skip: reason}
	}
	p, ok := Select(Target{Namespace: ns.Name, Labels: pod.Labels, NamespaceLabels: ns.Labels}, policies...)
	if !ok {
		return Decision{Skip: SkipNoPolicy}
	}
	d := Decision{Policy: &p}
	reason, why := blocked(pod, ns, c)
	if reason == "" {
		reason, why = oldNodeBlocks(pod.Placement, c)
	}
	if reason != "" {
		d.Skip = reason
		d.Warnings = []string{"keepalive.io: " + p.name + " not applied: " + why}
		return d
	}

	m := merge(pod.Sysctls, p.sysctls)
	if len(m.Invalid) > 0 {
		d.Skip = SkipInvalidValue
		d.Warnings = []string{"keepalive.io: " + p.name + " not applied: " + refused(m.Invalid)}
		return d
	}
	if p.Mode == v1alpha1.ModeAudit {
		d.Skip = SkipAudit
		if m.Changed {
			d.Warnings = []string{"keepalive.io: " + p.name + " (Audit) would set " + Describe(p.sysctls)}
		}
		return d
	}
	if m.Changed {
		d.Sysctls = m.Sysctls
	}
	if pod.Annotations[AnnotationPolicy] != p.name {
		d.Annotations = append(d.Annotations, Annotation{AnnotationPolicy, p.name})
	}
	if len(m.Replaced) > 0 {
		raw, _ := json.Marshal(m.Replaced) // a []Sysctl of strings always marshals
		d.Annotations = append(d.Annotations, Annotation{AnnotationOriginalSysctls, string(raw)})
		d.Warnings = append(d.Warnings, "keepalive.io: "+p.name+" replaced "+Describe(m.Replaced)+
			" with "+Describe(replacements(m))+"; the originals are in annotation "+AnnotationOriginalSysctls)
	}
	return d
}

// NamespaceMatters reports whether a change of a namespace's labels can
// change what the policies do to its pods: its exclusion or opt-out, Pod
// Security, or a policy's namespaceSelector.
func NamespaceMatters(old, updated Namespace, c Cluster, policies []Policy) bool {
	if c.leftOut(PodView{}, old) != c.leftOut(PodView{}, updated) {
		return true
	}
	_, _, blockedBefore := PodSecurityBlocks(old.Labels, c.Minor)
	_, _, blockedAfter := PodSecurityBlocks(updated.Labels, c.Minor)
	if blockedBefore != blockedAfter {
		return true
	}
	for i := range policies {
		if policies[i].SelectsNamespace(old.Name, old.Labels) != policies[i].SelectsNamespace(updated.Name, updated.Labels) {
			return true
		}
	}
	return false
}

// blocked says why a pod selected by a policy cannot take the sysctls, or
// returns "" when it can.
func blocked(pod PodView, ns Namespace, c Cluster) (SkipReason, string) {
	switch {
	case pod.HostNetwork:
		return SkipHostNetwork, "a hostNetwork pod uses the node's keepalive sysctls"
	case pod.OS == string(corev1.Windows):
		return SkipWindows, "Windows pods take no sysctls"
	case c.Minor < FirstSafeMinor && !c.UnsafeSysctlsAllowed:
		return SkipClusterVersion, fmt.Sprintf(
			"Kubernetes 1.%d treats the keepalive sysctls as unsafe; allow them on every kubelet and run the operator with --unsafe-sysctls-allowed", c.Minor)
	}
	if level, version, blocks := PodSecurityBlocks(ns.Labels, c.Minor); blocks {
		return SkipPodSecurityVersion, fmt.Sprintf(
			"Pod Security %q at version %s rejects the keepalive sysctls; set %s to v1.%d or later",
			level, version, labelPSAEnforceVersion, FirstSafeMinor)
	}
	return "", ""
}

func isSystemNamespace(name string) bool { return slices.Contains(SystemNamespaces, name) }

// PodSecurityBlocks reports whether the namespace's enforced Pod Security
// level rejects the keepalive sysctls: baseline and restricted allow them
// only from policy version v1.29. An absent, "latest" or unreadable version
// is the cluster's own.
func PodSecurityBlocks(nsLabels map[string]string, clusterMinor int) (level, version string, blocked bool) {
	level = nsLabels[labelPSAEnforce]
	if level != "baseline" && level != "restricted" {
		return "", "", false
	}
	version = nsLabels[labelPSAEnforceVersion]
	minor := clusterMinor
	if m, ok := parseMinor(version); ok {
		minor = m
	} else {
		version = fmt.Sprintf("v1.%d (the cluster's)", clusterMinor)
	}
	return level, version, minor < FirstSafeMinor
}

// parseMinor reads the minor of a "v1.N" version.
func parseMinor(v string) (int, bool) {
	rest, ok := strings.CutPrefix(v, "v1.")
	if !ok {
		return 0, false
	}
	n, err := strconv.Atoi(rest)
	return n, err == nil
}

// replacements returns the values that took the place of m.Replaced.
func replacements(m Merge) []corev1.Sysctl {
	out := make([]corev1.Sysctl, 0, len(m.Replaced))
	for _, r := range m.Replaced {
		if i := indexOf(m.Sysctls, r.Name); i >= 0 {
			out = append(out, m.Sysctls[i])
		}
	}
	return out
}

// Describe writes sysctls as "name=value, name=value" for messages, "none"
// for none.
func Describe(sysctls []corev1.Sysctl) string {
	if len(sysctls) == 0 {
		return "none"
	}
	parts := make([]string, len(sysctls))
	for i, s := range sysctls {
		parts[i] = s.Name + "=" + s.Value
	}
	return strings.Join(parts, ", ")
}
