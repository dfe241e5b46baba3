package netlab

import (
	"errors"
	"fmt"
	"math"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/keepalive-operator/keepalive-operator/internal/keepalive"
)

// kernelDefaults are the keepalive values of a new network namespace.
var kernelDefaults = map[string]string{
	keepalive.SysctlTime:     "7200",
	keepalive.SysctlInterval: "75",
	keepalive.SysctlProbes:   "9",
}

// kernelSysctls writes the keepalive sysctls of a network namespace of its
// own, from the one thread that lives in it.
type kernelSysctls struct {
	host  string // the network namespace the thread started in
	calls chan func()
	// jiffiesMax is the largest tcp_keepalive_time this kernel accepts,
	// INT_MAX / HZ.
	jiffiesMax int64
	// probesU8 is whether tcp_keepalive_probes is a u8 here (Linux 5.13
	// and later) rather than an int.
	probesU8 bool
}

// newKernelSysctls unshares a network namespace on a thread of its own, or
// skips where the machine cannot; with KEEPALIVE_LAB_REQUIRED=1 it fails
// instead. The thread never leaves the namespace: it ends with the test, and
// the namespace with it, so nothing is left behind even if the process is
// killed, and the host's own sysctls are out of its reach.
func newKernelSysctls(tb testing.TB) *kernelSysctls {
	tb.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("KEEPALIVE_LAB_REQUIRED") == "1" {
			tb.Fatal("the kernel comparison needs root")
		}
		tb.Skip("the kernel comparison needs root; skipped (KEEPALIVE_LAB_REQUIRED=1 makes this a failure)")
	}
	k := &kernelSysctls{calls: make(chan func())}
	started := make(chan error)
	go func() {
		// Never unlocked: the thread exits with this goroutine.
		runtime.LockOSThread()
		host, err := threadNetns()
		if err == nil {
			err = unix.Unshare(unix.CLONE_NEWNET)
		}
		if err == nil {
			k.host = host
			err = k.checkOwn()
		}
		started <- err
		if err != nil {
			return
		}
		for fn := range k.calls {
			fn()
		}
	}()
	if err := <-started; err != nil {
		tb.Fatalf("unshare a network namespace: %v", err)
	}
	tb.Cleanup(func() { close(k.calls) })
	host := hostKeepalive(tb)
	tb.Cleanup(func() {
		if after := hostKeepalive(tb); after != host {
			tb.Errorf("the host's keepalive sysctls changed from %s to %s", host, after)
		}
	})

	// A new namespace starts with the kernel's defaults.
	for name, want := range kernelDefaults {
		if got, err := k.read(name); err != nil || strconv.FormatInt(got, 10) != want {
			tb.Fatalf("a new namespace has %s=%d (%v), want %s", name, got, err, want)
		}
	}
	// tcp_keepalive_time is stored in jiffies: find the largest value this
	// kernel accepts.
	lo, hi := int64(1), int64(math.MaxInt32)
	for lo+1 < hi {
		mid := lo + (hi-lo)/2
		accepted, _, err := k.write(keepalive.SysctlTime, strconv.FormatInt(mid, 10))
		if err != nil {
			tb.Fatal(err)
		}
		if accepted {
			lo = mid
		} else {
			hi = mid
		}
	}
	k.jiffiesMax = lo
	accepted, _, err := k.write(keepalive.SysctlProbes, "256")
	if err != nil {
		tb.Fatal(err)
	}
	k.probesU8 = !accepted
	return k
}

// hostKeepalive reads the keepalive sysctls of the test's own namespace.
func hostKeepalive(tb testing.TB) string {
	var out []string
	for _, name := range []string{keepalive.SysctlTime, keepalive.SysctlInterval, keepalive.SysctlProbes} {
		raw, err := os.ReadFile(sysctlPath(name))
		if err != nil {
			tb.Fatal(err)
		}
		out = append(out, strings.TrimSpace(string(raw)))
	}
	return strings.Join(out, "/")
}

func threadNetns() (string, error) { return os.Readlink("/proc/thread-self/ns/net") }

// checkOwn fails unless the calling thread is in the namespace of its own.
func (k *kernelSysctls) checkOwn() error {
	ns, err := threadNetns()
	if err != nil {
		return err
	}
	if ns == k.host {
		return errors.New("the thread is in the host's network namespace")
	}
	return nil
}

// do runs fn on the namespace's thread.
func (k *kernelSysctls) do(fn func() error) error {
	errc := make(chan error, 1)
	k.calls <- func() {
		if err := k.checkOwn(); err != nil {
			errc <- err
			return
		}
		errc <- fn()
	}
	return <-errc
}

func sysctlPath(name string) string { return "/proc/sys/" + strings.ReplaceAll(name, ".", "/") }

func (k *kernelSysctls) read(name string) (n int64, err error) {
	err = k.do(func() error {
		raw, err := os.ReadFile(sysctlPath(name))
		if err != nil {
			return err
		}
		n, err = strconv.ParseInt(strings.TrimSpace(string(raw)), 10, 64)
		return err
	})
	return n, err
}

