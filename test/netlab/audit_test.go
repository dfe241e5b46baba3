package netlab

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/keepalive-operator/keepalive-operator/internal/audit"
	"github.com/keepalive-operator/keepalive-operator/internal/keepalive"
)

// The audit scenarios run a client of each recipe of the README's table as
// a process of its own in the client namespace, which has the operator's
// values, and read its sockets as the audit does, every second while the
// connection idles for 3×T: the state the classifier gives must be the fate
// the middlebox deals the flow, armed for a flow that survives, armedLate
// or notArmed for one that is reset.

type auditLine struct {
	order                       int
	recipe, socket, state, wire string
	agree                       bool
	policyTime                  int32
}

var (
	auditMu     sync.Mutex
	auditReport []auditLine
)

// printAuditReport prints the audit scenarios' table, after the lab's.
func printAuditReport() {
	if len(auditReport) == 0 {
		return
	}
	slices.SortFunc(auditReport, func(a, b auditLine) int { return a.order - b.order })
	fmt.Printf("\nKEEPALIVE AUDIT AGAINST THE WIRE: each client's socket read from /proc/<pid>/net/tcp every second of %d s idle; policy time %d s, middlebox T=%d s\n",
		3*T, auditReport[0].policyTime, T)
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "RECIPE\tSOCKET\tAUDIT\tWIRE\tAGREE")
	for _, r := range auditReport {
		agree := "yes"
		if !r.agree {
			agree = "NO"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.recipe, r.socket, r.state, r.wire, agree)
	}
	_ = tw.Flush()
}

// needCommands skips the test, or fails it with KEEPALIVE_LAB_REQUIRED=1,
// when a command is missing; hack/need-packages.sh installs them.
func needCommands(t *testing.T, cmds ...string) map[string]string {
	t.Helper()
	paths := map[string]string{}
	var missing []string
	for _, c := range cmds {
		if p := command(c); p != "" {
			paths[c] = p
		} else {
			missing = append(missing, c)
		}
	}
	if len(missing) > 0 {
		what := strings.Join(missing, ", ")
		if os.Getenv("KEEPALIVE_LAB_REQUIRED") == "1" {
			t.Fatalf("the audit scenario needs %s", what)
		}
		t.Skipf("the audit scenario needs %s; skipped (KEEPALIVE_LAB_REQUIRED=1 makes this a failure)", what)
	}
	return paths
}

// command finds a command on PATH or, for the PostgreSQL server's, in the
// newest /usr/lib/postgresql/<version>/bin, where Debian keeps them.
func command(name string) string {
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	version := func(dir string) float64 {
		v, _ := strconv.ParseFloat(filepath.Base(filepath.Dir(dir)), 64)
		return v
	}
	slices.SortFunc(dirs, func(a, b string) int { return cmp.Compare(version(b), version(a)) })
	for _, d := range dirs {
		if p := filepath.Join(d, name); isExecutable(p) {
			return p
		}
	}
	return ""
}

func isExecutable(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir() && st.Mode()&0o111 != 0
}

// clientProc is a client process in the lab's client namespace.
type clientProc struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	lines  chan string
	stderr *lockedBuffer
	exited chan struct{}
	err    error // of Wait, once exited is closed
}

type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.TrimSpace(b.buf.String())
}

// startClient runs argv in the client namespace, for at most a minute; the
// test's cleanup kills it.
func startClient(t *testing.T, l *Lab, argv ...string) *clientProc {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", l.Client}, argv...)...)
	cmd.Dir = t.TempDir()
	c := &clientProc{cmd: cmd, lines: make(chan string, 16), stderr: &lockedBuffer{}, exited: make(chan struct{})}
	cmd.Stderr = c.stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if c.stdin, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	go func() {
		s := bufio.NewScanner(stdout)
		for s.Scan() {
			c.lines <- s.Text()
		}
		close(c.lines)
	}()
	go func() {
		c.err = cmd.Wait()
		close(c.exited)
	}()
	t.Cleanup(func() {
		cancel()
		<-c.exited
	})
	return c
}

