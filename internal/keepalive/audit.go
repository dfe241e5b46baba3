package keepalive

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net/netip"
	"slices"
	"strconv"

	"github.com/keepalive-operator/keepalive-operator/api/v1alpha1"
)

// ConnState is what the audit finds of one established connection.
type ConnState string

// The states of a connection, as counted in v1alpha1.ConnectionCounts.
const (
	// ConnArmed: the keepalive timer is pending and fires within the
	// policy's time.
	ConnArmed ConnState = "armed"
	// ConnArmedLate: the keepalive timer was seen further off than the
	// policy's time, so the socket waits longer than the middleboxes allow.
	ConnArmedLate ConnState = "armedLate"
	// ConnNotArmed: no timer, so SO_KEEPALIVE is off.
	ConnNotArmed ConnState = "notArmed"
	// ConnUnknown: a retransmission or zero-window probe timer hides the
	// keepalive timer.
	ConnUnknown ConnState = "unknown"
)

// ConnStates are the states in the order they are reported.
var ConnStates = []ConnState{ConnArmed, ConnArmedLate, ConnNotArmed, ConnUnknown}

// The pending timer of a socket, the "tr" column of /proc/net/tcp.
const (
	TimerNone       = 0 // nothing pending
	TimerRetransmit = 1 // retransmission, reordering or loss probe
	TimerKeepalive  = 2 // sk_timer: for an established socket, keepalive
	TimerTimeWait   = 3
	TimerZeroWindow = 4 // zero-window probe
)

// tcpEstablished is TCP_ESTABLISHED, the "st" column.
const tcpEstablished = 1

// TicksPerSecond is USER_HZ, the unit of the "tm->when" column.
const TicksPerSecond = 100

// Socket is a TCP socket as a line of /proc/<pid>/net/tcp or tcp6 shows
// it: its ends, state and pending timer. The file holds no payload.
type Socket struct {
	Local, Remote netip.AddrPort
	State         int
	Timer         int
	// TimerTicks is how long until the timer fires, in 1/100 s.
	TimerTicks int64
	Inode      uint64
}

// ParseProcNetTCP reads /proc/<pid>/net/tcp or tcp6. Addresses are in the
// byte order of the machine that wrote the file, this one's.
func ParseProcNetTCP(data []byte) ([]Socket, error) {
	var out []Socket
	for i, line := range bytes.Split(data, []byte("\n")) {
		f := bytes.Fields(line)
		if i == 0 || len(f) == 0 {
			continue // header
		}
		if len(f) < 10 {
			return nil, fmt.Errorf("line %d: %d fields, want at least 10", i+1, len(f))
		}
		var s Socket
		var err error
		if s.Local, err = parseEndpoint(f[1]); err != nil {
			return nil, fmt.Errorf("line %d: local address: %w", i+1, err)
		}
		if s.Remote, err = parseEndpoint(f[2]); err != nil {
			return nil, fmt.Errorf("line %d: remote address: %w", i+1, err)
		}
		st, err := strconv.ParseUint(string(f[3]), 16, 8)
		if err != nil {
			return nil, fmt.Errorf("line %d: state: %w", i+1, err)
		}
		s.State = int(st)
		tr, when, ok := bytes.Cut(f[5], []byte(":"))
		if !ok {
			return nil, fmt.Errorf("line %d: timer %q", i+1, f[5])
		}
		timer, err := strconv.ParseUint(string(tr), 16, 8)
		if err != nil {
			return nil, fmt.Errorf("line %d: timer: %w", i+1, err)
		}
		s.Timer = int(timer)
		ticks, err := strconv.ParseUint(string(when), 16, 64)
		if err != nil {
			return nil, fmt.Errorf("line %d: timer expiry: %w", i+1, err)
		}
		s.TimerTicks = int64(min(ticks, 1<<62))
		if s.Inode, err = strconv.ParseUint(string(f[9]), 10, 64); err != nil {
			return nil, fmt.Errorf("line %d: inode: %w", i+1, err)
		}
		out = append(out, s)
	}
	return out, nil
}

