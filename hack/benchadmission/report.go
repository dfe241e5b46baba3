package main

import (
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/keepalive-operator/keepalive-operator/internal/testenv"
)

// Targets, as ratios within one run (issue 14, BENCHMARKS.md).
const (
	targetVsNoop    = 1.15 // operator's added p50 over the no-op webhook's
	targetVsKyverno = 0.25 // operator's added p50 and p99 over Kyverno's
	targetScale     = 1.1  // added p50 at 1,000 policies over one policy
	targetHandler   = 1.2  // handler ns/op at 1,000 policies over one
	targetRSSMiB    = 80   // operator RSS at 1,000 policies and the namespaces
)

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func mib(b int64) float64 { return float64(b) / (1 << 20) }

// over returns, for each round, f of the configuration's slot.
func (r *results) over(name string, f func(slot) float64) []float64 {
	var out []float64
	for _, s := range r.slots[name] {
		out = append(out, f(s))
	}
	return out
}

// added is the median over the rounds of what a configuration adds to the
// no-admission configuration's quantile q in the same round.
func (r *results) added(name string, q float64) float64 {
	none := r.slots[configNone]
	var out []float64
	for i, s := range r.slots[name] {
		out = append(out, ms(s.quantile(q))-ms(none[i].quantile(q)))
	}
	return median(out)
}

func (r *results) has(name string) bool { return len(r.slots[name]) > 0 }

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "MISSED"
}

