package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/keepalive-operator/keepalive-operator/internal/testenv"
)

// operator is the operator's process.
type operator struct{ *testenv.Process }

// startOperator runs the binary as its own user, its log in dir, and waits
// until it is ready. Its webhook server serves a self-signed certificate
// that nobody calls: no webhook configuration is installed.
func startOperator(ctx context.Context, binary, kubeconfig, dir string, maxRollouts int) (*operator, error) {
	certDir := filepath.Join(dir, "certs")
	if err := writeCert(certDir); err != nil {
		return nil, err
	}
	webhook, err := testenv.FreeAddr()
	if err != nil {
		return nil, err
	}
	_, port, _ := net.SplitHostPort(webhook)
	p, err := testenv.StartOperator(ctx, binary, kubeconfig, filepath.Join(dir, "operator.log"), operatorNamespace,
		"--webhook-port", port,
		"--webhook-cert-path", certDir,
		"--max-concurrent-rollouts", strconv.Itoa(maxRollouts),
	)
	if p == nil {
		return nil, err
	}
	return &operator{Process: p}, err
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
