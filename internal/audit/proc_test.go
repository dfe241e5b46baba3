package audit

import (
	"net"
	"net/netip"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/keepalive-operator/keepalive-operator/internal/keepalive"
)

func TestPodUIDOf(t *testing.T) {
	const uid = "0f6c7a0e-5d1b-4c3e-9a4f-2b8d6e1c7a90"
	cases := map[string]struct {
		cgroup, want string
	}{
		"cgroup v1, cgroupfs driver": {"12:memory:/kubepods/besteffort/pod" + uid + "/3c1e9f\n11:pids:/kubepods/besteffort/pod" + uid + "/3c1e9f\n", uid},
		"cgroup v1, guaranteed":      {"4:cpu,cpuacct:/kubepods/pod" + uid + "/abc\n", uid},
		"cgroup v2, systemd driver": {"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0f6c7a0e_5d1b_4c3e_9a4f_2b8d6e1c7a90.slice/cri-containerd-3c1e9f.scope\n",
			uid},
		"a host process":            {"0::/system.slice/containerd.service\n", ""},
		"a pod-like name elsewhere": {"0::/user.slice/pod" + uid + "\n", ""},
		"empty":                     {"", ""},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			if got := PodUIDOf([]byte(tc.cgroup)); got != tc.want {
				t.Errorf("PodUIDOf = %q, want %q", got, tc.want)
			}
		})
	}
}

// TestReadSocketsOfRealConnections reads this process's own connections
// from the kernel, one with keepalive at a per-socket 30 s, one without.
func TestReadSocketsOfRealConnections(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	dial := func(ka net.KeepAliveConfig) *net.TCPConn {
		d := net.Dialer{KeepAliveConfig: ka}
		if !ka.Enable {
			d.KeepAlive = -1
		}
		c, err := d.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c.(*net.TCPConn)
	}
	on := dial(net.KeepAliveConfig{Enable: true, Idle: 30 * time.Second, Interval: 5 * time.Second, Count: 3})
	off := dial(net.KeepAliveConfig{})

	socks, err := ReadSockets("/proc", os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	find := func(c *net.TCPConn) keepalive.Socket {
		t.Helper()
		local := c.LocalAddr().(*net.TCPAddr).AddrPort()
		for _, s := range socks {
			if s.Local == netip.AddrPortFrom(local.Addr().Unmap(), local.Port()) && s.Remote == ln.Addr().(*net.TCPAddr).AddrPort() {
				return s
			}
		}
		t.Fatalf("no socket %s -> %s among the %d read", local, ln.Addr(), len(socks))
		return keepalive.Socket{}
	}
	s := find(on)
	if s.State != 1 || s.Timer != keepalive.TimerKeepalive {
		t.Errorf("keepalive socket: state %d timer %d, want established (1) with the keepalive timer (2)", s.State, s.Timer)
	}
	if s.TimerTicks <= 25*keepalive.TicksPerSecond || s.TimerTicks > 30*keepalive.TicksPerSecond {
		t.Errorf("keepalive timer %d ticks away, want within 30 s and more than 25", s.TimerTicks)
	}
	if raw, err := on.SyscallConn(); err == nil {
		var inode uint64
		_ = raw.Control(func(fd uintptr) {
			var st syscall.Stat_t
			if syscall.Fstat(int(fd), &st) == nil {
				inode = st.Ino
			}
		})
		if inode != s.Inode {
			t.Errorf("inode %d, the socket's is %d", s.Inode, inode)
		}
	}
	if s := find(off); s.State != 1 || s.Timer != keepalive.TimerNone {
		t.Errorf("socket without keepalive: state %d timer %d, want established with no timer", s.State, s.Timer)
	}
	// Loopback connections are left out of the audit: no middlebox is on
	// their path.
	if conns, _ := keepalive.Connections(socks, nil); len(conns) != 0 {
		t.Errorf("loopback connections audited: %+v", conns)
	}
}

func TestReadSocketsOfAGoneProcess(t *testing.T) {
	if _, err := ReadSockets(t.TempDir(), 1); err == nil {
		t.Error("ReadSockets of a process that is not there succeeded")
	}
}
