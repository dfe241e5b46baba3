package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/keepalive-operator/keepalive-operator/internal/testenv"
)

// The configurations, by name: the value of configLabel on their namespace.
const (
	configNone     = "none"
	configNoop     = "noop"
	configPatch    = "patch"
	configOperator = "operator"
	configScale    = "operator-scale"
	configMAP      = "map"
	configKyverno  = "kyverno"
)

// results is what the run measured.
type results struct {
	configs []*config
	// slots are the measured rounds of each configuration, by name.
	slots map[string][]slot
	// procs name the measured processes; peak is each one's peak RSS at
	// the end of the run, rss its RSS then and mapped the part of it that
	// maps files.
	procs             []string
	peak, rss, mapped []int64
	// scaleRSS is the operator's largest RSS once it held the large
	// configuration's policies, and scaleMapped the part of it that maps
	// files.
	scaleRSS, scaleMapped int64
	policies              int
	took                  time.Duration
}

// measure sets the cluster up and runs the rounds.
func (b *bench) measure(ctx context.Context) (res *results, err error) {
	b.progress("starting kube-apiserver and etcd")
	p, err := startPlane(b.tmp)
	if err != nil {
		if p != nil {
			err = errors.Join(err, p.stop())
		}
		return nil, err
	}
	defer func() { err = errors.Join(err, p.stop()) }()

	configs := []*config{
		{name: configNone, title: "no admission"},
		{name: configNoop, title: "no-op webhook", webhook: "noop.bench.keepalive.io"},
		{name: configPatch, title: "constant-patch webhook", want: wantSysctls, webhook: "patch.bench.keepalive.io"},
		{name: configOperator, title: "operator, 1 policy", want: wantSysctls, webhook: "pods.keepalive.io", operator: true},
		{name: configScale, title: "operator, 1,000 policies", want: wantSysctls, webhook: "pods.keepalive.io", operator: true},
		{name: configMAP, title: "MutatingAdmissionPolicy", want: wantSysctls, plugin: "MutatingAdmissionPolicy"},
	}
	if b.kyverno != "" {
		configs = append(configs, &config{name: configKyverno, title: "Kyverno", want: wantSysctls, webhook: "mutate.kyverno.svc-fail"})
	}
	for _, c := range configs {
		c.namespace = "bench-" + c.name
	}
	b.progress("creating %d namespaces", b.namespaces+len(configs)+1)
	if err := p.createNamespaces(ctx, configs, b.namespaces); err != nil {
		return nil, err
	}

	opEnd, err := newEndpoint(b.tmp + "/operator-certs")
	if err != nil {
		return nil, err
	}
	noopEnd, err := newEndpoint(b.tmp + "/noop-certs")
	if err != nil {
		return nil, err
	}
	noop, err := b.startNoop(ctx, noopEnd)
	if err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, noop.Stop(10*time.Second)) }()
	p.measure("no-op and patch webhooks", noop)
	b.progress("building and starting the operator")
	var pprof string
	if b.profile != "" {
		if pprof, err = testenv.FreeAddr(); err != nil {
			return nil, err
		}
	}
	op, err := b.startOperator(ctx, p, opEnd, pprof)
	if op != nil {
		defer func() { err = errors.Join(err, op.Stop(30*time.Second)) }()
	}
	if err != nil {
		return nil, err
	}
	p.measure("operator", op)

	if err := p.c.Create(ctx, basePolicy()); err != nil {
		return nil, fmt.Errorf("create the ClusterKeepalivePolicy: %w", err)
	}
	wc, err := webhookConfigurations(opEnd, noopEnd)
	if err != nil {
		return nil, err
	}
	if err := p.c.Create(ctx, wc); err != nil {
		return nil, fmt.Errorf("create the webhook configuration: %w", err)
	}
	mapPolicy, mapBinding := mutatingAdmissionPolicy(configMAP)
	if err := p.c.Create(ctx, mapPolicy); err != nil {
		return nil, fmt.Errorf("create the MutatingAdmissionPolicy: %w", err)
	}
	if err := p.c.Create(ctx, mapBinding); err != nil {
		return nil, fmt.Errorf("create the MutatingAdmissionPolicyBinding: %w", err)
	}
	if b.kyverno != "" {
		b.progress("starting Kyverno")
		setup := kyvernoSetup{
			cfg: p.env.Config, kubeconfig: p.env.Kubeconfig, binDir: b.kyverno, dir: b.tmp,
			selector: map[string]string{configLabel: configKyverno}, sysctls: wantSysctls,
		}
		// kyErr, not err: the deferred function must set the named result,
		// which an err declared in this block would shadow.
		ky, kyErr := startKyverno(ctx, setup)
		if ky != nil {
			defer func() {
				err = errors.Join(err, ky.Stop(30*time.Second), removeKyvernoWebhooks(context.Background(), p.env.Config))
			}()
		}
		if kyErr != nil {
			return nil, kyErr
		}
		if err := verifyKyverno(ctx, setup, ky, "bench-"+configKyverno, "bench-"+configNone); err != nil {
			return nil, err
		}
		p.measure("Kyverno", ky)
	}

	scale := b.scalePolicies()
	res = &results{configs: configs, slots: map[string][]slot{}, policies: len(scale) + 1}
	for _, c := range configs {
		switch c.name {
		case configScale:
			c.before = func(ctx context.Context) error {
				if err := p.addScalePolicies(ctx, scale); err != nil {
					return fmt.Errorf("add the %d policies: %w", len(scale), err)
				}
				if err := p.probe(ctx, c); err != nil {
					return err
				}
				if err := testenv.WaitIdle(ctx, op.PID(), 2*time.Minute); err != nil {
					return fmt.Errorf("the operator with %d policies: %w", len(scale)+1, err)
				}
				rss, _, err := testenv.Memory(op.PID())
				if err != nil {
					return err
				}
				mapped, err := testenv.MappedFiles(op.PID())
				if err != nil {
					return err
				}
				if rss > res.scaleRSS {
					res.scaleRSS, res.scaleMapped = rss, mapped
				}
				return nil
			}
			c.after = func(ctx context.Context) error {
				if err := p.removeScalePolicies(ctx, scale); err != nil {
					return fmt.Errorf("remove the %d policies: %w", len(scale), err)
				}
				return testenv.WaitIdle(ctx, op.PID(), 2*time.Minute)
			}
		default:
			if err := p.probe(ctx, c); err != nil {
				return nil, err
			}
		}
	}
	if err := testenv.WaitIdle(ctx, op.PID(), 2*time.Minute); err != nil {
		return nil, fmt.Errorf("the operator after the setup: %w", err)
	}

	start := time.Now()
	for round := 0; round <= b.rounds; round++ {
		for i := range configs {
			// Each round starts one configuration later, so that none
			// always follows the same one.
			c := configs[(i+round)%len(configs)]
			if c.before != nil {
				if err := c.before(ctx); err != nil {
					return nil, err
				}
			}
			s, err := b.run(ctx, p, c, op.PID())
			if err != nil {
				return nil, err
			}
			if err := p.clear(ctx, c); err != nil {
				return nil, err
			}
			if c.after != nil {
				if err := c.after(ctx); err != nil {
					return nil, err
				}
			}
			if round > 0 {
				res.slots[c.name] = append(res.slots[c.name], s)
			}
		}
		label := fmt.Sprintf("round %d of %d", round, b.rounds)
		if round == 0 {
			label = "warm-up round"
		}
		b.progress("%s done (%s so far)", label, time.Since(start).Round(time.Second))
	}
	if b.profile != "" {
		for _, c := range configs {
			if err := b.profileConfig(ctx, p, c, pprof); err != nil {
				return nil, err
			}
		}
	}
	res.took = time.Since(b.started)
	for _, pr := range p.procs {
		rss, peak, err := testenv.Memory(pr.pid)
		if err != nil {
			return nil, err
		}
		mapped, err := testenv.MappedFiles(pr.pid)
		if err != nil {
			return nil, err
		}
		res.procs = append(res.procs, pr.name)
		res.peak = append(res.peak, peak)
		res.rss = append(res.rss, rss)
		res.mapped = append(res.mapped, mapped)
	}
	return res, nil
}

