// Command benchadmission measures what admission adds to a pod's creation
// on a real API server (envtest's kube-apiserver and etcd), for the choices a
// user has: no admission, a webhook that does nothing (the floor of any
// webhook), this operator with one policy and with 1,000 policies, a
// MutatingAdmissionPolicy, and, with -kyverno, Kyverno's admission
// controller. Each adds the same three sysctls. Every configuration has its
// own namespace, and the rounds run them one after another in a rotating
// order on the same control plane, so that the machine's drift touches them
// alike. Every created pod is checked for exactly the expected sysctls. It
// prints a report with the targets as ratios within the run. `make
// bench-admission` runs it; see BENCHMARKS.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
)

// logOut receives the progress of the run.
var logOut io.Writer = os.Stderr

func main() {
	if len(os.Args) > 1 && os.Args[1] == noopCommand {
		if err := serveNoop(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "benchadmission noop:", err)
			os.Exit(1)
		}
		return
	}
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "benchadmission:", err)
		os.Exit(1)
	}
}

type options struct {
	rounds     int
	pods       int
	clients    int
	namespaces int
	namespaced int
	cluster    int
	kyverno    string
	handler    bool
	profile    string
	out        string
	keep       bool
	profileFor time.Duration
}

func parseFlags(args []string) (options, error) {
	o := options{}
	fs := flag.NewFlagSet("benchadmission", flag.ContinueOnError)
	fs.IntVar(&o.rounds, "rounds", 15, "Measured rounds, each creating -pods pods under every configuration; one more round before them warms up and is not counted.")
	fs.IntVar(&o.pods, "pods", 800, "Pods each configuration creates in a round.")
	fs.IntVar(&o.clients, "clients", 8, "Clients creating pods at once.")
	fs.IntVar(&o.namespaces, "namespaces", 10000, "Namespaces of the cluster, created before the first round.")
	fs.IntVar(&o.namespaced, "namespaced-policies", 500, "KeepalivePolicies of the operator's large configuration, one in each of as many namespaces.")
	fs.IntVar(&o.cluster, "cluster-policies", 500, "ClusterKeepalivePolicies of the operator's large configuration, the one that selects the benchmark's pods included.")
	fs.StringVar(&o.kyverno, "kyverno", "", "Folder of Kyverno's admission controller and CRDs (hack/setup-kyverno.sh prints it); empty leaves Kyverno out.")
	fs.BoolVar(&o.handler, "handler", true, "Also run the handler's benchmark at one and at 1,000 policies (go test -bench BenchmarkAdmissionPolicies).")
	fs.StringVar(&o.profile, "profile", "", "Folder for profiles: after the rounds, each configuration creates pods for -profile-for more while the kube-apiserver's and the operator's CPU are profiled; the operator's heap is profiled at the end.")
	fs.DurationVar(&o.profileFor, "profile-for", 10*time.Second, "How long each CPU profile lasts; at least 1s.")
	fs.StringVar(&o.out, "out", "bench-admission.out", "File the report is written to, besides standard output.")
	fs.BoolVar(&o.keep, "keep", false, "Keep the temporary folder: logs, kubeconfigs, certificates.")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if o.rounds < 1 || o.pods < 1 || o.clients < 1 {
		return o, errors.New("-rounds, -pods and -clients must be positive")
	}
	if o.namespaced > o.namespaces {
		return o, fmt.Errorf("-namespaced-policies %d needs at least as many -namespaces, not %d", o.namespaced, o.namespaces)
	}
	if o.cluster < 1 || o.namespaced < 0 {
		return o, errors.New("-cluster-policies must be at least 1 and -namespaced-policies at least 0")
	}
	if o.profileFor < time.Second {
		return o, fmt.Errorf("-profile-for must be at least 1s, not %s", o.profileFor)
	}
	return o, nil
}

func run() error {
	o, err := parseFlags(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		return errors.New("KUBEBUILDER_ASSETS is not set: run `make bench-admission`, or export KUBEBUILDER_ASSETS=$(hack/setup-envtest.sh)")
	}
	ctrl.SetLogger(zap.New(zap.WriteTo(logOut)))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	b := &bench{options: o, started: time.Now()}
	if b.tmp, err = os.MkdirTemp("", "keepalive-bench-admission-"); err != nil {
		return fmt.Errorf("create a temporary folder: %w", err)
	}
	if o.keep {
		b.progress("keeping %s", b.tmp)
	} else {
		defer os.RemoveAll(b.tmp)
	}
	var handler *handlerBench
	if o.handler {
		// Before the control plane starts, so that the two do not share
		// the machine.
		b.progress("running the handler's benchmark at one and at 1,000 policies")
		if handler, err = runHandlerBench(ctx); err != nil {
			return err
		}
	}
	res, err := b.measure(ctx)
	if err != nil {
		return err
	}
	report := b.report(res, handler)
	fmt.Print(report)
	if err := os.WriteFile(o.out, []byte(report), 0o644); err != nil {
		return fmt.Errorf("write the report: %w", err)
	}
	b.progress("report written to %s", o.out)
	return nil
}

// bench is what the run shares.
type bench struct {
	options
	tmp     string
	started time.Time
}

func (b *bench) progress(format string, args ...any) {
	fmt.Fprintf(logOut, "[%6.1fs] %s\n", time.Since(b.started).Seconds(), fmt.Sprintf(format, args...))
}