// waitLine waits for the client to print want.
func (c *clientProc) waitLine(t *testing.T, want string, timeout time.Duration) {
	t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case line, ok := <-c.lines:
			if !ok {
				<-c.exited
				t.Fatalf("%s ended before printing %q: %v; %s", c.cmd.Args[4], want, c.err, c.stderr)
			}
			if strings.TrimSpace(line) == want {
				return
			}
		case <-deadline:
			t.Fatalf("%s did not print %q within %v; %s", c.cmd.Args[4], want, timeout, c.stderr)
		}
	}
}

// finish sends the client its last input, closes its stdin and waits for it
// to exit: nil if it exited 0, else its error output.
func (c *clientProc) finish(t *testing.T, input string) error {
	t.Helper()
	_, _ = io.WriteString(c.stdin, input)
	_ = c.stdin.Close()
	select {
	case <-c.exited:
	case <-time.After(20 * time.Second):
		t.Fatalf("%s did not exit within 20 s of its last request", c.cmd.Args[4])
	}
	if c.err == nil {
		return nil
	}
	if msg := lastLine(c.stderr.String()); msg != "" {
		return fmt.Errorf("%w: %s", c.err, msg)
	}
	return c.err
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}

// observation is what the classifier made of the client's connection.
type observation struct {
	reads, checked int
	states         []keepalive.ConnState // each read's, in order
	ticks          int64                 // the longest keepalive timer seen
	timer          int                   // the last read's timer
}

func (o observation) state() keepalive.ConnState {
	if len(o.states) == 0 {
		return ""
	}
	return o.states[len(o.states)-1]
}

// socket describes the timer the classifier saw.
func (o observation) socket() string {
	switch {
	case o.ticks > 0:
		return fmt.Sprintf("keepalive, %.1f s", float64(o.ticks)/keepalive.TicksPerSecond)
	case o.timer == keepalive.TimerNone:
		return "no timer"
	}
	return fmt.Sprintf("timer %d", o.timer)
}

// watch reads the client's sockets every second for idle, as the audit
// does, carrying the furthest-off timers from read to read, and takes the
// state of its connection to server. Each read is checked against ss in
// the client namespace: a keepalive timer there if and only if the
// classifier saw timer 2.
func watch(t *testing.T, l *Lab, c *clientProc, server netip.AddrPort, idle time.Duration, policyTime int32) observation {
	t.Helper()
	var o observation
	var seen map[keepalive.SocketKey]int64
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	end := time.After(idle)
	for {
		select {
		case <-end:
			return o
		case <-c.exited:
			t.Logf("the client exited while idle: %v; %s", c.err, c.stderr)
			return o
		case <-tick.C:
		}
		socks, err := audit.ReadSockets("/proc", c.cmd.Process.Pid)
		if err != nil {
			select {
			case <-c.exited:
				return o
			default:
				t.Fatal(err)
			}
		}
		var conns []keepalive.Connection
		conns, seen = keepalive.Connections(socks, seen)
		oracle, err := l.Sockets(l.Client)
		if err != nil {
			t.Fatalf("ss in the client namespace: %v", err)
		}
		i := slices.IndexFunc(conns, func(c keepalive.Connection) bool { return c.Remote == server })
		if i < 0 {
			continue
		}
		conn := conns[i]
		st := conn.State(policyTime)
		o.reads++
		o.states = append(o.states, st)
		o.ticks, o.timer = conn.LongestTicks, conn.Timer
		if timer, found := ssKeepalive(oracle, conn.Local, conn.Remote); found {
			o.checked++
			if timer != (conn.Timer == keepalive.TimerKeepalive) {
				t.Errorf("read %d: the classifier saw timer %d (%d ticks), ss a keepalive timer %v: %s", o.reads, conn.Timer, conn.TimerTicks, timer, strings.TrimSpace(oracle))
			}
		}
	}
}

