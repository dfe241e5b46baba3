package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"time"

	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/keepalive-operator/keepalive-operator/api/v1alpha1"
	"github.com/keepalive-operator/keepalive-operator/internal/audit"
)

type auditOptions struct {
	clientFlags
	node      string
	proc      string
	interval  time.Duration
	probeAddr string
	zap       zap.Options
}

func parseAuditFlags(args []string) (auditOptions, error) {
	var o auditOptions
	fs := flag.NewFlagSet("keepalive-operator audit", flag.ContinueOnError)
	o.bind(fs, "agent")
	fs.StringVar(&o.node, "node-name", os.Getenv("NODE_NAME"), "The node whose pods the agent audits and whose KeepaliveNodeReport it writes (default: NODE_NAME).")
	fs.StringVar(&o.proc, "proc", "/proc", "The host's /proc: the agent needs hostPID to see the pods' processes.")
	fs.DurationVar(&o.interval, "interval", time.Minute, "How often the agent reads the sockets; the report is written when it changed, and every 10 intervals otherwise.")
	fs.StringVar(&o.probeAddr, "health-probe-bind-address", ":8082", "Address the /healthz and /readyz endpoints bind to; /healthz fails after three intervals without a successful audit.")
	o.zap.BindFlags(fs)
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if o.node == "" {
		return o, errors.New("--node-name (or NODE_NAME) is required: the agent writes only its own node's report")
	}
	if err := o.check(); err != nil {
		return o, err
	}
	if o.interval < time.Second {
		return o, fmt.Errorf("--interval must be at least 1s, is %s", o.interval)
	}
	return o, nil
}

// runAudit runs the node agent: no leader election, no webhook, no
// metrics; its reports are its output.
func runAudit(ctx context.Context, args []string) error {
	o, err := parseAuditFlags(args)
	if err != nil {
		return err
	}
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&o.zap)))
	cfg, err := restConfig(o.kubeconfig)
	if err != nil {
		return err
	}
	limitClient(cfg, o.qps, o.burst)
	scheme, err := newScheme()
	if err != nil {
		return fmt.Errorf("build scheme: %w", err)
	}
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                 scheme,
		Cache:                  audit.CacheOptions(o.node),
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: o.probeAddr,
		Client:                 client.Options{Cache: &client.CacheOptions{DisableFor: []client.Object{&v1alpha1.KeepaliveNodeReport{}}}},
	})
	if err != nil {
		return fmt.Errorf("create manager: %w", err)
	}
	agent := &audit.Agent{Client: mgr.GetClient(), Reports: mgr.GetAPIReader(), Node: o.node, Proc: o.proc, Interval: o.interval}
	if err := mgr.Add(agent); err != nil {
		return err
	}
	if err := mgr.AddHealthzCheck("audit", agent.Healthy); err != nil {
		return fmt.Errorf("add health check: %w", err)
	}
	if err := mgr.AddReadyzCheck("ping", healthz.Ping); err != nil {
		return fmt.Errorf("add ready check: %w", err)
	}
	ctrl.Log.Info("starting the audit agent", "node", o.node, "interval", o.interval)
	if err := mgr.Start(ctx); err != nil {
		return fmt.Errorf("run the audit agent: %w", err)
	}
	return nil
}
