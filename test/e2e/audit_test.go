//go:build e2e

package e2e

import (
	"fmt"
	"net"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/keepalive-operator/keepalive-operator/api/v1alpha1"
	"github.com/keepalive-operator/keepalive-operator/internal/controller"
	"github.com/keepalive-operator/keepalive-operator/internal/testobj"
)

var _ = Describe("the connection audit on a real node", Ordered, func() {
	const ns = "e2e-audit"
	// A 20 s hop: the policy's keepalive time is 10 s, so the client that
	// sets a per-socket idle time of 45 s waits longer than the hop allows.
	const hopSeconds, timeSeconds = 20, 10
	clientLabels := map[string]string{"role": "client"}
	policyRef := "KeepalivePolicy/" + ns + "/short-hop"
	policy := testobj.Spec().Custom("short-hop", hopSeconds).PodLabels(clientLabels).Policy(ns, "short-hop")

	// The three clients, each holding one idle connection to the server.
	clients := []struct{ name, keepalive string }{
		{"on", "sysctls"}, // SO_KEEPALIVE on, the pod's sysctls' 10 s: armed
		{"off", "off"},    // no SO_KEEPALIVE: notArmed
		// TCP_KEEPIDLE 45 s over the sysctls: armedLate. Its timer stays
		// further off than 10 s for 35 s after the connection, so that
		// the first two passes that see the pod running both catch it.
		{"override", "idle=45s"},
	}
	// connectionsUp is when the last client's connection was up, by the
	// timestamp of its log line; pods are the clients.
	var connectionsUp time.Time
	pods := map[string]*corev1.Pod{}

	It("keeps the agent's pods out of the operator's PodDisruptionBudget", func() {
		agents, err := chartPods(agentPodLabels)
		Expect(err).NotTo(HaveOccurred())
		Expect(agents).To(HaveLen(1), "one agent on the one node")
		operators, err := chartPods(operatorPodLabels)
		Expect(err).NotTo(HaveOccurred())
		Expect(operators).NotTo(ContainElement(agents[0]), "the agent's pod carries the operator's labels")
		// The budget guards the operator's replicas: were the agents counted,
		// it would let a drain evict every replica while an agent runs.
		Eventually(func(g Gomega) {
			pdb := &policyv1.PodDisruptionBudget{}
			g.Expect(k8s.Get(ctx, client.ObjectKey{Namespace: operatorNamespace, Name: release}, pdb)).To(Succeed())
			g.Expect(pdb.Status.ObservedGeneration).To(Equal(pdb.Generation))
			g.Expect(pdb.Status.ExpectedPods).To(BeEquivalentTo(2))
			g.Expect(pdb.Status.CurrentHealthy).To(BeEquivalentTo(2))
			g.Expect(pdb.Status.DisruptionsAllowed).To(BeEquivalentTo(1))
		}).Should(Succeed())
	})

	It("reports a client with keepalive from the sysctls as armed, one without as notArmed, one with a longer per-socket idle as armedLate, and the policy names the two that lack it", func() {
		createNamespace(ns, nil)
		Expect(k8s.Create(ctx, policy)).To(Succeed())
		waitForInjection(ns, clientLabels)
		Eventually(func(g Gomega) {
			g.Expect(k8s.Get(ctx, client.ObjectKeyFromObject(policy), policy)).To(Succeed())
			g.Expect(policy.Status.Keepalive).NotTo(BeNil())
			g.Expect(policy.Status.Keepalive.TimeSeconds).To(BeEquivalentTo(timeSeconds))
		}).Should(Succeed())

		By("a server outside the policy, and three clients under it holding one idle connection each to its pod IP")
		server := tcpappPod(ns, "server", map[string]string{"role": "server"}, "server")
		server.Spec.Containers[0].ReadinessProbe = &corev1.Probe{
			ProbeHandler:  corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(8080)}},
			PeriodSeconds: 1,
		}
		Expect(k8s.Create(ctx, server)).To(Succeed())
		Expect(server.Spec.SecurityContext.Sysctls).To(BeEmpty())
		Eventually(func(g Gomega) {
			g.Expect(k8s.Get(ctx, client.ObjectKeyFromObject(server), server)).To(Succeed())
			g.Expect(server.Status.PodIP).NotTo(BeEmpty())
			g.Expect(podReady(server)).To(BeTrue())
		}).Should(Succeed())
		target := net.JoinHostPort(server.Status.PodIP, "8080")

		for _, c := range clients {
			pod := tcpappPod(ns, c.name, clientLabels, "hold", "-connect", target, "-keepalive", c.keepalive)
			Expect(k8s.Create(ctx, pod)).To(Succeed())
			Expect(podValues(pod)).To(HavePrefix(fmt.Sprintf("%d/", timeSeconds)), "pod %s", c.name)
			pods[c.name] = pod
		}
		connectionsUp = time.Time{}
		for _, c := range clients {
			var up time.Time
			Eventually(func() (err error) { up, err = holding(pods[c.name]); return err }).Should(Succeed(), "pod %s", c.name)
			if up.After(connectionsUp) {
				connectionsUp = up
			}
		}

		By("the node's report: the three clients with one connection each, the server absent")
		want := map[string]v1alpha1.ConnectionCounts{"on": {Armed: 1}, "off": {NotArmed: 1}, "override": {ArmedLate: 1}}
		report := &v1alpha1.KeepaliveNodeReport{}
		Eventually(func(g Gomega) {
			g.Expect(k8s.Get(ctx, client.ObjectKey{Name: nodeName}, report)).To(Succeed())
			g.Expect(reportedPods(report, ns)).To(Equal(wantPods(ns, policyRef, timeSeconds, want)))
		}).Should(Succeed())
		reportSeen := time.Since(connectionsUp)
		written := report.Status.AuditTime.Sub(connectionsUp)
		Expect(report.Status.IntervalSeconds).To(BeEquivalentTo(auditInterval / time.Second))
		Expect(reportSeen).To(BeNumerically("<=", 2*auditInterval), "the report came %s after the connections", reportSeen)
		AddReportEntry("audit: last connection up until the report lists the three clients", reportSeen.Round(100*time.Millisecond).String())
		AddReportEntry("audit: last connection up until the agent wrote that report (its auditTime, 1 s resolution)", written.Round(time.Second).String())

		By("the policy's status.connections and its KeepaliveNotEnabled condition")
		Eventually(func(g Gomega) {
			g.Expect(k8s.Get(ctx, client.ObjectKeyFromObject(policy), policy)).To(Succeed())
			g.Expect(policy.Status.Connections).To(Equal(&v1alpha1.ConnectionAudit{
				ConnectionCounts: v1alpha1.ConnectionCounts{Armed: 1, ArmedLate: 1, NotArmed: 1, Unknown: 0},
				PodsReported:     3, PodsUnaudited: 0,
			}))
			c := meta.FindStatusCondition(policy.Status.Conditions, controller.ConditionKeepaliveNotEnabled)
			g.Expect(c).NotTo(BeNil())
			g.Expect(c.Status).To(Equal(metav1.ConditionTrue))
			g.Expect(c.Reason).To(Equal(controller.ReasonConnectionsLack))
			g.Expect(c.Message).To(ContainSubstring(ns + "/off (1 not armed, 0 armed late)"))
			g.Expect(c.Message).To(ContainSubstring(ns + "/override (0 not armed, 1 armed late)"))
			g.Expect(c.Message).NotTo(ContainSubstring(ns+"/on"), "the armed client is named")
		}).Should(Succeed())
		statusSeen := time.Since(connectionsUp)
		Expect(statusSeen).To(BeNumerically("<=", 2*auditInterval), "the status came %s after the connections", statusSeen)
		AddReportEntry("audit: last connection up until the policy's status and condition say so", statusSeen.Round(100*time.Millisecond).String())
		showKubectl("kubectl get kanr", "get", "kanr")
		showKubectl("kubectl describe kap -n "+ns+" short-hop", "describe", "kap", "-n", ns, "short-hop")

	})

	It("keeps the agent within the chart's CPU and memory requests while it audits the three clients", func() {
		agents, err := chartPods(agentPodLabels)
		Expect(err).NotTo(HaveOccurred())
		Expect(agents).To(HaveLen(1))
		agent := agents[0]
		ds := &appsv1.DaemonSet{}
		Expect(k8s.Get(ctx, client.ObjectKey{Namespace: operatorNamespace, Name: auditAgent}, ds)).To(Succeed())
		requests := ds.Spec.Template.Spec.Containers[0].Resources.Requests
		cpuRequest, memoryRequest := requests.Cpu().MilliValue(), requests.Memory().Value()
		Expect(cpuRequest).NotTo(BeZero())
		Expect(memoryRequest).NotTo(BeZero())

		// The kubelet's usageNanoCores is the rate between its last two
		// samples (every 10 to 15 s), and it repeats it until the next: the
		// spec keeps each sample once, and leaves the first out of the mean,
		// since its window began before the measurement (on an agent that
		// has just started, its start). Five samples: four windows, over
		// two audit intervals, all with the three clients holding.
		var samples []podUsage
		Eventually(func(g Gomega) {
			usage, err := podUsages()
			g.Expect(err).NotTo(HaveOccurred())
			u, ok := usage[agent]
			g.Expect(ok).To(BeTrue(), "no figures of %s from the kubelet", agent)
			if u.NanoCores != nil && u.WorkingSetBytes != 0 &&
				(len(samples) == 0 || u.CPUTime.After(samples[len(samples)-1].CPUTime)) {
				samples = append(samples, u)
			}
			g.Expect(samples).To(HaveLen(5))
		}).WithTimeout(3 * time.Minute).WithPolling(time.Second).Should(Succeed())
		report := &v1alpha1.KeepaliveNodeReport{}
		Expect(k8s.Get(ctx, client.ObjectKey{Name: nodeName}, report)).To(Succeed())
		Expect(reportedPods(report, ns)).To(HaveLen(3), "the clients did not hold through the measurement")
		audited := report.Status.PodCount
		var maxMemory, sumCores uint64
		var memory, cores []string
		for i, s := range samples {
			maxMemory = max(maxMemory, s.WorkingSetBytes)
			if i > 0 {
				sumCores += *s.NanoCores
			}
			memory = append(memory, fmt.Sprintf("%.1f", float64(s.WorkingSetBytes)/(1<<20)))
			cores = append(cores, fmt.Sprintf("%.2f", float64(*s.NanoCores)/1e6))
		}
		meanMillicores := float64(sumCores) / float64(len(samples)-1) / 1e6
		first, last := samples[0], samples[len(samples)-1]
		window := last.CPUTime.Sub(first.CPUTime)
		Expect(window).To(BeNumerically(">=", 2*auditInterval), "the kubelet's figures span %s", window)
		// The CPU time the agent used over the window, as a rate.
		windowMillicores := float64(last.CoreNanoSeconds-first.CoreNanoSeconds) / window.Seconds() / 1e6
		AddReportEntry("audit agent working set (MiB, each sample)", strings.Join(memory, " "))
		AddReportEntry("audit agent usageNanoCores (millicores, each sample; the first left out)", strings.Join(cores, " "))
		AddReportEntry("audit agent CPU", fmt.Sprintf("%.2f millicores mean of the samples, %.2f from the CPU time over %s",
			meanMillicores, windowMillicores, window.Round(time.Second)))
		// Everything the agent used, spread over its passes and the pods it
		// audits: an upper bound of what one pod costs one pass.
		AddReportEntry("audit agent CPU time per pass and audited pod", fmt.Sprintf("%.1f ms (%d pods audited, one pass every %s)",
			windowMillicores*auditInterval.Seconds()/float64(audited), audited, auditInterval))
		Expect(maxMemory).To(BeNumerically("<=", memoryRequest), "working set above the request of %d bytes", memoryRequest)
		Expect(meanMillicores).To(BeNumerically("<=", cpuRequest), "CPU above the request of %dm", cpuRequest)
		Expect(windowMillicores).To(BeNumerically("<=", cpuRequest), "CPU time above the request of %dm", cpuRequest)
	})

	It("turns KeepaliveNotEnabled False once the clients without keepalive are gone", func() {
		By("deleting the clients that lack keepalive: the condition turns False")
		start := time.Now()
		for _, name := range []string{"off", "override"} {
			Expect(k8s.Delete(ctx, pods[name])).To(Succeed())
		}
		Eventually(func(g Gomega) {
			g.Expect(k8s.Get(ctx, client.ObjectKeyFromObject(policy), policy)).To(Succeed())
			g.Expect(policy.Status.Connections).To(Equal(&v1alpha1.ConnectionAudit{
				ConnectionCounts: v1alpha1.ConnectionCounts{Armed: 1}, PodsReported: 1,
			}))
			c := meta.FindStatusCondition(policy.Status.Conditions, controller.ConditionKeepaliveNotEnabled)
			g.Expect(c).NotTo(BeNil())
			g.Expect(c.Status).To(Equal(metav1.ConditionFalse))
			g.Expect(c.Reason).To(Equal(controller.ReasonKeepaliveEnabled))
		}).Should(Succeed())
		AddReportEntry("audit: two clients deleted until KeepaliveNotEnabled is False", time.Since(start).Round(100*time.Millisecond).String())
		report := &v1alpha1.KeepaliveNodeReport{}
		Expect(k8s.Get(ctx, client.ObjectKey{Name: nodeName}, report)).To(Succeed())
		Expect(reportedPods(report, ns)).To(Equal(wantPods(ns, policyRef, timeSeconds, map[string]v1alpha1.ConnectionCounts{"on": {Armed: 1}})))
		Expect(logs(pods["on"])).NotTo(ContainSubstring("connection broke"))
	})

	AfterAll(func() {
		for _, name := range []string{"on", "off", "override", "server"} {
			_ = k8s.Delete(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}})
		}
	})
})