// ssKeepalive finds the connection between local and remote in the output
// of ss -tnoH and reports whether ss shows a keepalive timer on it.
func ssKeepalive(out string, local, remote netip.AddrPort) (timer, found bool) {
	unmap := func(s string) netip.AddrPort {
		ap, err := netip.ParseAddrPort(s)
		if err != nil {
			return netip.AddrPort{}
		}
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	for line := range strings.SplitSeq(out, "\n") {
		f := strings.Fields(line)
		if len(f) < 4 || unmap(f[2]) != local || unmap(f[3]) != remote {
			continue
		}
		return strings.Contains(line, "timer:(keepalive,"), true
	}
	return false, false
}

// wire is what happened to the flow: the client's second request and what
// the client namespace received meanwhile.
type wire struct {
	err     error // of the client
	answers int   // probes the server answered (pure ACKs to the client)
	gotRST  bool
	reset   time.Duration // when the RST came, into the idleness
	idle    bool          // whether it came before the request after it
}

func (w wire) alive() bool { return w.err == nil && !w.gotRST }
func (w wire) wasReset() bool {
	return w.err != nil && w.gotRST
}

func (w wire) String() string {
	switch {
	case w.alive():
		return fmt.Sprintf("alive, %d probes answered", w.answers)
	case w.wasReset() && w.idle:
		return fmt.Sprintf("reset at %.0f s, answering a probe", w.reset.Seconds())
	case w.wasReset():
		return fmt.Sprintf("reset at %.0f s, answering the request", w.reset.Seconds())
	}
	return fmt.Sprintf("failed: %v", w.err)
}

// idleAndCheck lets the client's connection idle for 3×T while watching it,
// then has it request again, and holds the classifier to the wire.
func idleAndCheck(t *testing.T, l *Lab, c *clientProc, server netip.AddrPort, again string, order int, recipe string, want keepalive.ConnState) {
	t.Helper()
	policy := operatorValues(t).TimeSeconds
	capture, err := l.Capture(l.Client)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	idle := 3 * T * time.Second
	o := watch(t, l, c, server, idle, policy)
	last := time.Now()
	w := wire{err: c.finish(t, again)}
	for _, p := range capture.Stop() {
		if p.Src != server.String() || !p.At.After(start) {
			continue
		}
		if p.PureACK() && p.At.Before(last) {
			w.answers++
		}
		if p.Flags&FlagRST != 0 && !w.gotRST {
			w.gotRST, w.reset, w.idle = true, p.At.Sub(start), p.At.Before(last)
		}
	}
	t.Logf("%d reads (%d checked against ss): states %v, longest keepalive timer %d ticks; wire: %v; client: %v", o.reads, o.checked, compact(o.states), o.ticks, w, w.err)

	state := o.state()
	agree := state == keepalive.ConnArmed && w.alive() ||
		(state == keepalive.ConnArmedLate || state == keepalive.ConnNotArmed) && w.wasReset()
	auditMu.Lock()
	auditReport = append(auditReport, auditLine{order, recipe, o.socket(), string(state), w.String(), agree, policy})
	auditMu.Unlock()
	switch {
	case o.reads == 0:
		t.Fatalf("no read found the connection to %v", server)
	case o.checked == 0:
		t.Errorf("ss never showed the connection to %v", server)
	}
	if !agree {
		t.Errorf("the audit says %s, the wire %v", state, w)
	}
	if state != want {
		t.Errorf("the recipe's socket is %s, the README's table says %s", state, want)
	}
}

// compact lists the states, runs of one state once with their count.
func compact(states []keepalive.ConnState) string {
	var parts []string
	for i := 0; i < len(states); {
		j := i
		for j < len(states) && states[j] == states[i] {
			j++
		}
		parts = append(parts, fmt.Sprintf("%s×%d", states[i], j-i))
		i = j
	}
	return strings.Join(parts, ", ")
}

// auditClient runs a client that connects to the lab's server, requests,
// prints "ready", idles until a line on stdin, requests again and exits 0
// if its connection survived.
func auditClient(t *testing.T, order int, recipe string, want keepalive.ConnState, cmds []string, argv func(t *testing.T, paths map[string]string) []string) {
	t.Parallel()
	l := newLab(t)
	paths := needCommands(t, cmds...)
	if err := l.SetSysctls(l.Client, operatorValues(t).Sysctls()); err != nil {
		t.Fatal(err)
	}
	serve(t, l, sysctlsKeepalive)
	c := startClient(t, l, argv(t, paths)...)
	c.waitLine(t, "ready", 45*time.Second)
	server := netip.MustParseAddrPort(ServerIP + ":" + serverPort)
	idleAndCheck(t, l, c, server, "go\n", order, recipe, want)
}

// clientsDir holds the client programs, one file a language.
var clientsDir, _ = filepath.Abs("clients")

// goClient builds the Go client into the test's temporary folder.
func goClient(t *testing.T, paths map[string]string, recipe string) []string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "goclient")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if out, err := exec.CommandContext(ctx, paths["go"], "build", "-o", bin, "./clients/goclient").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v: %s", err, out)
	}
	return []string{bin, "-addr", ServerIP + ":" + serverPort, "-keepalive", recipe}
}

