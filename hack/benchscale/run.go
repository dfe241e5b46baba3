package main

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"time"

	"github.com/keepalive-operator/keepalive-operator/internal/testenv"
)

// window is what a steady-state window measured.
type window struct {
	events int
	reqs   tally
	cpu    float64
}

// cpuPerEvent is in seconds, floored at what the clock can tell apart (one
// tick over all the events), so that two idle windows compare as equal.
func (w window) cpuPerEvent() float64 {
	return max(w.cpu, 1.0/testenv.ClockTicks) / float64(w.events)
}

// result is what one run measured.
type result struct {
	size, limit           int
	deployments, selected int
	policies              int
	setup                 time.Duration

	converged   bool
	left        string // what was not done when convergence timed out
	convergence time.Duration
	cpuConverge float64
	cpuTotal    float64
	peakRSS     int64
	restRSS     int64

	startup, conv, settle tally
	requests              int // in the whole run
	// writes counts the template writes per Deployment over the whole run.
	writes   map[string]int
	rollouts int64

	noise, create window
	// statusTotal and statusBusiest count the status writes of each policy
	// in the creation window: in all, and in its busiest second.
	statusTotal, statusBusiest map[string]int
	// reflected is how long after the last creation the statuses counted
	// every pod; reflectedOK is false when they did not within 30 s.
	reflected   time.Duration
	reflectedOK bool
	// quietAfter is how long after convergence the operator went quiet:
	// no request for a few seconds (the events of the convergence are
	// sent at the client's rate), when the RSS at rest is read.
	quietAfter time.Duration
}