// parseEndpoint reads ADDR:PORT, the address as 8 or 32 hex digits of
// 32-bit words in machine order, the port in hex.
func parseEndpoint(b []byte) (netip.AddrPort, error) {
	a, p, ok := bytes.Cut(b, []byte(":"))
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("%q: no port", b)
	}
	port, err := strconv.ParseUint(string(p), 16, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%q: port: %w", b, err)
	}
	raw, err := hex.DecodeString(string(a))
	if err != nil || len(raw) != 4 && len(raw) != 16 {
		return netip.AddrPort{}, fmt.Errorf("%q: not an IPv4 or IPv6 address", b)
	}
	var ip [16]byte
	for w := 0; w < len(raw); w += 4 {
		binary.NativeEndian.PutUint32(ip[w:], binary.BigEndian.Uint32(raw[w:]))
	}
	addr := netip.AddrFrom16(ip)
	if len(raw) == 4 {
		addr = netip.AddrFrom4([4]byte(ip[:4]))
	}
	return netip.AddrPortFrom(addr.Unmap(), uint16(port)), nil
}

// SocketKey tells one socket from another across reads.
type SocketKey struct {
	Inode         uint64
	Local, Remote netip.AddrPort
}

// Connection is an established connection that can cross a middlebox, with
// the furthest-off keepalive timer seen on it.
type Connection struct {
	Socket
	// LongestTicks is the longest time to the keepalive timer seen on the
	// socket, in any read: the socket waits at least that long when idle.
	LongestTicks int64
}

// Connections picks the established connections that leave the pod out of
// the sockets of one read. A keepalive timer counts down from the socket's
// idle time and one read sees it anywhere on the way, so the furthest-off
// timer of earlier reads (seen, by socket) is carried over; the returned map
// holds it for the sockets still there. Loopback connections are left out:
// no middlebox is on their path.
func Connections(socks []Socket, seen map[SocketKey]int64) ([]Connection, map[SocketKey]int64) {
	next := map[SocketKey]int64{}
	var out []Connection
	for _, s := range socks {
		if s.State != tcpEstablished || s.Remote.Addr().IsLoopback() {
			continue
		}
		key := SocketKey{s.Inode, s.Local, s.Remote}
		c := Connection{Socket: s, LongestTicks: seen[key]}
		if s.Timer == TimerKeepalive {
			c.LongestTicks = max(c.LongestTicks, s.TimerTicks)
		}
		if c.LongestTicks > 0 {
			next[key] = c.LongestTicks
		}
		out = append(out, c)
	}
	return out, next
}

// State judges the connection against a policy's keepalive time.
func (c Connection) State(timeSeconds int32) ConnState {
	switch c.Timer {
	case TimerKeepalive:
		if c.LongestTicks > int64(timeSeconds)*TicksPerSecond {
			return ConnArmedLate
		}
		return ConnArmed
	case TimerNone:
		return ConnNotArmed
	}
	return ConnUnknown
}

// Count adds a connection in the state to the counts.
func Count(c *v1alpha1.ConnectionCounts, s ConnState) {
	switch s {
	case ConnArmed:
		c.Armed++
	case ConnArmedLate:
		c.ArmedLate++
	case ConnNotArmed:
		c.NotArmed++
	case ConnUnknown:
		c.Unknown++
	}
}

// AddCounts adds b to a.
func AddCounts(a *v1alpha1.ConnectionCounts, b v1alpha1.ConnectionCounts) {
	a.Armed += b.Armed
	a.ArmedLate += b.ArmedLate
	a.NotArmed += b.NotArmed
	a.Unknown += b.Unknown
}

// Audited reports whether the audit reads a pod's sockets: a pod on the
// host's network has none of its own.
func Audited(pod PodView) bool { return !pod.HostNetwork }

// AuditPod judges a pod's connections against every policy in the lists
// that selects it, in the order of Select (the governing policy first).
func AuditPod(t Target, conns []Connection, lists ...[]Policy) []v1alpha1.PolicyConnections {
	var pols []*Policy
	for _, policies := range lists {
		for i := range policies {
			if p := &policies[i]; p.Applies(t) {
				pols = append(pols, p)
			}
		}
	}
	slices.SortFunc(pols, func(a, b *Policy) int {
		switch {
		case precedes(a, b):
			return -1
		case precedes(b, a):
			return 1
		}
		return 0
	})
	out := make([]v1alpha1.PolicyConnections, 0, len(pols))
	for _, p := range pols {
		pc := v1alpha1.PolicyConnections{Policy: p.name, TimeSeconds: p.Result.Values.TimeSeconds}
		for _, c := range conns {
			Count(&pc.ConnectionCounts, c.State(pc.TimeSeconds))
		}
		out = append(out, pc)
	}
	return out
}
