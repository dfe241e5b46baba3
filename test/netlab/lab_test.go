package netlab

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/keepalive-operator/keepalive-operator/internal/keepalive"
	"github.com/keepalive-operator/keepalive-operator/internal/testobj"
)

// T is the middlebox's idle timeout in the lab, scaled down from the
// 350 s of an NLB so that the lab runs in about half a minute.
const T = 6

// serverPort is the port of the lab's server.
const serverPort = "8080"

type reportLine struct {
	order                             int
	scenario, values, result, timings string
}

var (
	reportMu sync.Mutex
	report   []reportLine
)

// record adds a scenario's line to the report, which lists them by order.
func record(order int, scenario, values, result, timings string) {
	reportMu.Lock()
	defer reportMu.Unlock()
	report = append(report, reportLine{order, scenario, values, result, timings})
}

func TestMain(m *testing.M) {
	code := m.Run()
	sort.Slice(report, func(i, j int) bool { return report[i].order < report[j].order })
	if len(report) > 0 {
		fmt.Printf("\nPROOF ON THE WIRE: a middlebox that forgets TCP flows idle for T=%d s and resets what it forgot\n", T)
		tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "SCENARIO\tKEEPALIVE (time/intvl/probes)\tRESULT\tMEASURED")
		for _, r := range report {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.scenario, r.values, r.result, r.timings)
		}
		_ = tw.Flush()
	}
	printAuditReport()
	os.Exit(code)
}

// newLab builds a lab for the test, or skips it where the machine cannot;
// with KEEPALIVE_LAB_REQUIRED=1 (as in CI) it fails instead.
func newLab(t *testing.T) *Lab {
	t.Helper()
	if missing := Requirements(); missing != "" {
		if os.Getenv("KEEPALIVE_LAB_REQUIRED") == "1" {
			t.Fatalf("the network lab needs %s", missing)
		}
		t.Skipf("the network lab needs %s; skipped (KEEPALIVE_LAB_REQUIRED=1 makes this a failure)", missing)
	}
	l, err := New(T)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.Close)
	return l
}

// sysctlsKeepalive leaves the socket's keepalive to the namespace's sysctls,
// as the README tells Go programs to.
var sysctlsKeepalive = net.KeepAliveConfig{Enable: true, Idle: -1, Interval: -1, Count: -1}

// serve answers every line with "ok" on the server side of the lab.
func serve(t *testing.T, l *Lab, ka net.KeepAliveConfig) {
	t.Helper()
	var ln net.Listener
	err := In(l.Server, func() (err error) {
		ln, err = (&net.ListenConfig{KeepAliveConfig: ka, KeepAlive: keepAliveOff(ka)}).Listen(context.Background(), "tcp", ServerIP+":"+serverPort)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				r := bufio.NewReader(conn)
				for {
					if _, err := r.ReadString('\n'); err != nil {
						return
					}
					if _, err := conn.Write([]byte("ok\n")); err != nil {
						return
					}
				}
			}()
		}
	}()
}

// keepAliveOff is -1 (no keepalive) when the config does not enable it.
func keepAliveOff(ka net.KeepAliveConfig) time.Duration {
	if ka.Enable {
		return 0
	}
	return -1
}

