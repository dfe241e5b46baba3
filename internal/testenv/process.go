package testenv

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"
	"k8s.io/apimachinery/pkg/util/wait"
)

// ClockTicks is USER_HZ, the unit of the CPU times in /proc/<pid>/stat:
// 100 on every Linux architecture Go builds for.
const ClockTicks = 100

// BuildOperator builds the operator's binary into dir, as the Dockerfile
// builds the shipped one (static, trimmed paths, no symbol table or DWARF),
// and returns its path.
func BuildOperator(dir string) (string, error) {
	bin := filepath.Join(dir, "keepalive-operator")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", bin, "./cmd/keepalive-operator")
	cmd.Dir = Root()
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/keepalive-operator: %w\n%s", err, out)
	}
	return bin, nil
}

// StartOperator runs the operator's binary out of cluster with kubeconfig,
// its log in the file log, no leader election and no metrics, its probes on
// a free port, and the flags extra; it returns once /readyz answers 200. On
// an error after the start it returns the process too, for the caller to
// stop.
func StartOperator(ctx context.Context, binary, kubeconfig, log, namespace string, extra ...string) (*Process, error) {
	probes, err := FreeAddr()
	if err != nil {
		return nil, err
	}
	args := append([]string{
		"--kubeconfig", kubeconfig,
		"--leader-elect=false",
		"--metrics-bind-address=0",
		"--health-probe-bind-address", probes,
		"--operator-namespace", namespace,
	}, extra...)
	op, err := StartProcess("the operator", log, exec.Command(binary, args...))
	if err != nil {
		return nil, err
	}
	probe := &http.Client{Timeout: 2 * time.Second}
	err = WaitFor(ctx, 2*time.Minute, func() (bool, error) {
		if err := op.Alive(); err != nil {
			return false, err
		}
		resp, err := probe.Get("http://" + probes + "/readyz")
		if err != nil {
			return false, nil
		}
		_ = resp.Body.Close()
		return resp.StatusCode == http.StatusOK, nil
	})
	if err != nil {
		return op, fmt.Errorf("the operator did not become ready (log: %s): %w", op.Log, err)
	}
	return op, nil
}

// Process is a program a benchmark runs beside the control plane, its
// output in a log file.
type Process struct {
	Name   string
	Cmd    *exec.Cmd
	Log    string
	exited chan struct{}
	err    error // why it exited, once exited is closed
}

// StartProcess starts cmd with its standard output and error in the file
// log.
func StartProcess(name, log string, cmd *exec.Cmd) (*Process, error) {
	logFile, err := os.Create(log)
	if err != nil {
		return nil, fmt.Errorf("create the log of %s: %w", name, err)
	}
	p := &Process{Name: name, Cmd: cmd, Log: log, exited: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		_ = logFile.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() {
		if p.err = cmd.Wait(); p.err == nil {
			p.err = errors.New("exit status 0")
		}
		_ = logFile.Close()
		close(p.exited)
	}()
	return p, nil
}

// PID is the process's ID.
func (p *Process) PID() int { return p.Cmd.Process.Pid }

// Alive returns an error once the process has exited.
func (p *Process) Alive() error {
	select {
	case <-p.exited:
		return fmt.Errorf("%s exited (its log is %s): %w", p.Name, p.Log, p.err)
	default:
		return nil
	}
}

// Stop sends SIGTERM and waits for the process to exit, killing it after
// grace.
func (p *Process) Stop(grace time.Duration) error {
	if p.Alive() != nil {
		return nil
	}
	if err := p.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return fmt.Errorf("stop %s: %w", p.Name, err)
	}
	select {
	case <-p.exited:
	case <-time.After(grace):
		_ = p.Cmd.Process.Kill()
		<-p.exited
		return fmt.Errorf("%s did not stop within %s of SIGTERM; killed", p.Name, grace)
	}
	return nil
}

// CPUSeconds returns the CPU seconds, user and system, of every thread of
// process pid so far.
func CPUSeconds(pid int) (float64, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("read the CPU time of process %d: %w", pid, err)
	}
	// The command name, in parentheses, may hold spaces: count the fields
	// after it. utime and stime are fields 14 and 15; state, field 3, is
	// the first after the name.
	s := string(raw)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(fields) < 13 {
		return 0, fmt.Errorf("unexpected /proc/%d/stat: %q", pid, s)
	}
	utime, err1 := strconv.ParseInt(fields[11], 10, 64)
	stime, err2 := strconv.ParseInt(fields[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("parse /proc/%d/stat: %w", pid, err)
	}
	return float64(utime+stime) / ClockTicks, nil
}

// Memory returns the resident set size of process pid and its peak so far,
// in bytes.
func Memory(pid int) (rss, peak int64, err error) {
	v, err := status(pid, "VmRSS", "VmHWM")
	if err != nil {
		return 0, 0, fmt.Errorf("read the memory of process %d: %w", pid, err)
	}
	return v[0], v[1], nil
}

// MappedFiles returns the part of the resident set size of process pid that
// maps files (RssFile): its binary's text and data and the libraries it
// loaded. The rest is anonymous memory, its heap and stacks, and shared
// memory.
func MappedFiles(pid int) (int64, error) {
	v, err := status(pid, "RssFile")
	if err != nil {
		return 0, fmt.Errorf("read the mapped files of process %d: %w", pid, err)
	}
	return v[0], nil
}

// status returns the fields keys of /proc/<pid>/status, each a size in kB,
// in bytes.
func status(pid int, keys ...string) ([]int64, error) {
	path := fmt.Sprintf("/proc/%d/status", pid)
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := make([]int64, len(keys))
	seen := make([]bool, len(keys))
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		key, value, ok := strings.Cut(sc.Text(), ":")
		i := slices.Index(keys, key)
		if !ok || i < 0 {
			continue
		}
		kib, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(value), " kB"), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("parse %s of %s: %w", key, path, err)
		}
		out[i], seen[i] = kib<<10, true
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if i := slices.Index(seen, false); i >= 0 {
		return nil, fmt.Errorf("no %s in %s", keys[i], path)
	}
	return out, nil
}

// WaitIdle waits, at most max, until process pid spent less than 20 ms of
// CPU in each of two seconds in a row: it has read the initial lists of its
// caches and handled their events, so that a measurement sees only what its
// own events cause.
func WaitIdle(ctx context.Context, pid int, max time.Duration) error {
	deadline := time.Now().Add(max)
	last, err := CPUSeconds(pid)
	if err != nil {
		return err
	}
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for idle := 0; idle < 2; {
		if time.Now().After(deadline) {
			return fmt.Errorf("process %d was still busy after %s", pid, max)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		now, err := CPUSeconds(pid)
		if err != nil {
			return err
		}
		if now-last < 0.02 {
			idle++
		} else {
			idle = 0
		}
		last = now
	}
	return nil
}

// FreeAddr returns a loopback address with a port nobody listens on.
//
// The port is below the kernel's ephemeral range: a port the kernel handed
// out (as Listen on port 0 does) is free again once closed, and the next
// outgoing connection of any process may take it before the server that was
// meant to bind it does.
func FreeAddr() (string, error) {
	port, err := freePort()
	if err != nil {
		return "", err
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), nil
}

// freePort is FreeAddr's port.
func freePort() (int, error) {
	low := 32768
	if raw, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(raw)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil {
				low = n
			}
		}
	}
	const from = 10000
	if low <= from+1000 {
		return 0, fmt.Errorf("find a free port: the ephemeral range starts at %d, leaving none below it", low)
	}
	var last error
	for range 100 {
		port := from + rand.IntN(low-from)
		// Every interface, as the servers under test bind.
		l, err := net.Listen("tcp", ":"+strconv.Itoa(port))
		if err != nil {
			last = err
			continue
		}
		if err := l.Close(); err != nil {
			return 0, err
		}
		return port, nil
	}
	return 0, fmt.Errorf("find a free port: %w", last)
}

// Parallel runs f for 0..n-1 on at most workers goroutines and returns the
// first error; it stops handing out work after one.
func Parallel(ctx context.Context, n, workers int, f func(ctx context.Context, i int) error) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(workers)
	for i := range n {
		if gctx.Err() != nil {
			break
		}
		g.Go(func() error { return f(gctx, i) })
	}
	if err := g.Wait(); err != nil {
		return err
	}
	return ctx.Err()
}

// WaitFor calls done every 100 ms until it returns true, an error, or the
// timeout passes.
func WaitFor(ctx context.Context, timeout time.Duration, done func() (bool, error)) error {
	return wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, timeout, true,
		func(context.Context) (bool, error) { return done() })
}
