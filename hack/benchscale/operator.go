package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/keepalive-operator/keepalive-operator/internal/testenv"
)

// clockTicks is USER_HZ, the unit of the CPU times in /proc/<pid>/stat:
// 100 on every Linux architecture Go builds for.
const clockTicks = 100

// buildOperator builds the operator's binary into dir.
func buildOperator(root, dir string) (string, error) {
	bin := filepath.Join(dir, "keepalive-operator")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/keepalive-operator")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/keepalive-operator: %w\n%s", err, out)
	}
	return bin, nil
}

// operator is the operator's process.
type operator struct {
	cmd    *exec.Cmd
	probes string
	log    string
	exited chan struct{}
	err    error // why it exited, once exited is closed
}

// startOperator runs the binary as its own user, its log in dir. Its webhook
// server serves a self-signed certificate that nobody calls: no webhook
// configuration is installed.
func startOperator(binary, kubeconfig, dir string, maxRollouts int) (*operator, error) {
	certDir := filepath.Join(dir, "certs")
	if err := writeCert(certDir); err != nil {
		return nil, err
	}
	probes, err := freeAddr()
	if err != nil {
		return nil, err
	}
	webhook, err := freeAddr()
	if err != nil {
		return nil, err
	}
	_, port, _ := net.SplitHostPort(webhook)
	o := &operator{probes: probes, log: filepath.Join(dir, "operator.log"), exited: make(chan struct{})}
	logFile, err := os.Create(o.log)
	if err != nil {
		return nil, fmt.Errorf("create the operator's log: %w", err)
	}
	o.cmd = exec.Command(binary,
		"--kubeconfig", kubeconfig,
		"--leader-elect=false",
		"--metrics-bind-address=0",
		"--health-probe-bind-address", probes,
		"--webhook-port", port,
		"--webhook-cert-path", certDir,
		"--operator-namespace", operatorNamespace,
		"--max-concurrent-rollouts", strconv.Itoa(maxRollouts),
	)
	o.cmd.Stdout, o.cmd.Stderr = logFile, logFile
	if err := o.cmd.Start(); err != nil {
		_ = logFile.Close()
		return nil, fmt.Errorf("start the operator: %w", err)
	}
	go func() {
		if o.err = o.cmd.Wait(); o.err == nil {
			o.err = errors.New("exit status 0")
		}
		_ = logFile.Close()
		close(o.exited)
	}()
	return o, nil
}

// waitReady waits until the operator's /readyz answers 200.
func (o *operator) waitReady(ctx context.Context, timeout time.Duration) error {
	url := "http://" + o.probes + "/readyz"
	err := waitFor(ctx, timeout, func() (bool, error) {
		if err := o.alive(); err != nil {
			return false, err
		}
		resp, err := http.Get(url)
		if err != nil {
			return false, nil
		}
		_ = resp.Body.Close()
		return resp.StatusCode == http.StatusOK, nil
	})
	if err != nil {
		return fmt.Errorf("the operator did not become ready (log: %s): %w", o.log, err)
	}
	return nil
}

// alive returns an error once the operator has exited.
func (o *operator) alive() error {
	select {
	case <-o.exited:
		return fmt.Errorf("the operator exited (its log is %s): %w", o.log, o.err)
	default:
		return nil
	}
}

// stop sends SIGTERM and waits for the operator to exit, killing it after
// 30 seconds.
func (o *operator) stop() error {
	if o.alive() != nil {
		return nil
	}
	if err := o.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return fmt.Errorf("stop the operator: %w", err)
	}
	select {
	case <-o.exited:
	case <-time.After(30 * time.Second):
		_ = o.cmd.Process.Kill()
		<-o.exited
		return fmt.Errorf("the operator did not stop within 30 s of SIGTERM; killed")
	}
	return nil
}

// waitIdle waits, at most max, until the operator spent less than 20 ms of
// CPU in each of two seconds in a row: it has read the initial lists of its
// caches and counted every pod, so that a measurement sees only what its
// own events cause.
func (o *operator) waitIdle(ctx context.Context, max time.Duration) error {
	deadline := time.Now().Add(max)
	last, err := o.cpu()
	if err != nil {
		return err
	}
	idle := 0
	for idle < 2 {
		if time.Now().After(deadline) {
			return fmt.Errorf("the operator was still busy after %s (log: %s)", max, o.log)
		}
		if err := sleep(ctx, time.Second); err != nil {
			return err
		}
		now, err := o.cpu()
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

// cpu returns the CPU seconds, user and system, of every thread of the
// operator so far.
func (o *operator) cpu() (float64, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", o.cmd.Process.Pid))
	if err != nil {
		return 0, fmt.Errorf("read the operator's CPU time: %w", err)
	}
	// The command name, in parentheses, may hold spaces: count the fields
	// after it. utime and stime are fields 14 and 15; state, field 3, is
	// the first after the name.
	s := string(raw)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(fields) < 13 {
		return 0, fmt.Errorf("unexpected /proc/%d/stat: %q", o.cmd.Process.Pid, s)
	}
	utime, err1 := strconv.ParseInt(fields[11], 10, 64)
	stime, err2 := strconv.ParseInt(fields[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("parse /proc/%d/stat: %w", o.cmd.Process.Pid, err)
	}
	return float64(utime+stime) / clockTicks, nil
}

// memory returns the operator's resident set size and its peak so far, in
// bytes.
func (o *operator) memory() (rss, peak int64, err error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", o.cmd.Process.Pid))
	if err != nil {
		return 0, 0, fmt.Errorf("read the operator's memory: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		key, value, ok := strings.Cut(sc.Text(), ":")
		if !ok || (key != "VmRSS" && key != "VmHWM") {
			continue
		}
		kib, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(value), " kB"), 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("parse %s of /proc/%d/status: %w", key, o.cmd.Process.Pid, err)
		}
		if key == "VmRSS" {
			rss = kib << 10
		} else {
			peak = kib << 10
		}
	}
	if err := sc.Err(); err != nil {
		return 0, 0, fmt.Errorf("read /proc/%d/status: %w", o.cmd.Process.Pid, err)
	}
	if rss == 0 || peak == 0 {
		return 0, 0, fmt.Errorf("no VmRSS or VmHWM in /proc/%d/status", o.cmd.Process.Pid)
	}
	return rss, peak, nil
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// writeCert writes a self-signed certificate for 127.0.0.1 into dir as
// tls.crt and tls.key, for the operator's webhook server.
func writeCert(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	return testenv.WriteServingCert(dir, "keepalive-bench")
}
