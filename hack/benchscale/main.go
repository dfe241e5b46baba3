// Command benchscale measures the operator's reconciler on a real API server
// (envtest's kube-apiserver and etcd) at several cluster sizes: the time from
// applying the policies until every stale Deployment is patched and every
// status is current, the operator's CPU and memory, and its API requests,
// counted by the API server's audit log; then two steady-state windows, one
// of label changes no selector reads and one of pod creations. It prints a
// report with the targets as ratios within the run. `make bench-scale` runs
// it; see BENCHMARKS.md.
//
// Every run (one size, one rollout limit) gets a fresh control plane, filled
// by the program as the controllers and kubelets of a cluster would fill it:
// Deployments, their ReplicaSets and running pods on a few nodes. The
// program also plays the Deployment controller: it reports a rollout done as
// soon as a template changes. The operator is the real binary, run as its
// own user so that its requests can be told apart.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/keepalive-operator/keepalive-operator/api/v1alpha1"
	"github.com/keepalive-operator/keepalive-operator/internal/testenv"
)

// logOut receives the progress of the run.
var logOut io.Writer = os.Stderr

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "benchscale:", err)
		os.Exit(1)
	}
}

// noLimit stands for "no rollout limit": larger than any run's Deployment
// count, and accepted by every version of --max-concurrent-rollouts.
const noLimit = 100000

// defaultLimit is the operator's default --max-concurrent-rollouts.
const defaultLimit = 5

type options struct {
	sizes      []int
	limits     []int
	namespaces int
	window     time.Duration
	events     int
	settle     time.Duration
	tail       time.Duration
	timeout    time.Duration
	out        string
	keep       bool
	// clusterPreset is the cluster policy's hop.
	clusterPreset v1alpha1.Preset
}

func parseFlags(args []string) (options, error) {
	o := options{}
	fs := flag.NewFlagSet("benchscale", flag.ContinueOnError)
	sizes := fs.String("sizes", "1000,5000,10000,20000", "Pod counts to measure, comma-separated; each a multiple of 20.")
	limits := fs.String("limits", fmt.Sprintf("%d,%d", noLimit, defaultLimit), fmt.Sprintf("--max-concurrent-rollouts values to run each size with; %d means no limit.", noLimit))
	fs.IntVar(&o.namespaces, "namespaces", 50, "Namespaces the Deployments are spread over, each with its own policy.")
	fs.DurationVar(&o.window, "window", 30*time.Second, "Length of each steady-state window.")
	fs.IntVar(&o.events, "events", 100, "Label changes, and pod creations, in each steady-state window, evenly spaced.")
	fs.DurationVar(&o.settle, "settle", 5*time.Second, "Wait after convergence before the RSS at rest is read and the windows start.")
	fs.DurationVar(&o.tail, "tail", 2*time.Second, "How long after a window's last event its requests and CPU are still counted.")
	fs.DurationVar(&o.timeout, "timeout", 10*time.Minute, "Longest wait for convergence; the run then reports that it did not converge.")
	fs.StringVar(&o.out, "out", "bench-scale.out", "File the report is written to, besides standard output.")
	preset := fs.String("cluster-preset", string(v1alpha1.PresetAWSNLB), "The cluster policy's preset: aws-nlb (175/30/9, larger than the namespaced policies' 120/30/9) or azure-lb (the same values).")
	fs.BoolVar(&o.keep, "keep", false, "Keep the temporary folder: audit logs, operator logs, kubeconfigs.")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	var err error
	if o.sizes, err = ints(*sizes); err != nil {
		return o, fmt.Errorf("-sizes: %w", err)
	}
	if o.limits, err = ints(*limits); err != nil {
		return o, fmt.Errorf("-limits: %w", err)
	}
	o.clusterPreset = v1alpha1.Preset(*preset)
	if !slices.Contains(clusterPresets, o.clusterPreset) {
		return o, fmt.Errorf("-cluster-preset: %q is none of %v", *preset, clusterPresets)
	}
	slices.Sort(o.sizes)
	for _, s := range o.sizes {
		if s < 2*podsPerDeployment || s%podsPerDeployment != 0 {
			return o, fmt.Errorf("-sizes: %d is not a multiple of %d of at least %d", s, podsPerDeployment, 2*podsPerDeployment)
		}
	}
	for _, l := range o.limits {
		if l < 1 {
			return o, fmt.Errorf("-limits: %d is below 1", l)
		}
	}
	if o.namespaces < 1 || o.events < 1 || o.window <= 0 {
		return o, errors.New("-namespaces, -events and -window must be positive")
	}
	return o, nil
}

func ints(s string) ([]int, error) {
	var out []int
	for f := range strings.SplitSeq(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil {
			return nil, err
		}
		out = append(out, n)
	}
	return out, nil
}

// bench is what every run shares.
type bench struct {
	options
	root, tmp, binary string
	started           time.Time
}

func (b *bench) progress(format string, args ...any) {
	fmt.Fprintf(logOut, "[%6.1fs] %s\n", time.Since(b.started).Seconds(), fmt.Sprintf(format, args...))
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
		return errors.New("KUBEBUILDER_ASSETS is not set: run `make bench-scale`, or export KUBEBUILDER_ASSETS=$(hack/setup-envtest.sh)")
	}
	// The program's own clients and caches log little.
	ctrl.SetLogger(zap.New(zap.WriteTo(logOut)))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	b := &bench{options: o, root: repoRoot(), started: time.Now()}
	if b.tmp, err = os.MkdirTemp("", "keepalive-bench-scale-"); err != nil {
		return fmt.Errorf("create a temporary folder: %w", err)
	}
	if o.keep {
		b.progress("keeping %s", b.tmp)
	} else {
		defer os.RemoveAll(b.tmp)
	}
	b.progress("building the operator")
	if b.binary, err = testenv.BuildOperator(b.tmp); err != nil {
		return err
	}

	// The operator with the namespaces and policies but no workloads: what
	// its RSS is without pods to cache.
	baseline, err := b.runOne(ctx, 0, defaultLimit)
	if err != nil {
		return fmt.Errorf("run with no pods: %w", err)
	}
	var results []*result
	for i, size := range o.sizes {
		// Alternate which configuration goes first, so that a drift of the
		// machine does not always favour the same one.
		limits := slices.Clone(o.limits)
		if i%2 == 1 {
			slices.Reverse(limits)
		}
		for _, limit := range limits {
			r, err := b.runOne(ctx, size, limit)
			if err != nil {
				return fmt.Errorf("run %s: %w", runName(size, limit), err)
			}
			results = append(results, r)
		}
	}
	report := b.report(baseline, results, time.Since(b.started))
	fmt.Print(report)
	if err := os.WriteFile(o.out, []byte(report), 0o644); err != nil {
		return fmt.Errorf("write the report: %w", err)
	}
	b.progress("report written to %s", o.out)
	return nil
}

// repoRoot is the repository's top folder, where the program's source is
// two levels down.
func repoRoot() string {
	if _, file, _, ok := runtime.Caller(0); ok {
		if root := filepath.Join(filepath.Dir(file), "..", ".."); exists(filepath.Join(root, "go.mod")) {
			return root
		}
	}
	return "."
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func runName(size, limit int) string {
	return fmt.Sprintf("%d pods, %s", size, limitName(limit))
}

func limitName(limit int) string {
	if limit >= noLimit {
		return "no limit"
	}
	return fmt.Sprintf("limit %d", limit)
}
