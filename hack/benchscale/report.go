package main

import (
	"fmt"
	"maps"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"time"
)

// maxBytesPerPod is the target for memory per cached pod at rest.
const maxBytesPerPod = 2048

// report renders the results as markdown: a table per size, then the
// targets.
func (b *bench) report(baseline *result, results []*result, took time.Duration) string {
	var s strings.Builder
	byRun := map[[2]int]*result{}
	for _, r := range results {
		byRun[[2]int{r.size, r.limit}] = r
	}
	fmt.Fprintf(&s, "# bench-scale\n\n")
	fmt.Fprintf(&s, "```console\ngo run ./hack/benchscale %s\n```\n\n", strings.Join(os.Args[1:], " "))
	fmt.Fprintf(&s, "%s, %s, %s %s/%s, %d cores (%s), operator at %s; the whole run took %s.\n\n",
		time.Now().Format("2006-01-02"), kubeVersion(), runtime.Version(), runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), cpuModel(),
		gitCommit(b.root), took.Round(time.Second))
	fmt.Fprintf(&s, "Each run: %d namespaces, %d pods per Deployment with one ReplicaSet, %d nodes; half the Deployments selected "+
		"by one ClusterKeepalivePolicy (%s) and one KeepalivePolicy per namespace (azure-lb, whose 120/30/9 every selected "+
		"template must end with). Steady state: %d events in %s, counted until %s after the window.\n\n",
		b.namespaces, podsPerDeployment, nodeCount, b.clusterPreset, b.events, b.window, b.tail)
	fmt.Fprintf(&s, "With the namespaces and policies and no pods, the operator's RSS at rest is %.1f MiB (peak %.1f MiB).\n\n",
		mib(baseline.restRSS), mib(baseline.peakRSS))

	for _, size := range b.sizes {
		var runs []*result
		for _, limit := range b.limits {
			runs = append(runs, byRun[[2]int{size, limit}])
		}
		r0 := runs[0]
		fmt.Fprintf(&s, "## %d pods\n\n%d Deployments, %d selected; %d policies.\n\n", size, r0.deployments, r0.selected, r0.policies)
		s.WriteString("| |")
		for _, r := range runs {
			fmt.Fprintf(&s, " %s |", limitName(r.limit))
		}
		s.WriteString("\n|---|")
		for range runs {
			s.WriteString("---|")
		}
		s.WriteString("\n")
		for _, row := range b.rows(baseline, byRun) {
			fmt.Fprintf(&s, "| %s |", row.name)
			for _, r := range runs {
				fmt.Fprintf(&s, " %s |", row.cell(r))
			}
			s.WriteString("\n")
		}
		s.WriteString("\n")
	}

	s.WriteString("## Targets\n\n| target | configuration | measured | target | result |\n|---|---|---|---|---|\n")
	for _, t := range b.targets(baseline, byRun) {
		verdict := "FAIL"
		if t.pass {
			verdict = "PASS"
		}
		fmt.Fprintf(&s, "| %s | %s | %s | %s | %s |\n", t.name, t.config, t.measured, t.limit, verdict)
	}
	return s.String()
}

type row struct {
	name string
	cell func(r *result) string
}

func (b *bench) rows(baseline *result, byRun map[[2]int]*result) []row {
	steady := func(f func(r *result) string) func(r *result) string {
		return func(r *result) string {
			if !r.converged {
				return "not measured"
			}
			return f(r)
		}
	}
	return []row{
		{"convergence (s)", func(r *result) string {
			if !r.converged {
				return fmt.Sprintf("**did not converge** in %s: %s", b.timeout, r.left)
			}
			return fmt.Sprintf("%.2f", r.convergence.Seconds())
		}},
		{"operator CPU (s), convergence / whole run", func(r *result) string { return fmt.Sprintf("%.2f / %.2f", r.cpuConverge, r.cpuTotal) }},
		{"peak RSS (MiB)", func(r *result) string { return fmt.Sprintf("%.1f", mib(r.peakRSS)) }},
		{"RSS at rest, once the operator is quiet (MiB)", func(r *result) string { return fmt.Sprintf("%.1f", mib(r.restRSS)) }},
		{"quiet after convergence (s)", func(r *result) string { return fmt.Sprintf("%.1f", r.quietAfter.Seconds()) }},
		{"bytes per cached pod at rest", func(r *result) string { return fmt.Sprint(bytesPerPod(r, baseline)) }},
		{"bytes at rest per pod added since the next smaller size", func(r *result) string {
			i := slices.Index(b.sizes, r.size)
			if i == 0 {
				return "no smaller size"
			}
			prev := byRun[[2]int{b.sizes[i-1], r.limit}]
			return fmt.Sprintf("%d (from %d pods)", (r.restRSS-prev.restRSS)/int64(r.size-prev.size), prev.size)
		}},
		{"requests from start to the policies", func(r *result) string { return tallyCell(r.startup) }},
		{"requests during convergence", func(r *result) string { return tallyCell(r.conv) }},
		{"writes during convergence", func(r *result) string { return format(r.conv.writes) }},
		{"requests from convergence until quiet", func(r *result) string { return tallyCell(r.settle) }},
		{"template writes per Deployment", func(r *result) string {
			most, twice := writesMax(r)
			return fmt.Sprintf("max %d; %d of %d written more than once", most, twice, len(r.writes))
		}},
		{"rollouts reported done", func(r *result) string { return fmt.Sprint(r.rollouts) }},
		{"label changes: requests", steady(func(r *result) string { return tallyCell(r.noise.reqs) })},
		{"label changes: operator CPU", steady(func(r *result) string { return cpuCell(r.noise) })},
		{"pod creations: requests", steady(func(r *result) string { return tallyCell(r.create.reqs) })},
		{"pod creations: writes", steady(func(r *result) string { return format(r.create.reqs.writes) })},
		{"pod creations: status writes per policy", steady(func(r *result) string { return format(r.statusTotal) })},
		{"pod creations: most status writes of a policy in one second", steady(func(r *result) string {
			most, who := busiest(r)
			if most == 0 {
				return "0"
			}
			return fmt.Sprintf("%d (%s)", most, who)
		})},
		{"pod creations: operator CPU", steady(func(r *result) string { return cpuCell(r.create) })},
		{"statuses count the new pods", steady(func(r *result) string {
			if !r.reflectedOK {
				return "not within 30 s"
			}
			return fmt.Sprintf("%.1f s after the last creation", r.reflected.Seconds())
		})},
		{"setup by the program (s)", func(r *result) string { return fmt.Sprintf("%.1f", r.setup.Seconds()) }},
	}
}

