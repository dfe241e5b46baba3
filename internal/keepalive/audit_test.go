package keepalive

import (
	"encoding/binary"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/keepalive-operator/keepalive-operator/api/v1alpha1"
	"github.com/keepalive-operator/keepalive-operator/internal/testobj"
)

// hexAddr writes an address as the kernel prints it in /proc/net/tcp: each
// 32-bit word of the address, read in this machine's byte order, in hex.
func hexAddr(a netip.Addr) string {
	raw := a.AsSlice()
	var b strings.Builder
	for w := 0; w < len(raw); w += 4 {
		b.WriteString(strings.ToUpper(hex8(binary.NativeEndian.Uint32(raw[w:]))))
	}
	return b.String()
}

func hex8(v uint32) string {
	const digits = "0123456789abcdef"
	out := make([]byte, 8)
	for i := 7; i >= 0; i-- {
		out[i], v = digits[v&0xf], v>>4
	}
	return string(out)
}

const procHeader = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"

func TestParseProcNetTCP(t *testing.T) {
	local4, remote4 := netip.MustParseAddr("10.0.0.7"), netip.MustParseAddr("203.0.113.2")
	local6, remote6 := netip.MustParseAddr("fd00::7"), netip.MustParseAddr("2001:db8::2")
	data := procHeader +
		// an established connection with its keepalive timer 174.50 s away
		"   0: " + hexAddr(local4) + ":A1B2 " + hexAddr(remote4) + ":1F90 01 00000000:00000000 02:0000442A 00000000  1000        0 4242 1 0000000000000000 20 4 30 10 -1\n" +
		// a listener
		"   1: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 17 1 0000000000000000 100 0 0 10 0\n"
	data6 := procHeader +
		"   0: " + hexAddr(local6) + ":0050 " + hexAddr(remote6) + ":D431 01 00000000:00000000 01:00000014 00000002     0        0 99 1 0000000000000000 20 4 30 10 -1\n"
	got, err := ParseProcNetTCP([]byte(data))
	if err != nil {
		t.Fatal(err)
	}
	got6, err := ParseProcNetTCP([]byte(data6))
	if err != nil {
		t.Fatal(err)
	}
	want := []Socket{
		{Local: netip.AddrPortFrom(local4, 0xA1B2), Remote: netip.AddrPortFrom(remote4, 8080), State: 1, Timer: TimerKeepalive, TimerTicks: 17450, Inode: 4242},
		{Local: netip.MustParseAddrPort("0.0.0.0:8080"), Remote: netip.MustParseAddrPort("0.0.0.0:0"), State: 10, Inode: 17},
		{Local: netip.AddrPortFrom(local6, 80), Remote: netip.AddrPortFrom(remote6, 0xD431), State: 1, Timer: TimerRetransmit, TimerTicks: 20, Inode: 99},
	}
	if diff := cmp.Diff(want, append(got, got6...), cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })); diff != "" {
		t.Errorf("ParseProcNetTCP (-want +got):\n%s", diff)
	}

	for name, bad := range map[string]string{
		"too few fields": procHeader + "   0: 0100007F:1F90 0100007F:A000 01\n",
		"address":        procHeader + "   0: 0100007:1F90 0100007F:A000 01 00000000:00000000 02:00000001 00000000 0 0 1\n",
		"timer":          procHeader + "   0: 0100007F:1F90 0100007F:A000 01 00000000:00000000 0200000001 00000000 0 0 1\n",
		"inode":          procHeader + "   0: 0100007F:1F90 0100007F:A000 01 00000000:00000000 02:00000001 00000000 0 0 x\n",
	} {
		if _, err := ParseProcNetTCP([]byte(bad)); err == nil {
			t.Errorf("%s: ParseProcNetTCP accepted %q", name, bad)
		}
	}
}