// write sets the sysctl back to its default, then writes value as runc
// does (os.WriteFile), and returns whether the kernel accepted it and what
// the sysctl holds afterwards.
func (k *kernelSysctls) write(name, value string) (accepted bool, n int64, err error) {
	err = k.do(func() error {
		path := sysctlPath(name)
		if err := os.WriteFile(path, []byte(kernelDefaults[name]), 0o644); err != nil {
			return fmt.Errorf("reset %s: %w", name, err)
		}
		werr := os.WriteFile(path, []byte(value), 0o644)
		if werr != nil && !errors.Is(werr, unix.EINVAL) {
			return fmt.Errorf("write %s=%q: %w", name, value, werr)
		}
		accepted = werr == nil
		raw, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		n, err = strconv.ParseInt(strings.TrimSpace(string(raw)), 10, 64)
		return err
	})
	return accepted, n, err
}

// sysctlSeeds are values a pod may carry, each with a reason to be here.
var sysctlSeeds = []string{
	"100", " 100 ", "0x10", "0X1f", "010", "+100", "1e3", "", "100abc", "-5", "0", "-0", "-0x10",
	"   ", "\t\n\r\v100", "\xa0100", "\u00a0100", "100\n", "100\r", "100\xa0", "100\x00",
	"100 abc", "100 200", "100\t200", "08", "0x", "0x1g", "-", "--5", "- 5", "1.5", "soon",
	"255", "256", "2147483", "2147484", "8589934", "8589935", "21474836", "21474837", "-21474837",
	"2147483647", "2147483648", "-2147483648", "-2147483649",
	"4294967295", "4294967296", "18446744073709551615", "18446744073709551616",
	"00000000000000000100", "000000000000000000100", "0x000000000000000064", "0x0000000000000000064",
	"-0000000000000000064", "-00000000000000000064",
	strings.Repeat(" ", 4092) + "100", strings.Repeat(" ", 4094) + "100", strings.Repeat(" ", 4095) + "100",
	"100" + strings.Repeat(" ", 5000) + "abc",
}

// FuzzReadSysctl writes each value to the keepalive sysctls of a real
// kernel and compares what it does with keepalive.ReadSysctl. The domain
// reads tcp_keepalive_time and _intvl as a kernel with HZ 100 does; a kernel
// with a larger HZ also refuses what lies above its own INT_MAX / HZ.
//
// The domain reads tcp_keepalive_probes as a kernel before 5.13 does, an
// int. Where it is a u8 (5.13 and later), the kernel also refuses a '-'
// and values above 255, which the domain reads: a deliberate difference,
// since the merge replaces such a value and the replacement is valid on
// every kernel. There the comparison checks that the domain read it as
// the kernel reads the int tcp_keepalive_time, which takes the same syntax
// (proc_dointvec, as probes before 5.13), and that the merge would replace
// it.
func FuzzReadSysctl(f *testing.F) {
	for _, s := range sysctlSeeds {
		f.Add(s)
	}
	k := newKernelSysctls(f)
	if k.jiffiesMax > math.MaxInt32/100 {
		f.Fatalf("this kernel accepts tcp_keepalive_time up to %d, more than the domain's INT_MAX/100", k.jiffiesMax)
	}
	f.Logf("this kernel accepts tcp_keepalive_time up to %d s (HZ %d), tcp_keepalive_probes as a u8: %v",
		k.jiffiesMax, math.MaxInt32/k.jiffiesMax, k.probesU8)
	f.Fuzz(func(t *testing.T, value string) {
		for _, name := range []string{keepalive.SysctlTime, keepalive.SysctlInterval, keepalive.SysctlProbes} {
			accepted, got, err := k.write(name, value)
			if err != nil {
				t.Fatal(err)
			}
			n, ok := keepalive.ReadSysctl(name, value)
			domain := ok && (name == keepalive.SysctlProbes || max(n, -n) <= k.jiffiesMax)
			if name == keepalive.SysctlProbes && k.probesU8 && ok && !accepted {
				k.checkU8Refusal(t, value, n)
				continue
			}
			switch {
			case accepted != domain:
				t.Errorf("%s=%q: the kernel accepts it: %v (reads %d); ReadSysctl: %d, %v", name, value, accepted, got, n, ok)
			case accepted && got != n:
				t.Errorf("%s=%q: the kernel reads %d, ReadSysctl %d", name, value, got, n)
			case !accepted && strconv.FormatInt(got, 10) != kernelDefaults[name]:
				t.Errorf("%s=%q: refused, yet the sysctl changed to %d", name, value, got)
			}
		}
	})
}

// checkU8Refusal checks a probes value that a u8 kernel refuses and the
// domain reads: the merge must replace it, and the int tcp_keepalive_time of
// this kernel, where its magnitude fits, must read it the same.
func (k *kernelSysctls) checkU8Refusal(t *testing.T, value string, n int64) {
	t.Helper()
	if n >= 1 && n <= math.MaxUint8 {
		t.Errorf("%s=%q: the kernel refuses it, ReadSysctl reads %d, which the merge may keep", keepalive.SysctlProbes, value, n)
	}
	if max(n, -n) > k.jiffiesMax {
		return
	}
	accepted, got, err := k.write(keepalive.SysctlTime, value)
	switch {
	case err != nil:
		t.Fatal(err)
	case !accepted || got != n:
		t.Errorf("%s=%q: ReadSysctl reads %d; %s accepts it: %v (reads %d)", keepalive.SysctlProbes, value, n, keepalive.SysctlTime, accepted, got)
	}
}