// profileConfig creates the configuration's pods for b.profileFor while it
// profiles the CPU of the kube-apiserver and of the operator, into
// b.profile/<configuration>.<process>.pprof, then the operator's heap, into
// b.profile/<configuration>.operator.heap.pprof.
func (b *bench) profileConfig(ctx context.Context, p *plane, c *config, pprof string) error {
	if c.before != nil {
		if err := c.before(ctx); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(b.profile, 0o755); err != nil {
		return err
	}
	secs := strconv.Itoa(int(b.profileFor.Seconds()))
	// A profile takes secs seconds; what is beyond the margin is a hang.
	limit := b.profileFor + 30*time.Second
	write := func(process string, raw []byte) error {
		return os.WriteFile(filepath.Join(b.profile, c.name+"."+process+".pprof"), raw, 0o644)
	}
	var wg sync.WaitGroup
	var apiErr, opErr error
	wg.Go(func() {
		ctx, cancel := context.WithTimeout(ctx, limit)
		defer cancel()
		raw, err := p.cs.CoreV1().RESTClient().Get().AbsPath("/debug/pprof/profile").Param("seconds", secs).DoRaw(ctx)
		if err == nil {
			err = write("kube-apiserver", raw)
		}
		apiErr = err
	})
	wg.Go(func() {
		raw, err := download(ctx, "http://"+pprof+"/debug/pprof/profile?seconds="+secs, limit)
		if err == nil {
			err = write("operator", raw)
		}
		opErr = err
	})
	lat, failed, errs, wrong := b.create(ctx, p, c, 0, b.profileFor)
	wg.Wait()
	if err := errors.Join(apiErr, opErr, c.check(len(lat), failed, errs, wrong)); err != nil {
		return fmt.Errorf("profile %s: %w", c.title, err)
	}
	raw, err := download(ctx, "http://"+pprof+"/debug/pprof/heap", 30*time.Second)
	if err == nil {
		err = write("operator.heap", raw)
	}
	if err != nil {
		return fmt.Errorf("profile %s: the operator's heap: %w", c.title, err)
	}
	b.progress("profiled %s: %d pods in %s", c.title, len(lat), b.profileFor)
	if err := p.clear(ctx, c); err != nil {
		return err
	}
	if c.after != nil {
		return c.after(ctx)
	}
	return nil
}

// download returns the body of url, failing unless the answer is 200 OK
// within limit.
func download(ctx context.Context, url string, limit time.Duration) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("GET %s: %s: %s", url, resp.Status, raw)
	}
	return raw, err
}