// dial connects from the client side of the lab.
func dial(t *testing.T, l *Lab, ka net.KeepAliveConfig) (net.Conn, *bufio.Reader) {
	t.Helper()
	var conn net.Conn
	err := In(l.Client, func() (err error) {
		conn, err = (&net.Dialer{Timeout: 5 * time.Second, KeepAliveConfig: ka, KeepAlive: keepAliveOff(ka)}).Dial("tcp", ServerIP+":"+serverPort)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn, bufio.NewReader(conn)
}

// request sends a line and reads the answer, within 5 seconds.
func request(conn net.Conn, r *bufio.Reader) error {
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Write([]byte("ping\n")); err != nil {
		return err
	}
	line, err := r.ReadString('\n')
	if err == nil && line != "ok\n" {
		err = fmt.Errorf("unexpected answer %q", line)
	}
	return err
}

// probes returns when, after start, the pure ACKs from the given address
// crossed the middlebox: on an idle connection, keepalive probes.
func probes(packets []Packet, from string, start time.Time) []time.Duration {
	var out []time.Duration
	for _, p := range packets {
		if p.PureACK() && strings.HasPrefix(p.Src, from+":") && p.At.After(start) {
			out = append(out, p.At.Sub(start).Round(100*time.Millisecond))
		}
	}
	return out
}

func timeline(ds []time.Duration) string {
	if len(ds) == 0 {
		return "no probes"
	}
	parts := make([]string, len(ds))
	for i, d := range ds {
		parts[i] = fmt.Sprintf("%.1f", d.Seconds())
	}
	return "probes at " + strings.Join(parts, ", ") + " s"
}

// operatorValues are the values internal/keepalive computes for a custom
// hop of T seconds.
func operatorValues(t *testing.T) keepalive.Values {
	t.Helper()
	res, err := keepalive.Compute(testobj.Spec().Custom("lab-middlebox", T).Obj())
	if err != nil {
		t.Fatal(err)
	}
	return res.Values
}

func describeValues(v keepalive.Values) string {
	return fmt.Sprintf("%d/%d/%d", v.TimeSeconds, v.IntervalSeconds, v.Probes)
}

// idleClient connects, idles, and requests again; it returns the client's
// probes seen meanwhile and the error of the second request.
func idleClient(t *testing.T, l *Lab, idle time.Duration) ([]time.Duration, error) {
	t.Helper()
	conn, r := dial(t, l, sysctlsKeepalive)
	if err := request(conn, r); err != nil {
		t.Fatalf("first request: %v", err)
	}
	capture, err := l.Capture(l.Middlebox)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_ = conn.SetDeadline(time.Time{})
	time.Sleep(idle)
	seen := probes(capture.Stop(), ClientIP, start)
	t.Logf("idle %v: %s", idle, timeline(seen))
	return seen, request(conn, r)
}

func TestKernelDefaultsLoseTheIdleFlow(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	serve(t, l, sysctlsKeepalive)
	idle := (T + 3) * time.Second
	seen, err := idleClient(t, l, idle)
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("after %v idle with the kernel defaults, want the middlebox's reset, got %v", idle, err)
	}
	if len(seen) != 0 {
		t.Errorf("the kernel defaults sent probes within %v: %v", idle, seen)
	}
	record(1, "kernel defaults", "7200/75/9", "reset (ECONNRESET)", fmt.Sprintf("request after %v idle; %s", idle, timeline(seen)))
}

func TestOperatorValuesKeepTheIdleFlow(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	v := operatorValues(t)
	keepsIdleFlow(t, l, v, 2, "operator values, custom hop of T")
}

// keepsIdleFlow gives the client namespace the values and checks that a
// connection outlives 3×T of idleness, with a probe every time seconds.
func keepsIdleFlow(t *testing.T, l *Lab, v keepalive.Values, order int, scenario string) {
	t.Helper()
	if err := l.SetSysctls(l.Client, v.Sysctls()); err != nil {
		t.Fatal(err)
	}
	serve(t, l, sysctlsKeepalive)
	idle := 3 * T * time.Second
	seen, err := idleClient(t, l, idle)
	if err != nil {
		t.Fatalf("after %v idle with %s, the request failed: %v", idle, describeValues(v), err)
	}
	checkProbes(t, seen, v, idle)
	record(order, scenario, describeValues(v), "alive", fmt.Sprintf("request after %v idle; %s", idle, timeline(seen)))
}

// checkProbes holds the probes to the values: the first at time seconds,
// then one every time seconds (each answered, so the idle clock restarts).
func checkProbes(t *testing.T, seen []time.Duration, v keepalive.Values, idle time.Duration) {
	t.Helper()
	every := time.Duration(v.TimeSeconds) * time.Second
	if len(seen) == 0 {
		t.Fatal("no keepalive probe crossed the middlebox")
	}
	if seen[0] < every-500*time.Millisecond || seen[0] > every+time.Second {
		t.Errorf("first probe at %v, want about %v", seen[0], every)
	}
	if want := int(idle/every) - 1; len(seen) < want {
		t.Errorf("%d probes in %v, want at least %d", len(seen), idle, want)
	}
}

func TestDeadPeerDetectedWithinDetectionSeconds(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	v := operatorValues(t)
	if err := l.SetSysctls(l.Client, v.Sysctls()); err != nil {
		t.Fatal(err)
	}
	serve(t, l, sysctlsKeepalive)
	conn, r := dial(t, l, sysctlsKeepalive)
	if err := request(conn, r); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetDeadline(time.Time{})
	capture, err := l.Capture(l.Middlebox)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Blackhole(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = r.ReadString('\n') // blocks until the kernel gives up on the peer
	took := time.Since(start)
	seen := probes(capture.Stop(), ClientIP, start)
	t.Logf("connection failed after %v: %v; %s", took, err, timeline(seen))
	if !errors.Is(err, syscall.ETIMEDOUT) {
		t.Fatalf("want the socket to time out, got %v", err)
	}
	earliest := time.Duration(v.TimeSeconds) * time.Second
	latest := time.Duration(v.DetectionSeconds())*time.Second + 2*time.Second
	if took < earliest || took > latest {
		t.Errorf("dead peer reported after %v, want between %v (time) and %v (detectionSeconds + 2 s)", took.Round(100*time.Millisecond), earliest, latest)
	}
	if len(seen) != int(v.Probes) {
		t.Errorf("%d unanswered probes, want %d", len(seen), v.Probes)
	}
	record(5, "dead peer (middlebox drops all)", describeValues(v), "ETIMEDOUT",
		fmt.Sprintf("after %.1f s (detectionSeconds %d); %s", took.Seconds(), v.DetectionSeconds(), timeline(seen)))
}

func TestServerSideKeepaliveKeepsTheIdleFlow(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	v := operatorValues(t)
	if err := l.SetSysctls(l.Server, v.Sysctls()); err != nil {
		t.Fatal(err)
	}
	serve(t, l, sysctlsKeepalive)
	conn, r := dial(t, l, net.KeepAliveConfig{}) // no keepalive on the client
	if err := request(conn, r); err != nil {
		t.Fatal(err)
	}
	capture, err := l.Capture(l.Middlebox)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_ = conn.SetDeadline(time.Time{})
	idle := 3 * T * time.Second
	time.Sleep(idle)
	seen := probes(capture.Stop(), ServerIP, start)
	t.Logf("idle %v: server %s", idle, timeline(seen))
	if err := request(conn, r); err != nil {
		t.Fatalf("after %v idle with keepalive on the server only, the request failed: %v", idle, err)
	}
	checkProbes(t, seen, v, idle)
	record(4, "server-side keepalive only", describeValues(v)+" (server)", "alive", fmt.Sprintf("request after %v idle; server %s", idle, timeline(seen)))
}