// holding returns when a hold client's connection was up: the timestamp of
// its log line saying so.
func holding(pod *corev1.Pod) (time.Time, error) {
	out, err := kubectl("logs", "--timestamps", "-n", pod.Namespace, pod.Name)
	if err != nil {
		return time.Time{}, fmt.Errorf("%w: %s", err, out)
	}
	for _, line := range strings.Split(out, "\n") {
		stamp, text, _ := strings.Cut(line, " ")
		if strings.HasPrefix(text, "holding ") {
			return time.Parse(time.RFC3339Nano, stamp)
		}
	}
	return time.Time{}, fmt.Errorf("pod %s holds no connection yet: %q", pod.Name, out)
}

// reportedPods are a report's entries of the pods of one namespace, by name.
func reportedPods(r *v1alpha1.KeepaliveNodeReport, ns string) map[string]v1alpha1.PodConnections {
	out := map[string]v1alpha1.PodConnections{}
	for _, p := range r.Status.Pods {
		if p.Namespace == ns {
			out[p.Name] = p
		}
	}
	return out
}

// wantPods are the entries of pods under one policy with these counts.
func wantPods(ns, policy string, timeSeconds int32, counts map[string]v1alpha1.ConnectionCounts) map[string]v1alpha1.PodConnections {
	out := map[string]v1alpha1.PodConnections{}
	for name, c := range counts {
		out[name] = v1alpha1.PodConnections{Namespace: ns, Name: name, Policies: []v1alpha1.PolicyConnections{
			{ConnectionCounts: c, Policy: policy, TimeSeconds: timeSeconds},
		}}
	}
	return out
}

func podReady(pod *corev1.Pod) bool {
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// showKubectl runs kubectl and keeps its output in the report, for the
// README.
func showKubectl(title string, args ...string) {
	out, err := kubectl(args...)
	Expect(err).NotTo(HaveOccurred(), out)
	fmt.Fprintf(GinkgoWriter, "$ %s\n%s", title, out)
	AddReportEntry("$ "+title, strings.TrimRight(out, "\n"))
}