func tallyCell(t tally) string {
	if t.total == 0 {
		return "0"
	}
	failed := ""
	if t.failed > 0 {
		failed = fmt.Sprintf(" (%d failed)", t.failed)
	}
	return fmt.Sprintf("%d: %s%s", t.total, format(t.verbs), failed)
}

func cpuCell(w window) string {
	return fmt.Sprintf("%.2f s, %.2f ms per event", w.cpu, 1000*w.cpuPerEvent())
}

func bytesPerPod(r, baseline *result) int64 {
	return (r.restRSS - baseline.restRSS) / int64(r.size)
}

func writesMax(r *result) (most, twice int) {
	for _, n := range r.writes {
		most = max(most, n)
		if n > 1 {
			twice++
		}
	}
	return most, twice
}

func busiest(r *result) (most int, who string) {
	for _, k := range slices.Sorted(maps.Keys(r.statusBusiest)) {
		if n := r.statusBusiest[k]; n > most {
			most, who = n, k
		}
	}
	return most, who
}

type target struct {
	name, config, measured, limit string
	pass                          bool
}

func (b *bench) targets(baseline *result, byRun map[[2]int]*result) []target {
	var out []target
	sizes := b.sizes
	if len(sizes) >= 2 {
		lo, hi := sizes[len(sizes)-2], sizes[len(sizes)-1]
		limit := 1.1 * float64(hi) / float64(lo) // 2.2 for twice the pods
		for _, m := range []struct {
			name string
			f    func(r *result) float64
		}{
			{"convergence time", func(r *result) float64 { return r.convergence.Seconds() }},
			{"requests during convergence", func(r *result) float64 { return float64(r.conv.total) }},
			{"peak RSS", func(r *result) float64 { return float64(r.peakRSS) }},
		} {
			for _, l := range b.limits {
				rl, rh := byRun[[2]int{lo, l}], byRun[[2]int{hi, l}]
				t := target{name: fmt.Sprintf("%s %d / %d", m.name, hi, lo), config: limitName(l), limit: fmt.Sprintf("<= %.2f", limit)}
				if !rl.converged || !rh.converged {
					t.measured = "did not converge"
				} else {
					ratio := m.f(rh) / m.f(rl)
					t.measured, t.pass = fmt.Sprintf("%.2f", ratio), ratio <= limit
				}
				out = append(out, t)
			}
		}
		lo = sizes[0]
		for _, m := range []struct {
			name string
			w    func(r *result) window
		}{
			{"CPU per label change", func(r *result) window { return r.noise }},
			{"CPU per pod creation", func(r *result) window { return r.create }},
		} {
			for _, l := range b.limits {
				rl, rh := byRun[[2]int{lo, l}], byRun[[2]int{hi, l}]
				t := target{name: fmt.Sprintf("%s %d / %d", m.name, hi, lo), config: limitName(l), limit: "<= 1.50"}
				if !rl.converged || !rh.converged {
					t.measured = "did not converge"
				} else {
					ratio := m.w(rh).cpuPerEvent() / m.w(rl).cpuPerEvent()
					t.measured, t.pass = fmt.Sprintf("%.2f", ratio), ratio <= 1.5
				}
				out = append(out, t)
			}
		}
	}
	for _, size := range sizes {
		for _, l := range b.limits {
			r := byRun[[2]int{size, l}]
			config := fmt.Sprintf("%d pods, %s", size, limitName(l))
			bpp := bytesPerPod(r, baseline)
			out = append(out, target{"bytes per cached pod at rest", config, fmt.Sprint(bpp), fmt.Sprintf("<= %d", maxBytesPerPod), bpp <= maxBytesPerPod})
			most, _ := writesMax(r)
			out = append(out, target{"template writes per Deployment", config, fmt.Sprint(most), "<= 1", most <= 1})
			if !r.converged {
				out = append(out, target{"convergence", config, "did not converge", b.timeout.String(), false})
				continue
			}
			out = append(out, target{"requests for label changes no selector reads", config, fmt.Sprint(r.noise.reqs.total), "0", r.noise.reqs.total == 0})
			st, _ := busiest(r)
			out = append(out, target{"status writes of a policy in one second of pod creations", config, fmt.Sprint(st), "<= 1", st <= 1})
		}
	}
	return out
}

func kubeVersion() string {
	out, err := exec.Command(os.Getenv("KUBEBUILDER_ASSETS")+"/kube-apiserver", "--version").Output()
	if err != nil {
		return "kube-apiserver of unknown version"
	}
	return strings.TrimSpace(string(out))
}

func cpuModel() string {
	raw, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "unknown CPU"
	}
	for line := range strings.SplitSeq(string(raw), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown CPU"
}

func gitCommit(root string) string {
	cmd := exec.Command("git", "describe", "--always", "--dirty")
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		return "an unknown commit"
	}
	return strings.TrimSpace(string(out))
}
