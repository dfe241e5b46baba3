package webhook

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/keepalive-operator/keepalive-operator/api/v1alpha1"
	"github.com/keepalive-operator/keepalive-operator/internal/keepalive"
	"github.com/keepalive-operator/keepalive-operator/internal/testenv"
	"github.com/keepalive-operator/keepalive-operator/internal/testobj"
)

// A webhook that accepts connections and never answers must cost each pod
// create at most the webhook's timeout: the API server gives up after
// timeoutSeconds and, with failurePolicy Ignore, admits the pod unchanged.

const (
	// installedWebhook is the name of the MutatingWebhookConfiguration of
	// config/webhook, which envtest installs.
	installedWebhook = "webhook-configuration"
	// webhookTimeout is the timeoutSeconds the webhook must have, 2 s as
	// config/webhook/manifests.yaml and the chart set it, not read from the
	// installed configuration: one with a longer timeout must fail.
	webhookTimeout = 2 * time.Second
	// createMargin is what a create may take beyond the webhook timeout:
	// the rest of the create (other admission, the etcd write, the
	// response) takes milliseconds, tens of them with 50 creates at once
	// on two cores, but a loaded machine stalls for a second at times.
	// Three quarters of the timeout leave room for that and still catch a
	// second attempt at the webhook or a timeout twice as long.
	createMargin = webhookTimeout * 3 / 4
)

// blackHole accepts TCP connections and never answers. With a TLS
// configuration it completes the handshake first, then never reads the
// request.
type blackHole struct {
	ln       net.Listener
	tls      *tls.Config
	accepted atomic.Int64
	mu       sync.Mutex
	conns    []net.Conn
}

func startBlackHole(cfg *tls.Config) (*blackHole, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	b := &blackHole{ln: ln, tls: cfg}
	go b.serve()
	return b, nil
}

func (b *blackHole) serve() {
	for {
		conn, err := b.ln.Accept()
		if err != nil {
			return
		}
		if b.tls != nil {
			tc := tls.Server(conn, b.tls)
			go func() { _ = tc.HandshakeContext(context.Background()) }()
			conn = tc
		}
		b.mu.Lock()
		b.conns = append(b.conns, conn)
		b.mu.Unlock()
		b.accepted.Add(1)
	}
}

// url is where a webhook configuration points at it.
func (b *blackHole) url() string {
	return "https://" + b.ln.Addr().String() + Path
}

// close stops listening and closes every connection it holds.
func (b *blackHole) close() {
	_ = b.ln.Close()
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, c := range b.conns {
		_ = c.Close()
	}
}

