package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/keepalive-operator/keepalive-operator/internal/testenv"
)

// config is one way of admitting the benchmark's pods.
type config struct {
	name, title string
	namespace   string
	// want is what every created pod must carry: wantSysctls, or none.
	want []corev1.Sysctl
	// webhook is the webhook the API server calls, by its name in the API
	// server's metrics; plugin the admission plugin that does the work
	// otherwise (MutatingAdmissionPolicy).
	webhook, plugin string
	// operator: the operator's webhook injects this namespace's pods.
	operator bool
	// before and after a measurement, when the configuration needs the
	// cluster changed (the large configuration's policies).
	before, after func(ctx context.Context) error
}

// slot is what one configuration measured in one round.
type slot struct {
	latencies []time.Duration // sorted
	wall      time.Duration
	errors    int
	// webhookCalls and webhookSeconds are the API server's count and sum
	// of its admission duration for the configuration's webhook or plugin.
	webhookCalls   float64
	webhookSeconds float64
	// cpu is each process's CPU seconds over the slot, by plane.procs.
	cpu []float64
}

func (s slot) quantile(q float64) time.Duration {
	if len(s.latencies) == 0 {
		return 0
	}
	i := int(q*float64(len(s.latencies))+0.5) - 1
	return s.latencies[min(max(i, 0), len(s.latencies)-1)]
}

// benchPod is a minimal pod; a pod without a node is deleted at once.
func benchPod() *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "bench-", Labels: map[string]string{"app": "bench"}},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "registry.k8s.io/pause:3.10"}}},
	}
}

// run creates the configuration's pods, b.clients at a time, checks that
// each carries exactly what it should, and reads the API server's metrics
// and every process's CPU around it. The CPU is read once the operator is
// idle again, so that its reconciliation of the new pods is counted.
func (b *bench) run(ctx context.Context, p *plane, c *config, operatorPID int) (slot, error) {
	var s slot
	before, err := p.admissionMetrics(ctx)
	if err != nil {
		return s, err
	}
	cpu0, err := p.cpu()
	if err != nil {
		return s, err
	}
	start := time.Now()
	lat, failed, errs, wrong := b.create(ctx, p, c, b.pods, 0)
	s.wall = time.Since(start)
	if err := ctx.Err(); err != nil {
		return s, err
	}
	s.errors = failed
	if err := c.check(len(lat), failed, errs, wrong); err != nil {
		return s, err
	}
	if operatorPID != 0 {
		if err := testenv.WaitIdle(ctx, operatorPID, time.Minute); err != nil {
			return s, fmt.Errorf("the operator after %s: %w", c.title, err)
		}
	}
	cpu1, err := p.cpu()
	if err != nil {
		return s, err
	}
	after, err := p.admissionMetrics(ctx)
	if err != nil {
		return s, err
	}
	for i := range cpu1 {
		s.cpu = append(s.cpu, cpu1[i]-cpu0[i])
	}
	key := c.webhook
	if key == "" {
		key = c.plugin
	}
	if key != "" {
		s.webhookCalls = after[key].count - before[key].count
		s.webhookSeconds = after[key].sum - before[key].sum
	}
	slices.Sort(lat)
	s.latencies = lat
	return s, nil
}

