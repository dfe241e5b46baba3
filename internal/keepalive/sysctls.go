package keepalive

import (
	"strconv"

	corev1 "k8s.io/api/core/v1"
)

// The sysctls the operator sets. They are per network namespace, so a pod
// starts with the kernel defaults (7200/75/9) whatever the node says.
const (
	SysctlTime     = "net.ipv4.tcp_keepalive_time"
	SysctlInterval = "net.ipv4.tcp_keepalive_intvl"
	SysctlProbes   = "net.ipv4.tcp_keepalive_probes"
)

// Sysctls returns the values as pod sysctls.
func (v Values) Sysctls() []corev1.Sysctl {
	return []corev1.Sysctl{
		{Name: SysctlTime, Value: strconv.Itoa(int(v.TimeSeconds))},
		{Name: SysctlInterval, Value: strconv.Itoa(int(v.IntervalSeconds))},
		{Name: SysctlProbes, Value: strconv.Itoa(int(v.Probes))},
	}
}

// Merge is the outcome of merging the values into a pod's sysctls.
type Merge struct {
	// Sysctls is the merged list: the pod's entries in their order, with
	// replaced values in place, then the missing keepalive sysctls.
	Sysctls []corev1.Sysctl
	// Replaced holds the pod's own entries that were replaced, with their
	// original values.
	Replaced []corev1.Sysctl
	// Changed reports whether Sysctls differs from the input.
	Changed bool
}

// MergeSysctls merges the values into a pod's sysctls by name. A value the
// pod already sets that is an integer no larger than the computed one is
// kept; any other value is replaced and reported in Replaced. Entries other
// than the three keepalive sysctls are never touched.
func MergeSysctls(existing []corev1.Sysctl, v Values) Merge {
	return merge(existing, v.Sysctls())
}

func merge(existing, want []corev1.Sysctl) Merge {
	m := Merge{Sysctls: make([]corev1.Sysctl, 0, len(existing)+len(want))}
	seen := make([]bool, len(want))
	for _, s := range existing {
		i := indexOf(want, s.Name)
		if i < 0 || seen[i] {
			m.Sysctls = append(m.Sysctls, s)
			continue
		}
		seen[i] = true
		if atMost(s.Value, want[i].Value) {
			m.Sysctls = append(m.Sysctls, s)
			continue
		}
		m.Sysctls = append(m.Sysctls, want[i])
		m.Replaced = append(m.Replaced, s)
		m.Changed = true
	}
	for i, s := range want {
		if !seen[i] {
			m.Sysctls = append(m.Sysctls, s)
			m.Changed = true
		}
	}
	return m
}

// Compliant reports whether the sysctls carry all three values, each at least
// as aggressive (no larger) as v's.
func Compliant(sysctls []corev1.Sysctl, v Values) bool {
	return !MergeSysctls(sysctls, v).Changed
}

func indexOf(sysctls []corev1.Sysctl, name string) int {
	for i, s := range sysctls {
		if s.Name == name {
			return i
		}
	}
	return -1
}

// atMost reports whether have is a positive integer no larger than limit.
func atMost(have, limit string) bool {
	h, err := strconv.Atoi(have)
	if err != nil || h < 1 {
		return false
	}
	l, _ := strconv.Atoi(limit)
	return h <= l
}
