package keepalive

import (
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"

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
	// Invalid holds the pod's own keepalive entries whose values the kernel
	// refuses. When there are any, Sysctls is the pod's list as it is and
	// Changed is false: the pod is left alone.
	Invalid []corev1.Sysctl
	// Changed reports whether Sysctls differs from the input.
	Changed bool
}

// MergeSysctls merges the values into a pod's sysctls by name, a slash-form
// name being the same sysctl as its dotted form. A value the pod already
// sets that the kernel reads as a positive integer no larger than the
// computed one is kept; a larger, zero or negative one is replaced in place
// and reported in Replaced; one the kernel refuses leaves the whole list
// unchanged and is reported in Invalid. Entries other than the three
// keepalive sysctls are never touched, nor an exact duplicate of an earlier
// entry, which the API server rejects.
func MergeSysctls(existing []corev1.Sysctl, v Values) Merge {
	return merge(existing, v.Sysctls())
}

func merge(existing, want []corev1.Sysctl) Merge {
	m := Merge{Sysctls: make([]corev1.Sysctl, 0, len(existing)+len(want))}
	seen := make([]bool, len(want))
	for j, s := range existing {
		i := indexOfSysctl(want, s.Name)
		if i < 0 || indexOf(existing[:j], s.Name) >= 0 {
			m.Sysctls = append(m.Sysctls, s)
			continue
		}
		seen[i] = true
		n, ok := ReadSysctl(s.Name, s.Value)
		limit, _ := strconv.ParseInt(want[i].Value, 10, 64) // written by Values.Sysctls
		switch {
		case !ok:
			m.Invalid = append(m.Invalid, s)
			m.Sysctls = append(m.Sysctls, s)
		case n >= 1 && n <= limit:
			m.Sysctls = append(m.Sysctls, s)
		default:
			// In place under the pod's own name, so that a slash form stays
			// one entry.
			m.Sysctls = append(m.Sysctls, corev1.Sysctl{Name: s.Name, Value: want[i].Value})
			m.Replaced = append(m.Replaced, s)
			m.Changed = true
		}
	}
	if len(m.Invalid) > 0 {
		return Merge{Sysctls: slices.Clone(existing), Invalid: m.Invalid}
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
// as aggressive (no larger) as v's, as the kernel reads them.
func Compliant(sysctls []corev1.Sysctl, v Values) bool {
	m := MergeSysctls(sysctls, v)
	return !m.Changed && len(m.Invalid) == 0
}

// indexOf finds a sysctl by its exact name.
func indexOf(sysctls []corev1.Sysctl, name string) int {
	for i, s := range sysctls {
		if s.Name == name {
			return i
		}
	}
	return -1
}

// indexOfSysctl finds a sysctl by name in either form.
func indexOfSysctl(sysctls []corev1.Sysctl, name string) int {
	name = NormalizeSysctlName(name)
	for i, s := range sysctls {
		if NormalizeSysctlName(s.Name) == name {
			return i
		}
	}
	return -1
}

// SysctlsOf keeps the keepalive sysctls of a list, under the names
// it gives them (either form).
func SysctlsOf(sysctls []corev1.Sysctl) []corev1.Sysctl {
	var out []corev1.Sysctl
	for _, s := range sysctls {
		if slices.Contains(keepaliveNames[:], NormalizeSysctlName(s.Name)) {
			out = append(out, s)
		}
	}
	return out
}

// NormalizeSysctlName returns the dotted form of a sysctl name, as the
// kubelet reads it: when the first separator is '/', '/' and '.' are
// swapped, so net/ipv4/tcp_keepalive_time is net.ipv4.tcp_keepalive_time.
func NormalizeSysctlName(name string) string {
	i := strings.IndexAny(name, "./")
	if i < 0 || name[i] == '.' {
		return name
	}
	return strings.Map(func(r rune) rune {
		switch r {
		case '.':
			return '/'
		case '/':
			return '.'
		}
		return r
	}, name)
}

// How the kernel reads a write to one of the keepalive sysctls.
const (
	// pageLimit is PAGE_SIZE - 1 with 4 KiB pages (x86-64, and arm64 as
	// cloud images build it): the kernel reads no further into one write.
	pageLimit = 4095
	// numberLimit is TMPBUFLEN - 1: a number this long, sign and 0x
	// included, is refused.
	numberLimit = 21
	// jiffiesLimit is INT_MAX / HZ for HZ 100, the smallest HZ of x86-64
	// and arm64 kernels. A kernel with a larger HZ refuses more (8589934 s
	// at HZ 250, 2147483 at HZ 1000), all far above any computed value:
	// such values are read here as large ones and replaced, which every
	// kernel accepts.
	jiffiesLimit = math.MaxInt32 / 100
)

// kernelDefaults are the values of a new network namespace, which a write
// of nothing leaves in place.
var kernelDefaults = map[string]int64{SysctlTime: 7200, SysctlInterval: 75, SysctlProbes: 9}

// ReadSysctl reads value as the kernel does when a container runtime writes
// it to a keepalive sysctl (os.WriteFile, a write loop), name in either
// form. ok is false when the write fails on every kernel, and the pod's
// sandbox with it; otherwise n is what the sysctl holds afterwards in a new
// network namespace. It also returns false for any other sysctl.
//
// tcp_keepalive_time and tcp_keepalive_intvl are proc_dointvec_jiffies;
// tcp_keepalive_probes is proc_dou8vec_minmax since Linux 5.13 and
// proc_dointvec before (5.10 and 5.4 are still common on nodes). All read
// one number as proc_get_long does: leading white space (isspace, Latin-1
// 0xA0 included) skipped, an optional '-', then base 0 (0x or 0X hex, a
// leading 0 octal), followed by the end or a space, tab or newline, after
// which the rest is ignored: proc_dou8vec_minmax takes the whole write,
// proc_dointvec and proc_dointvec_jiffies take the number and its trailing
// white space and the write loop sends the rest at a nonzero offset, which
// sysctl_writes_strict (1, the default) drops without an error. Empty is a
// write of nothing: accepted, the default stays. Refused: no digit after
// the spaces or the '-', '+', any other character right after the number,
// u64 overflow, a number of 21 characters or more; for time and interval a
// magnitude above INT_MAX/HZ; for probes a value outside the int range.
//
// A probes value with a '-' ('-0' included) or above 255 is read as a
// kernel before 5.13 holds it, although 5.13 and later refuse it: which
// kernel a pod lands on is not known at admission, and such a value, zero,
// negative or above 255, is never one the merge keeps: it is replaced,
// which every kernel accepts.
func ReadSysctl(name, value string) (n int64, ok bool) {
	name = NormalizeSysctlName(name)
	def, known := kernelDefaults[name]
	switch {
	case !known:
		return 0, false
	case value == "":
		return def, true
	}
	neg, mag, ok := procGetLong(value)
	limit := uint64(jiffiesLimit)
	if name == SysctlProbes {
		// proc_dointvec's bounds: INT_MIN..INT_MAX.
		limit = math.MaxInt32
		if neg {
			limit++
		}
	}
	switch {
	case !ok, mag > limit:
		return 0, false
	case neg:
		return -int64(mag), true
	}
	return int64(mag), true
}

// procGetLong reads the first number of a write as the kernel's
// proc_get_long does, after proc_skip_spaces.
func procGetLong(s string) (neg bool, n uint64, ok bool) {
	s = s[:min(len(s), pageLimit)]
	i := 0
	for i < len(s) && kernelSpace(s[i]) {
		i++
	}
	s = s[i:]
	if s == "" {
		return false, 0, false
	}
	tmp := s[:min(len(s), numberLimit)]
	p := 0
	if tmp[0] == '-' && len(s) > 1 {
		neg, p = true, 1
	}
	if p >= len(tmp) || !isDigit(tmp[p]) {
		return false, 0, false
	}
	// _parse_integer_fixup_radix with base 0.
	base := uint64(10)
	if tmp[p] == '0' {
		base = 8
		if p+2 < len(tmp) && tmp[p+1]|0x20 == 'x' && isHexDigit(tmp[p+2]) {
			base, p = 16, p+2
		}
	}
	overflow := false
	for ; p < len(tmp); p++ {
		d, isDigit := digitValue(tmp[p])
		if !isDigit || d >= base {
			break
		}
		if n > (math.MaxUint64-d)/base {
			overflow = true
		}
		n = n*base + d
	}
	if overflow || p == numberLimit {
		return false, 0, false
	}
	if p < len(s) && s[p] != ' ' && s[p] != '\t' && s[p] != '\n' {
		return false, 0, false
	}
	return neg, n, true
}

// kernelSpace is the kernel's isspace: ASCII white space and Latin-1's
// non-breaking space.
func kernelSpace(c byte) bool {
	return c == ' ' || c >= '\t' && c <= '\r' || c == 0xa0
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

func isHexDigit(c byte) bool { return isDigit(c) || c|0x20 >= 'a' && c|0x20 <= 'f' }

func digitValue(c byte) (uint64, bool) {
	switch {
	case isDigit(c):
		return uint64(c - '0'), true
	case c|0x20 >= 'a' && c|0x20 <= 'f':
		return uint64(c|0x20-'a') + 10, true
	}
	return 0, false
}

// refused describes entries the kernel refuses, for a warning.
func refused(invalid []corev1.Sysctl) string {
	parts := make([]string, len(invalid))
	for i, s := range invalid {
		parts[i] = fmt.Sprintf("%s=%q", s.Name, s.Value)
	}
	return "the kernel refuses " + strings.Join(parts, ", ") +
		" (the pod cannot start as written); set a decimal integer"
}