// cClient compiles the C client into the test's temporary folder.
func cClient(t *testing.T, paths map[string]string, idle string) []string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "client")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if out, err := exec.CommandContext(ctx, paths["gcc"], "-O2", "-Wall", "-Werror", "-o", bin, filepath.Join(clientsDir, "client.c")).CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v: %s", err, out)
	}
	return []string{bin, ServerIP, serverPort, idle}
}

func TestAuditGoDialerDefault(t *testing.T) {
	auditClient(t, 1, "Go net.Dialer{} (15 s of its own)", keepalive.ConnArmedLate, []string{"go"},
		func(t *testing.T, p map[string]string) []string { return goClient(t, p, "default") })
}

func TestAuditGoDialerKeepAliveOff(t *testing.T) {
	auditClient(t, 2, "Go net.Dialer{KeepAlive: -1}", keepalive.ConnNotArmed, []string{"go"},
		func(t *testing.T, p map[string]string) []string { return goClient(t, p, "off") })
}

func TestAuditGoKeepAliveConfigSysctls(t *testing.T) {
	auditClient(t, 3, "Go KeepAliveConfig{Enable: true, Idle: -1, Interval: -1, Count: -1}", keepalive.ConnArmed, []string{"go"},
		func(t *testing.T, p map[string]string) []string { return goClient(t, p, "sysctls") })
}

func TestAuditPythonKeepaliveOn(t *testing.T) {
	auditClient(t, 4, "Python setsockopt(SO_KEEPALIVE, 1)", keepalive.ConnArmed, []string{"python3"},
		func(t *testing.T, p map[string]string) []string {
			return []string{p["python3"], filepath.Join(clientsDir, "client.py"), ServerIP, serverPort, "on"}
		})
}

func TestAuditPythonKeepaliveOff(t *testing.T) {
	auditClient(t, 5, "Python, SO_KEEPALIVE not set", keepalive.ConnNotArmed, []string{"python3"},
		func(t *testing.T, p map[string]string) []string {
			return []string{p["python3"], filepath.Join(clientsDir, "client.py"), ServerIP, serverPort, "off"}
		})
}

func TestAuditNodeSetKeepAlive(t *testing.T) {
	auditClient(t, 6, "Node.js socket.setKeepAlive(true)", keepalive.ConnArmed, []string{"node"},
		func(t *testing.T, p map[string]string) []string {
			return []string{p["node"], filepath.Join(clientsDir, "client.js"), ServerIP, serverPort, "0"}
		})
}

func TestAuditNodeSetKeepAliveDelay(t *testing.T) {
	auditClient(t, 7, "Node.js socket.setKeepAlive(true, 30000)", keepalive.ConnArmedLate, []string{"node"},
		func(t *testing.T, p map[string]string) []string {
			return []string{p["node"], filepath.Join(clientsDir, "client.js"), ServerIP, serverPort, "30000"}
		})
}

func TestAuditJavaSetKeepAlive(t *testing.T) {
	auditClient(t, 8, "Java socket.setKeepAlive(true)", keepalive.ConnArmed, []string{"java", "javac"},
		func(t *testing.T, p map[string]string) []string {
			return []string{p["java"], filepath.Join(clientsDir, "Client.java"), ServerIP, serverPort}
		})
}

func TestAuditCKeepalive(t *testing.T) {
	auditClient(t, 9, "C setsockopt(SO_KEEPALIVE)", keepalive.ConnArmed, []string{"gcc"},
		func(t *testing.T, p map[string]string) []string { return cClient(t, p, "0") })
}

func TestAuditCKeepidle(t *testing.T) {
	auditClient(t, 10, "C SO_KEEPALIVE and TCP_KEEPIDLE 30", keepalive.ConnArmedLate, []string{"gcc"},
		func(t *testing.T, p map[string]string) []string { return cClient(t, p, "30") })
}

// postgresPort is the port of the lab's PostgreSQL server.
const postgresPort = "5432"

