package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	"github.com/keepalive-operator/keepalive-operator/internal/testenv"
)

// operator is the operator's process.
type operator struct {
	*testenv.Process
	probes string
}

// startOperator runs the binary as its own user, its log in dir. Its webhook
// server serves a self-signed certificate that nobody calls: no webhook
// configuration is installed.
func startOperator(binary, kubeconfig, dir string, maxRollouts int) (*operator, error) {
	certDir := filepath.Join(dir, "certs")
	if err := writeCert(certDir); err != nil {
		return nil, err
	}
	probes, err := testenv.FreeAddr()
	if err != nil {
		return nil, err
	}
	webhook, err := testenv.FreeAddr()
	if err != nil {
		return nil, err
	}
	_, port, _ := net.SplitHostPort(webhook)
	p, err := testenv.StartProcess("the operator", filepath.Join(dir, "operator.log"), exec.Command(binary,
		"--kubeconfig", kubeconfig,
		"--leader-elect=false",
		"--metrics-bind-address=0",
		"--health-probe-bind-address", probes,
		"--webhook-port", port,
		"--webhook-cert-path", certDir,
		"--operator-namespace", operatorNamespace,
		"--max-concurrent-rollouts", strconv.Itoa(maxRollouts),
	))
	if err != nil {
		return nil, err
	}
	return &operator{Process: p, probes: probes}, nil
}

// waitReady waits until the operator's /readyz answers 200.
func (o *operator) waitReady(ctx context.Context, timeout time.Duration) error {
	url := "http://" + o.probes + "/readyz"
	err := testenv.WaitFor(ctx, timeout, func() (bool, error) {
		if err := o.Alive(); err != nil {
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
		return fmt.Errorf("the operator did not become ready (log: %s): %w", o.Log, err)
	}
	return nil
}

// stop stops the operator, killing it after 30 seconds.
func (o *operator) stop() error { return o.Stop(30 * time.Second) }

// waitIdle waits, at most max, until the operator is idle.
func (o *operator) waitIdle(ctx context.Context, max time.Duration) error {
	if err := testenv.WaitIdle(ctx, o.PID(), max); err != nil {
		return fmt.Errorf("%w (log: %s)", err, o.Log)
	}
	return nil
}

// cpu returns the CPU seconds of the operator so far.
func (o *operator) cpu() (float64, error) { return testenv.CPUSeconds(o.PID()) }

// memory returns the operator's resident set size and its peak so far.
func (o *operator) memory() (rss, peak int64, err error) { return testenv.Memory(o.PID()) }

// writeCert writes a self-signed certificate for 127.0.0.1 into dir as
// tls.crt and tls.key, for the operator's webhook server.
func writeCert(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	return testenv.WriteServingCert(dir, "keepalive-bench")
}