// create creates n of the configuration's pods, b.clients at a time, or as
// many as it can for d when d is not zero. It returns each creation's
// latency, how many failed and a few of their errors, and every pod that
// does not carry exactly what the configuration adds.
func (b *bench) create(ctx context.Context, p *plane, c *config, n int, d time.Duration) (lat []time.Duration, failed int, errs, wrong []string) {
	var (
		next  atomic.Int64
		nfail atomic.Int64
		mu    sync.Mutex
		wg    sync.WaitGroup
	)
	deadline := time.Now().Add(d)
	more := func() bool {
		if d > 0 {
			return time.Now().Before(deadline)
		}
		return int(next.Add(1)) <= n
	}
	for range b.clients {
		wg.Go(func() {
			var mine []time.Duration
			defer func() {
				mu.Lock()
				lat = append(lat, mine...)
				mu.Unlock()
			}()
			for more() && ctx.Err() == nil {
				t0 := time.Now()
				pod, err := p.cs.CoreV1().Pods(c.namespace).Create(ctx, benchPod(), metav1.CreateOptions{})
				mine = append(mine, time.Since(t0))
				if err != nil {
					nfail.Add(1)
					mu.Lock()
					if len(errs) < 3 {
						errs = append(errs, err.Error())
					}
					mu.Unlock()
					continue
				}
				if got := sysctlsOf(pod); !sameSysctls(got, c.want) {
					mu.Lock()
					wrong = append(wrong, fmt.Sprintf("pod %s has %v, want %v", pod.Name, got, c.want))
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	return lat, int(nfail.Load()), errs, wrong
}

// check fails a configuration that let a pod through without what it adds,
// or whose creations failed beyond 1 %.
func (c *config) check(created, failed int, errs, wrong []string) error {
	if len(wrong) > 0 {
		return fmt.Errorf("%s: %d of %d pods do not carry what the configuration adds, e.g. %s", c.title, len(wrong), created, wrong[0])
	}
	if failed > created/100 {
		return fmt.Errorf("%s: %d of %d creations failed, e.g. %s", c.title, failed, created, strings.Join(errs, "; "))
	}
	return nil
}

// clear deletes the configuration's pods and waits until they are gone.
func (p *plane) clear(ctx context.Context, c *config) error {
	pods := p.cs.CoreV1().Pods(c.namespace)
	if err := pods.DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil {
		return fmt.Errorf("delete the pods of %s: %w", c.namespace, err)
	}
	return testenv.WaitFor(ctx, time.Minute, func() (bool, error) {
		list, err := pods.List(ctx, metav1.ListOptions{Limit: 1})
		return err == nil && len(list.Items) == 0, err
	})
}

// probe creates a pod as a dry run until it carries what c adds: the API
// server applies webhook configurations and admission policies a moment
// after they are written.
func (p *plane) probe(ctx context.Context, c *config) error {
	var last []corev1.Sysctl
	err := testenv.WaitFor(ctx, 2*time.Minute, func() (bool, error) {
		pod, err := p.cs.CoreV1().Pods(c.namespace).Create(ctx, benchPod(), metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		if err != nil {
			return false, nil
		}
		last = sysctlsOf(pod)
		return sameSysctls(last, c.want), nil
	})
	if err != nil {
		return fmt.Errorf("%s: a pod of %s still has %v, want %v: %w", c.title, c.namespace, last, c.want, err)
	}
	return nil
}

func sysctlsOf(pod *corev1.Pod) []corev1.Sysctl {
	if pod.Spec.SecurityContext == nil {
		return nil
	}
	return pod.Spec.SecurityContext.Sysctls
}

// sameSysctls reports whether got holds exactly want, in any order, each
// once.
func sameSysctls(got, want []corev1.Sysctl) bool {
	if len(got) != len(want) {
		return false
	}
	for _, w := range want {
		n := 0
		for _, g := range got {
			if g == w {
				n++
			}
		}
		if n != 1 {
			return false
		}
	}
	return true
}

func (p *plane) cpu() ([]float64, error) {
	out := make([]float64, len(p.procs))
	for i, pr := range p.procs {
		if err := pr.alive(); err != nil {
			return nil, err
		}
		var err error
		if out[i], err = testenv.CPUSeconds(pr.pid); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// histogram is a count and a sum of a duration histogram.
type histogram struct{ count, sum float64 }

// Admission metrics of the API server: the webhook's by its name, the
// admission plugins' by theirs.
const (
	webhookMetric = "apiserver_admission_webhook_admission_duration_seconds"
	pluginMetric  = "apiserver_admission_controller_admission_duration_seconds"
)

// admissionMetrics reads the API server's admission durations of pod
// creations, by webhook name and by admission plugin name.
func (p *plane) admissionMetrics(ctx context.Context) (map[string]histogram, error) {
	raw, err := p.cs.CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(ctx)
	if err != nil {
		return nil, fmt.Errorf("read the API server's metrics: %w", err)
	}
	return parseAdmissionMetrics(raw)
}

func parseAdmissionMetrics(raw []byte) (map[string]histogram, error) {
	families, err := parseMetrics(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("read the API server's metrics: %w", err)
	}
	out := map[string]histogram{}
	for _, family := range []string{webhookMetric, pluginMetric} {
		for _, m := range families[family].GetMetric() {
			if label(m, "operation") != "CREATE" || label(m, "type") != "admit" {
				continue
			}
			name := label(m, "name")
			if name == "" {
				return nil, fmt.Errorf("metrics: a series of %s without a name: %v", family, m.GetLabel())
			}
			h := out[name]
			h.sum += m.GetHistogram().GetSampleSum()
			h.count += float64(m.GetHistogram().GetSampleCount())
			out[name] = h
		}
	}
	if len(out) == 0 {
		return nil, errors.New("metrics: the API server reports no admission durations")
	}
	return out, nil
}

// parseMetrics reads metrics in Prometheus' text format, by family name.
func parseMetrics(r io.Reader) (map[string]*dto.MetricFamily, error) {
	parser := expfmt.NewTextParser(model.UTF8Validation)
	return parser.TextToMetricFamilies(r)
}

// label returns the value of a series' label, "" when it has none.
func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}