// startPostgres runs a PostgreSQL server of its own in the server
// namespace, on ServerIP, trusting the client's network, until the test
// ends. Its own keepalive is set to start after 7200 s, beyond the test.
func startPostgres(t *testing.T, l *Lab, paths map[string]string) {
	t.Helper()
	pg, err := user.Lookup("postgres")
	if err != nil {
		t.Fatalf("the PostgreSQL server runs as the user postgres: %v", err)
	}
	dir, err := os.MkdirTemp("", "netlab-postgres-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	uid, _ := strconv.Atoi(pg.Uid)
	gid, _ := strconv.Atoi(pg.Gid)
	if err := os.Chown(dir, uid, gid); err != nil {
		t.Fatal(err)
	}
	asPostgres := []string{paths["setpriv"], "--reuid=" + pg.Uid, "--regid=" + pg.Gid, "--clear-groups"}
	data := filepath.Join(dir, "data")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	initdb := exec.CommandContext(ctx, asPostgres[0], append(asPostgres[1:], paths["initdb"],
		"-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync")...)
	initdb.Dir = dir
	if out, err := initdb.CombinedOutput(); err != nil {
		t.Fatalf("initdb: %v: %s", err, out)
	}
	hba := "local all all trust\nhost all all " + ClientIP + "/32 trust\n"
	if err := os.WriteFile(filepath.Join(data, "pg_hba.conf"), []byte(hba), 0o600); err != nil {
		t.Fatal(err)
	}
	var log lockedBuffer
	server := exec.Command("ip", append(append([]string{"netns", "exec", l.Server}, asPostgres...), paths["postgres"],
		"-D", data, "-c", "listen_addresses="+ServerIP, "-c", "port="+postgresPort,
		"-c", "unix_socket_directories="+dir, "-c", "tcp_keepalives_idle=7200",
		"-c", "fsync=off", "-c", "max_connections=10", "-c", "shared_buffers=16MB")...)
	server.Dir, server.Stdout, server.Stderr = dir, &log, &log
	if err := server.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() {
		_ = server.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		_ = server.Process.Signal(syscall.SIGINT) // fast shutdown
		select {
		case <-exited:
		case <-time.After(15 * time.Second):
			_ = server.Process.Kill()
			<-exited
		}
	})
	// The postmaster writes "ready" on the 8th line of postmaster.pid.
	deadline := time.Now().Add(30 * time.Second)
	for {
		pid, _ := os.ReadFile(filepath.Join(data, "postmaster.pid"))
		if lines := strings.Split(string(pid), "\n"); len(lines) > 7 && strings.TrimSpace(lines[7]) == "ready" {
			return
		}
		select {
		case <-exited:
			t.Fatalf("postgres exited: %s", log.String())
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("postgres not ready within 30 s: %s", log.String())
		}
	}
}

// auditPsql runs psql in the client namespace against the lab's PostgreSQL
// server: select 1, idle, select 1 again on the same connection.
func auditPsql(t *testing.T, order int, recipe, keepalives string, want keepalive.ConnState) {
	t.Parallel()
	l := newLab(t)
	paths := needCommands(t, "psql", "postgres", "initdb", "setpriv")
	if err := l.SetSysctls(l.Client, operatorValues(t).Sysctls()); err != nil {
		t.Fatal(err)
	}
	startPostgres(t, l, paths)
	conninfo := "host=" + ServerIP + " port=" + postgresPort + " user=postgres dbname=postgres connect_timeout=5"
	if keepalives != "" {
		conninfo += " keepalives=" + keepalives
	}
	// Non-interactive, psql exits 2 when it loses the connection.
	c := startClient(t, l, paths["psql"], "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", conninfo)
	if _, err := io.WriteString(c.stdin, "select 1;\n"); err != nil {
		t.Fatal(err)
	}
	c.waitLine(t, "1", 30*time.Second)
	server := netip.MustParseAddrPort(ServerIP + ":" + postgresPort)
	idleAndCheck(t, l, c, server, "select 1;\n", order, recipe, want)
}

func TestAuditPsqlKeepalives1(t *testing.T) {
	auditPsql(t, 11, "psql (libpq) keepalives=1", "1", keepalive.ConnArmed)
}

func TestAuditPsqlKeepalives0(t *testing.T) {
	auditPsql(t, 12, "psql (libpq) keepalives=0", "0", keepalive.ConnNotArmed)
}

func TestAuditPsqlDefault(t *testing.T) {
	auditPsql(t, 13, "psql (libpq), keepalives not given", "", keepalive.ConnArmed)
}