func (b *bench) report(r *results, h *handlerBench) string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "# make bench-admission: %d rounds of %d pods per configuration, %d clients, %d namespaces, %s, %s/%s, %d CPUs, %s\n\n",
		b.rounds, b.pods, b.clients, b.namespaces, runtime.Version(), runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), r.took.Round(time.Second))
	fmt.Fprintf(&sb, "Pod creation as the clients see it, medians over the rounds (ms):\n\n")
	fmt.Fprintf(&sb, "| configuration | p50 | p90 | p99 | added p50 | added p99 | pods/s | errors | API server's admission, mean ms (calls per pod) |\n|---|---|---|---|---|---|---|---|---|\n")
	for _, c := range r.configs {
		q := func(q float64) float64 {
			return median(r.over(c.name, func(s slot) float64 { return ms(s.quantile(q)) }))
		}
		tput := median(r.over(c.name, func(s slot) float64 { return float64(len(s.latencies)) / s.wall.Seconds() }))
		errs := 0
		for _, s := range r.slots[c.name] {
			errs += s.errors
		}
		adm := "–"
		if c.webhook != "" || c.plugin != "" {
			mean := median(r.over(c.name, func(s slot) float64 { return 1000 * s.webhookSeconds / max(s.webhookCalls, 1) }))
			calls := median(r.over(c.name, func(s slot) float64 { return s.webhookCalls / float64(len(s.latencies)) }))
			adm = fmt.Sprintf("%.2f (%.2f)", mean, calls)
		}
		added50, added99 := "–", "–"
		if c.name != configNone {
			added50, added99 = fmt.Sprintf("%.1f", r.added(c.name, 0.5)), fmt.Sprintf("%.1f", r.added(c.name, 0.99))
		}
		fmt.Fprintf(&sb, "| %s | %.1f | %.1f | %.1f | %s | %s | %.0f | %d | %s |\n", c.title, q(0.5), q(0.9), q(0.99), added50, added99, tput, errs, adm)
	}

	fmt.Fprintf(&sb, "\nCPU per created pod (ms, medians over the rounds), each process's peak RSS, and its RSS at the end of the run, of which mapped files (RssFile of /proc/<pid>/status) and the rest, anonymous:\n\n| configuration |")
	for _, name := range r.procs {
		fmt.Fprintf(&sb, " %s |", name)
	}
	fmt.Fprintf(&sb, "\n|---|%s\n", strings.Repeat("---|", len(r.procs)))
	for _, c := range r.configs {
		fmt.Fprintf(&sb, "| %s |", c.title)
		for i := range r.procs {
			fmt.Fprintf(&sb, " %.2f |", median(r.over(c.name, func(s slot) float64 { return 1000 * s.cpu[i] / float64(len(s.latencies)) })))
		}
		sb.WriteString("\n")
	}
	fmt.Fprintf(&sb, "| peak RSS (MiB) |")
	for i := range r.procs {
		fmt.Fprintf(&sb, " %.0f |", mib(r.peak[i]))
	}
	fmt.Fprintf(&sb, "\n| RSS at the end (MiB: mapped files + anonymous) |")
	for i := range r.procs {
		fmt.Fprintf(&sb, " %.0f (%.0f + %.0f) |", mib(r.rss[i]), mib(r.mapped[i]), mib(r.rss[i]-r.mapped[i]))
	}
	sb.WriteString("\n")

	fmt.Fprintf(&sb, "\nTargets, ratios within this run:\n\n| target | measured | limit | |\n|---|---|---|---|\n")
	opAdded := r.added(configOperator, 0.5)
	ratio := opAdded / r.added(configNoop, 0.5)
	fmt.Fprintf(&sb, "| operator's added p50 / no-op webhook's | %.2f | %.2f | %s |\n", ratio, targetVsNoop, verdict(ratio <= targetVsNoop))
	// The same bound against the webhook that adds the same values with a
	// constant patch: what the API server does with any patch is in both.
	ratio = opAdded / r.added(configPatch, 0.5)
	fmt.Fprintf(&sb, "| operator's added p50 / constant-patch webhook's | %.2f | %.2f | %s |\n", ratio, targetVsNoop, verdict(ratio <= targetVsNoop))
	if r.has(configKyverno) {
		r50 := opAdded / r.added(configKyverno, 0.5)
		r99 := r.added(configOperator, 0.99) / r.added(configKyverno, 0.99)
		fmt.Fprintf(&sb, "| operator's added p50 / Kyverno's | %.2f | %.2f | %s |\n", r50, targetVsKyverno, verdict(r50 <= targetVsKyverno))
		fmt.Fprintf(&sb, "| operator's added p99 / Kyverno's | %.2f | %.2f | %s |\n", r99, targetVsKyverno, verdict(r99 <= targetVsKyverno))
	} else {
		fmt.Fprintf(&sb, "| operator against Kyverno | not run | | (-kyverno, BENCH_KYVERNO=1) |\n")
	}
	scale := r.added(configScale, 0.5) / opAdded
	fmt.Fprintf(&sb, "| added p50, %d policies / 1 policy | %.2f | %.2f | %s |\n", r.policies, scale, targetScale, verdict(scale <= targetScale))
	if h != nil {
		hr := h.thousand / h.one
		fmt.Fprintf(&sb, "| handler ns/op, 1,000 policies and 10,000 namespaces / 1 (%.0f / %.0f ns) | %.2f | %.2f | %s |\n", h.thousand, h.one, hr, targetHandler, verdict(hr <= targetHandler))
	}
	rss := mib(r.scaleRSS)
	fmt.Fprintf(&sb, "| operator RSS with %d policies and %d namespaces | %.1f MiB (%.1f mapped files + %.1f anonymous) | %d MiB | %s |\n",
		r.policies, b.namespaces, rss, mib(r.scaleMapped), mib(r.scaleRSS-r.scaleMapped), targetRSSMiB, verdict(rss <= targetRSSMiB))
	return sb.String()
}

// handlerBench is the handler's benchmark at one and at 1,000 policies:
// mean ns/op over its runs.
type handlerBench struct{ one, thousand float64 }

var benchLine = regexp.MustCompile(`^BenchmarkAdmissionPolicies/(\w+)-\d+\s+\d+\s+([0-9.]+) ns/op`)

func runHandlerBench(ctx context.Context) (*handlerBench, error) {
	cmd := exec.CommandContext(ctx, "go", "test", "./internal/webhook/", "-run", "^$", "-bench", "^BenchmarkAdmissionPolicies$", "-benchmem", "-count", "5")
	cmd.Dir = testenv.Root()
	out, err := cmd.CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("the handler's benchmark: %w\n%s", err, out)
	}
	sums, counts := map[string]float64{}, map[string]int{}
	for line := range strings.SplitSeq(string(out), "\n") {
		m := benchLine.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		v, _ := strconv.ParseFloat(m[2], 64)
		sums[m[1]] += v
		counts[m[1]]++
	}
	if counts["one"] == 0 || counts["thousand"] == 0 {
		return nil, fmt.Errorf("the handler's benchmark printed no one and thousand results:\n%s", out)
	}
	return &handlerBench{one: sums["one"] / float64(counts["one"]), thousand: sums["thousand"] / float64(counts["thousand"])}, nil
}