func TestConnections(t *testing.T) {
	ep := netip.MustParseAddrPort
	armed := Socket{Local: ep("10.0.0.7:40000"), Remote: ep("203.0.113.2:5432"), State: 1, Timer: TimerKeepalive, TimerTicks: 3000, Inode: 1}
	off := Socket{Local: ep("10.0.0.7:40001"), Remote: ep("203.0.113.2:5432"), State: 1, Inode: 2}
	loopback := Socket{Local: ep("127.0.0.1:40002"), Remote: ep("127.0.0.1:15001"), State: 1, Inode: 3}
	loopback6 := Socket{Local: ep("[::1]:40003"), Remote: ep("[::1]:15001"), State: 1, Inode: 4}
	listener := Socket{Local: ep("0.0.0.0:8080"), Remote: ep("0.0.0.0:0"), State: 10, Inode: 5}
	timeWait := Socket{Local: ep("10.0.0.7:40004"), Remote: ep("203.0.113.2:5432"), State: 6, Timer: TimerTimeWait, TimerTicks: 100}

	conns, seen := Connections([]Socket{armed, off, loopback, loopback6, listener, timeWait}, nil)
	if diff := cmp.Diff([]Connection{{armed, 3000}, {off, 0}}, conns, cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })); diff != "" {
		t.Errorf("first read (-want +got):\n%s", diff)
	}
	// Later the timer is nearer: the socket's idle time is still at least
	// the 30 s seen first. A socket gone is forgotten.
	later := armed
	later.TimerTicks = 500
	conns, seen = Connections([]Socket{later}, seen)
	if len(conns) != 1 || conns[0].LongestTicks != 3000 {
		t.Errorf("second read: %+v, want the 3000 ticks of the first read carried over", conns)
	}
	if len(seen) != 1 {
		t.Errorf("%d sockets remembered, want 1", len(seen))
	}
	// A new socket on the same ends (another inode) starts afresh.
	reused := later
	reused.Inode = 9
	if conns, _ := Connections([]Socket{reused}, seen); conns[0].LongestTicks != 500 {
		t.Errorf("a new socket took over another's timer: %+v", conns[0])
	}
}

func TestConnectionState(t *testing.T) {
	cases := map[string]struct {
		timer   int
		longest int64
		want    ConnState
	}{
		"keepalive within the time":    {TimerKeepalive, 17500, ConnArmed},
		"keepalive just at the time":   {TimerKeepalive, 17500, ConnArmed},
		"keepalive further off":        {TimerKeepalive, 17501, ConnArmedLate},
		"kernel default of two hours":  {TimerKeepalive, 719900, ConnArmedLate},
		"no timer":                     {TimerNone, 0, ConnNotArmed},
		"no timer now, keepalive seen": {TimerNone, 3000, ConnNotArmed},
		"retransmission hides it":      {TimerRetransmit, 17000, ConnUnknown},
		"zero-window probe hides it":   {TimerZeroWindow, 0, ConnUnknown},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			c := Connection{Socket: Socket{State: 1, Timer: tc.timer}, LongestTicks: tc.longest}
			if got := c.State(175); got != tc.want {
				t.Errorf("State(175) = %s, want %s", got, tc.want)
			}
		})
	}
}

func TestAuditPod(t *testing.T) {
	conns := []Connection{
		{Socket: Socket{State: 1, Timer: TimerKeepalive}, LongestTicks: 1500},  // 15 s, Go's own
		{Socket: Socket{State: 1, Timer: TimerKeepalive}, LongestTicks: 17500}, // 175 s, the sysctl
		{Socket: Socket{State: 1}},
		{Socket: Socket{State: 1, Timer: TimerRetransmit}},
	}
	nlb := mustPolicy(t, testobj.Spec().Preset(v1alpha1.PresetAWSNLB).Policy("shop", "nlb"))             // 175 s
	short := mustPolicy(t, testobj.Spec().Custom("fw", 60).Policy("shop", "firewall"))                   // 30 s
	other := mustPolicy(t, testobj.Spec().Custom("fw", 60).Policy("elsewhere", "firewall"))              // another namespace
	all := mustClusterPolicy(t, testobj.Spec().Preset(v1alpha1.PresetAzureLB).ClusterPolicy("all", nil)) // 120 s
	target := Target{Namespace: "shop", Labels: map[string]string{"app": "api"}}

	got := AuditPod(target, conns, []Policy{nlb, other, short}, []Policy{all})
	want := []v1alpha1.PolicyConnections{
		{Policy: "KeepalivePolicy/shop/firewall", TimeSeconds: 30, ConnectionCounts: v1alpha1.ConnectionCounts{Armed: 1, ArmedLate: 1, NotArmed: 1, Unknown: 1}},
		{Policy: "ClusterKeepalivePolicy/all", TimeSeconds: 120, ConnectionCounts: v1alpha1.ConnectionCounts{Armed: 1, ArmedLate: 1, NotArmed: 1, Unknown: 1}},
		{Policy: "KeepalivePolicy/shop/nlb", TimeSeconds: 175, ConnectionCounts: v1alpha1.ConnectionCounts{Armed: 2, NotArmed: 1, Unknown: 1}},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("AuditPod (-want +got):\n%s", diff)
	}
	if first, _ := Select(target, []Policy{nlb, other, short}, []Policy{all}); first.Ref.String() != got[0].Policy {
		t.Errorf("the first entry is %s, but %s governs the pod", got[0].Policy, first.Ref)
	}
	if got := AuditPod(Target{Namespace: "none"}, conns, []Policy{nlb}); len(got) != 0 {
		t.Errorf("a pod no policy selects got %v", got)
	}
}