// envtestTLS serves the certificate envtest made for the webhook, whose CA
// the installed configuration trusts: the TLS black hole passes the
// handshake.
func envtestTLS(e *testenv.Env) (*tls.Config, error) {
	dir := e.WebhookInstallOptions.LocalServingCertDir
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key"))
	if err != nil {
		return nil, err
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, nil
}

// unlimited is a client with no rate limit of its own, so that concurrent
// creates reach the API server at once.
func unlimited(cfg *rest.Config, e *testenv.Env) (client.Client, error) {
	cfg = rest.CopyConfig(cfg)
	cfg.QPS, cfg.Burst = -1, 0
	return client.New(cfg, client.Options{Scheme: e.Scheme})
}

// pointWebhook points the installed webhook configuration at url and
// returns its previous client configuration.
func pointWebhook(ctx context.Context, c client.Client, url string) (admissionregistrationv1.WebhookClientConfig, error) {
	var cfg admissionregistrationv1.MutatingWebhookConfiguration
	if err := c.Get(ctx, client.ObjectKey{Name: installedWebhook}, &cfg); err != nil {
		return admissionregistrationv1.WebhookClientConfig{}, err
	}
	if len(cfg.Webhooks) != 1 {
		return admissionregistrationv1.WebhookClientConfig{}, fmt.Errorf("%s has %d webhooks, want 1", installedWebhook, len(cfg.Webhooks))
	}
	prev := *cfg.Webhooks[0].ClientConfig.DeepCopy()
	cfg.Webhooks[0].ClientConfig.URL = &url
	return prev, c.Update(ctx, &cfg)
}

// restoreWebhook gives the installed webhook configuration back its client
// configuration.
func restoreWebhook(ctx context.Context, c client.Client, cc admissionregistrationv1.WebhookClientConfig) error {
	var cfg admissionregistrationv1.MutatingWebhookConfiguration
	if err := c.Get(ctx, client.ObjectKey{Name: installedWebhook}, &cfg); err != nil {
		return err
	}
	cfg.Webhooks[0].ClientConfig = cc
	return c.Update(ctx, &cfg)
}

// waitUntil dry-runs pod creates in ns until done says the API server calls
// the webhook it was pointed at, at most a minute.
func waitUntil(ctx context.Context, c client.Client, ns string, done func(*corev1.Pod) bool) error {
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		pod := testobj.MakePod(ns, "probe").Obj()
		if err := c.Create(ctx, pod, client.DryRunAll); err != nil {
			return fmt.Errorf("dry-run create: %w", err)
		}
		if done(pod) {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return errors.New("the API server did not call the webhook it was pointed at within a minute")
}

// swallowedBy says whether a create reached the black hole.
func swallowedBy(b *blackHole) func(*corev1.Pod) bool {
	before := b.accepted.Load()
	return func(*corev1.Pod) bool { return b.accepted.Load() > before }
}

// injected says whether the operator's webhook admitted the pod.
func injected(p *corev1.Pod) bool { _, ok := p.Annotations[keepalive.AnnotationPolicy]; return ok }

// createPods creates n pods in ns, workers at a time, and returns how long
// each create took and the errors of those that failed.
func createPods(ctx context.Context, c client.Client, ns string, n, workers int) ([]time.Duration, []error) {
	var (
		mu   sync.Mutex
		took []time.Duration
		errs []error
		next atomic.Int64
		wg   sync.WaitGroup
	)
	for range workers {
		wg.Go(func() {
			for next.Add(1) <= int64(n) {
				pod := testobj.MakePod(ns, "").Obj()
				pod.GenerateName = "blackhole-"
				start := time.Now()
				err := c.Create(ctx, pod)
				d := time.Since(start)
				mu.Lock()
				took = append(took, d)
				if err != nil {
					errs = append(errs, err)
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return took, errs
}

// quantile is the q-quantile (nearest rank) of sorted durations.
func quantile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted))+0.999999) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// distribution is p50, p90, p99 and max of durations.
type distribution struct{ p50, p90, p99, max time.Duration }

func distributionOf(took []time.Duration) distribution {
	s := slices.Clone(took)
	slices.Sort(s)
	return distribution{quantile(s, 0.50), quantile(s, 0.90), quantile(s, 0.99), quantile(s, 1)}
}

func (d distribution) String() string {
	ms := func(d time.Duration) string { return fmt.Sprintf("%.0f ms", float64(d)/float64(time.Millisecond)) }
	return fmt.Sprintf("p50 %s, p90 %s, p99 %s, max %s", ms(d.p50), ms(d.p90), ms(d.p99), ms(d.max))
}

var _ = Describe("with a webhook that never answers", Serial, func() {
	var (
		fast client.Client
		ns   string
	)
	BeforeEach(func() {
		var err error
		fast, err = unlimited(env.Config, env)
		Expect(err).NotTo(HaveOccurred())
		ns = newNamespace(nil)
		createPolicy(testobj.Spec().Preset(v1alpha1.PresetAWSNLB).Policy(ns, "nlb"))
	})

	// blackHoleFor points the project's webhook configuration at a new
	// black hole until the spec ends.
	blackHoleFor := func(cfg *tls.Config) *blackHole {
		b, err := startBlackHole(cfg)
		Expect(err).NotTo(HaveOccurred())
		prev, err := pointWebhook(ctx, k8sClient, b.url())
		Expect(err).NotTo(HaveOccurred())
		DeferCleanup(func() {
			Expect(restoreWebhook(ctx, k8sClient, prev)).To(Succeed())
			Expect(waitUntil(ctx, fast, ns, injected)).To(Succeed(), "the real webhook is not called again")
			b.close()
		})
		Expect(waitUntil(ctx, fast, ns, swallowedBy(b))).To(Succeed())
		return b
	}

	DescribeTable("creates every pod, each within the timeout and a margin",
		func(cfg func() *tls.Config) {
			b := blackHoleFor(cfg())
			before := b.accepted.Load()
			took, errs := createPods(ctx, fast, ns, 3, 1)
			more, moreErrs := createPods(ctx, fast, ns, 100, 50)
			took, errs = append(took, more...), append(errs, moreErrs...)
			d := distributionOf(took)
			AddReportEntry("create latency", d.String())
			GinkgoWriter.Printf("%d creates: %s\n", len(took), d)

			Expect(errs).To(BeEmpty(), "pods were rejected")
			Expect(took).To(HaveLen(103))
			Expect(d.max).To(BeNumerically("<=", webhookTimeout+createMargin),
				"a create took longer than the %s timeout and a %s margin: %s", webhookTimeout, createMargin, d)
			// Every create went to the black hole and waited for it.
			Expect(b.accepted.Load() - before).To(BeNumerically(">=", 103))
			Expect(d.p50).To(BeNumerically(">=", webhookTimeout-100*time.Millisecond))

			var pods corev1.PodList
			Expect(k8sClient.List(ctx, &pods, client.InNamespace(ns))).To(Succeed())
			Expect(pods.Items).To(HaveLen(103))
			for _, p := range pods.Items {
				Expect(p.Annotations).NotTo(HaveKey(keepalive.AnnotationPolicy), "%s was admitted by the webhook", p.Name)
			}
		},
		Entry("accepting TCP and never reading", func() *tls.Config { return nil }),
		Entry("completing TLS and never answering", func() *tls.Config {
			cfg, err := envtestTLS(env)
			Expect(err).NotTo(HaveOccurred())
			return cfg
		}),
	)
})

// BenchmarkBlackHoleWebhook measures pod creates through the real API
// server with the project's webhook configuration pointed at a black hole
// (plain TCP and TLS), against two baselines interleaved in the same rounds:
// pods no webhook is called for (a namespace labelled
// keepalive.io/inject=disabled) and pods the operator's webhook injects. It
// runs once whatever b.N; run it with -benchtime 1x.
func BenchmarkBlackHoleWebhook(b *testing.B) {
	const rounds, perRound, workers = 5, 20, 10
	ctx := context.Background()
	logf.SetLogger(logr.Discard())
	e, err := testenv.Start(testenv.CRDs|testenv.Webhooks, nil, b.TempDir())
	if e != nil {
		defer func() {
			if err := e.Stop(); err != nil {
				b.Error(err)
			}
		}()
	}
	if err != nil {
		b.Fatal(err)
	}
	stop, err := runWebhook(ctx, e)
	if err != nil {
		b.Fatal(err)
	}
	defer func() {
		if err := stop(); err != nil {
			b.Error(err)
		}
	}()
	c, err := unlimited(e.Config, e)
	if err != nil {
		b.Fatal(err)
	}
	mkNamespace := func(labels map[string]string) string {
		ns := &corev1.Namespace{}
		ns.GenerateName, ns.Labels = "bench-", labels
		if err := c.Create(ctx, ns); err != nil {
			b.Fatal(err)
		}
		return ns.Name
	}
	injectedNS := mkNamespace(nil)
	skippedNS := mkNamespace(map[string]string{keepalive.LabelInject: "disabled"})
	if err := c.Create(ctx, testobj.Spec().Preset(v1alpha1.PresetAWSNLB).Policy(injectedNS, "nlb")); err != nil {
		b.Fatal(err)
	}
	if err := waitUntil(ctx, c, injectedNS, injected); err != nil {
		b.Fatal(err)
	}
	tlsCfg, err := envtestTLS(e)
	if err != nil {
		b.Fatal(err)
	}
	holes := map[string]*tls.Config{"blackhole-tcp": nil, "blackhole-tls": tlsCfg}
	modes := []string{"none", "operator", "blackhole-tcp", "blackhole-tls"}

	all := map[string][]time.Duration{}
	perRoundP50 := map[string][]time.Duration{}
	b.ResetTimer()
	for range rounds {
		for _, mode := range modes {
			ns := injectedNS
			var hole *blackHole
			var prev admissionregistrationv1.WebhookClientConfig
			switch mode {
			case "none":
				ns = skippedNS
			case "blackhole-tcp", "blackhole-tls":
				if hole, err = startBlackHole(holes[mode]); err != nil {
					b.Fatal(err)
				}
				if prev, err = pointWebhook(ctx, c, hole.url()); err != nil {
					b.Fatal(err)
				}
				if err := waitUntil(ctx, c, ns, swallowedBy(hole)); err != nil {
					b.Fatal(err)
				}
			}
			took, errs := createPods(ctx, c, ns, perRound, workers)
			if len(errs) > 0 {
				b.Fatalf("%s: %d creates failed, the first: %v", mode, len(errs), errs[0])
			}
			all[mode] = append(all[mode], took...)
			perRoundP50[mode] = append(perRoundP50[mode], distributionOf(took).p50)
			if hole != nil {
				if err := restoreWebhook(ctx, c, prev); err != nil {
					b.Fatal(err)
				}
				if err := waitUntil(ctx, c, injectedNS, injected); err != nil {
					b.Fatal(err)
				}
				hole.close()
			}
		}
	}
	b.StopTimer()

	median := func(ds []time.Duration) time.Duration { return distributionOf(ds).p50 }
	ratio := func(mode, base string) float64 {
		var rs []float64
		for i := range perRoundP50[mode] {
			rs = append(rs, float64(perRoundP50[mode][i])/float64(perRoundP50[base][i]))
		}
		slices.Sort(rs)
		return rs[len(rs)/2]
	}
	var report strings.Builder
	fmt.Fprintf(&report, "%d rounds of %d creates per case, %d at once\n", rounds, perRound, workers)
	for _, mode := range modes {
		d := distributionOf(all[mode])
		fmt.Fprintf(&report, "%-14s %s; median of the rounds' p50 %.0f ms\n", mode, d, float64(median(perRoundP50[mode]))/1e6)
		b.ReportMetric(float64(d.p50)/1e6, mode+"-p50-ms")
		b.ReportMetric(float64(d.p99)/1e6, mode+"-p99-ms")
	}
	for _, mode := range []string{"blackhole-tcp", "blackhole-tls"} {
		d, over := distributionOf(all[mode]), 0
		for _, t := range all[mode] {
			if t > webhookTimeout+createMargin {
				over++
			}
		}
		fmt.Fprintf(&report, "%s: p99 - timeout %.0f ms, max - timeout %.0f ms, %d over the %s margin; p50 / operator p50 = %.0f, p50 / none p50 = %.0f\n",
			mode, float64(d.p99-webhookTimeout)/1e6, float64(d.max-webhookTimeout)/1e6, over, createMargin, ratio(mode, "operator"), ratio(mode, "none"))
	}
	fmt.Fprintf(&report, "operator p50 / none p50 = %.2f\n", ratio("operator", "none"))
	b.Log("\n" + strings.TrimSpace(report.String()))
}

// runWebhook runs the operator's webhook in a manager where the installed
// webhook configuration points, until stop is called.
func runWebhook(ctx context.Context, e *testenv.Env) (stop func() error, err error) {
	mo := e.ManagerOptions()
	mo.Cache = cache.Options{DefaultTransform: cache.TransformStripManagedFields()}
	mgr, err := ctrl.NewManager(e.Config, mo)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	if _, err := Setup(ctx, mgr, Options{OperatorNamespace: operatorNamespace}); err != nil {
		cancel()
		return nil, err
	}
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	if !mgr.GetCache().WaitForCacheSync(ctx) {
		cancel()
		return nil, errors.New("the manager's cache did not sync")
	}
	return func() error { cancel(); return <-done }, nil
}