// runOne measures one size with one rollout limit on a fresh control plane.
func (b *bench) runOne(ctx context.Context, size, limit int) (res *result, err error) {
	name := runName(size, limit)
	dir := filepath.Join(b.tmp, fmt.Sprintf("%d-%d", size, limit))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create %s: %w", dir, err)
	}
	l := newLayout(size, b.namespaces, b.clusterPreset)
	res = &result{size: size, limit: limit, deployments: len(l.deployments), selected: l.selected(), policies: len(l.policies())}

	b.progress("%s: starting kube-apiserver and etcd", name)
	start := time.Now()
	p, err := startPlane(dir)
	if p != nil {
		defer func() { err = errors.Join(err, p.stop()) }()
	}
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // stops the watcher before the control plane
	w, err := startWatcher(ctx, p, p.env.Scheme)
	if err != nil {
		return nil, err
	}
	b.progress("%s: creating %d Deployments, their ReplicaSets and pods in %d namespaces", name, len(l.deployments), len(l.namespaces))
	if err := p.populate(ctx, l); err != nil {
		return nil, err
	}
	if err := testenv.WaitFor(ctx, 2*time.Minute, func() (bool, error) { return w.rolledOut(ctx) }); err != nil {
		return nil, fmt.Errorf("wait for the Deployments to report their first rollout: %w", err)
	}
	res.setup = time.Since(start)

	b.progress("%s: set up in %.1f s; starting the operator", name, res.setup.Seconds())
	op, err := startOperator(ctx, b.binary, p.kubeconfig, dir, limit)
	if op != nil {
		defer func() { err = errors.Join(err, op.stop()) }()
	}
	if err != nil {
		return nil, err
	}
	// Ready is the webhook's: the leader may still be reading the pods.
	if err := op.waitIdle(ctx, 2*time.Minute); err != nil {
		return nil, err
	}

	// Convergence: from creating the policies until every selected template
	// carries the values and every status is current.
	matched := l.matched()
	cpu0, err := op.cpu()
	if err != nil {
		return nil, err
	}
	t0 := time.Now()
	if err := p.createPolicies(ctx, l); err != nil {
		return nil, err
	}
	told := t0
	err = testenv.WaitFor(ctx, b.timeout, func() (bool, error) {
		if err := op.Alive(); err != nil {
			return false, err
		}
		left, err := w.remaining(ctx, l, matched)
		res.left = left
		if left != "" && time.Since(told) > 30*time.Second {
			b.progress("%s: %s", name, left)
			told = time.Now()
		}
		return left == "", err
	})
	t1 := time.Now()
	switch {
	case err == nil:
		res.converged = true
	case errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil:
		b.progress("%s: did not converge within %s: %s", name, b.timeout, res.left)
	default:
		return nil, fmt.Errorf("wait for convergence: %w", err)
	}
	res.convergence = t1.Sub(t0)
	cpu1, err := op.cpu()
	if err != nil {
		return nil, err
	}
	res.cpuConverge = cpu1 - cpu0
	if res.converged {
		b.progress("%s: converged in %.2f s, %.2f CPU s", name, res.convergence.Seconds(), res.cpuConverge)
	}

	if err := sleep(ctx, b.settle); err != nil {
		return nil, err
	}
	if err := waitQuiet(ctx, p.auditLog, 3*time.Second, time.Minute); err != nil {
		return nil, err
	}
	res.quietAfter = time.Since(t1)
	if res.restRSS, _, err = op.memory(); err != nil {
		return nil, err
	}
	t2 := time.Now()
	var w1, w2 time.Time
	if size > 0 && res.converged {
		w1 = time.Now()
		b.progress("%s: %d label changes no selector reads, in %s", name, b.events, b.window)
		if res.noise, err = b.steady(ctx, op, w1, func(k int) error {
			d := l.deployments[k%len(l.deployments)]
			return p.relabel(ctx, d.namespace, d.pod(k/len(l.deployments)%podsPerDeployment), fmt.Sprint(k))
		}); err != nil {
			return nil, err
		}
		// One namespace, one selected Deployment: its policy and the
		// cluster policy count the new pods.
		d := l.deployments[0]
		w2 = time.Now()
		b.progress("%s: %d pod creations in namespace %s, in %s", name, b.events, d.namespace, b.window)
		if res.create, err = b.steady(ctx, op, w2, func(k int) error {
			return p.addPod(ctx, d, fmt.Sprintf("%s-x%04d", d.replicaSet(), k))
		}); err != nil {
			return nil, err
		}
		last := w2.Add(time.Duration(b.events-1) * b.window / time.Duration(b.events))
		after := maps.Clone(matched)
		after["/"+clusterPolicy] += int32(b.events)
		after[d.namespace+"/"+namespacePolicy] += int32(b.events)
		err := testenv.WaitFor(ctx, 30*time.Second, func() (bool, error) {
			left, err := w.remaining(ctx, l, after)
			return left == "", err
		})
		res.reflected, res.reflectedOK = time.Since(last), err == nil
		if err != nil && !errors.Is(err, context.DeadlineExceeded) {
			return nil, fmt.Errorf("wait for the statuses to count the new pods: %w", err)
		}
	}

	if _, res.peakRSS, err = op.memory(); err != nil {
		return nil, err
	}
	if res.cpuTotal, err = op.cpu(); err != nil {
		return nil, err
	}
	res.rollouts = w.rollouts.Load()
	if err := op.stop(); err != nil {
		return nil, err
	}
	reqs, err := readAudit(p.auditLog, testenv.OperatorUser)
	if err != nil {
		return nil, err
	}
	res.startup = count(reqs, time.Time{}, t0)
	res.conv = count(reqs, t0, t1)
	if size > 0 && res.converged {
		res.settle = count(reqs, t1, w1)
		res.noise.reqs = count(reqs, w1, w1.Add(b.window+b.tail))
		res.create.reqs = count(reqs, w2, w2.Add(b.window+b.tail))
		res.statusTotal, res.statusBusiest = statusWrites(reqs, w2, w2.Add(b.window+b.tail))
	} else {
		res.settle = count(reqs, t1, t2)
	}
	res.writes = deploymentWrites(reqs)
	res.requests = len(reqs)
	b.progress("%s: done; %d requests by the operator in all, peak RSS %.1f MiB", name, res.requests, mib(res.peakRSS))
	return res, nil
}

// waitQuiet waits, at most max, until the operator has sent no request for
// quiet, so that the steady-state windows see only what their events cause.
func waitQuiet(ctx context.Context, auditLog string, quiet, max time.Duration) error {
	deadline := time.Now().Add(max)
	for time.Now().Before(deadline) {
		reqs, err := readAudit(auditLog, testenv.OperatorUser)
		if err != nil {
			return err
		}
		if len(reqs) == 0 || time.Since(reqs[len(reqs)-1].at) >= quiet {
			return nil
		}
		if err := sleep(ctx, 500*time.Millisecond); err != nil {
			return err
		}
	}
	return nil
}

// steady runs a window from start: events calls of event, evenly spaced,
// and measures the operator's CPU until the window's tail has passed.
func (b *bench) steady(ctx context.Context, op *operator, start time.Time, event func(k int) error) (window, error) {
	w := window{events: b.events}
	cpu0, err := op.cpu()
	if err != nil {
		return w, err
	}
	for k := range b.events {
		if err := sleep(ctx, time.Until(start.Add(time.Duration(k)*b.window/time.Duration(b.events)))); err != nil {
			return w, err
		}
		if err := event(k); err != nil {
			return w, err
		}
	}
	if err := sleep(ctx, time.Until(start.Add(b.window+b.tail))); err != nil {
		return w, err
	}
	if err := op.Alive(); err != nil {
		return w, err
	}
	cpu1, err := op.cpu()
	w.cpu = cpu1 - cpu0
	return w, err
}

func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }
