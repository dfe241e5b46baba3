//go:build e2e

package e2e

import (
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/keepalive-operator/keepalive-operator/api/v1alpha1"
	"github.com/keepalive-operator/keepalive-operator/internal/controller"
	"github.com/keepalive-operator/keepalive-operator/internal/keepalive"
	"github.com/keepalive-operator/keepalive-operator/internal/testobj"
	"github.com/keepalive-operator/keepalive-operator/test/netlab"
)

// Values as the pods' kernels report them: time/intvl/probes.
const (
	nlbValues      = "175/30/9" // aws-nlb, 350 s
	kernelDefaults = "7200/75/9"
)

var _ = Describe("the operator on a real node", Ordered, func() {
	It("gives a Deployment's running pods the aws-nlb values, and leaves pods outside the policy alone", func() {
		ns := "e2e-nlb"
		createNamespace(ns, nil)
		Expect(k8s.Create(ctx, testobj.Spec().Preset(v1alpha1.PresetAWSNLB).
			PodLabels(map[string]string{"app": "api"}).Policy(ns, "behind-nlb"))).To(Succeed())
		waitForInjection(ns, map[string]string{"app": "api"})

		api := tcpappDeployment(ns, "api", map[string]string{"app": "api"})
		Expect(k8s.Create(ctx, api)).To(Succeed())
		outsider := tcpappPod(ns, "outsider", map[string]string{"app": "other"}, "server")
		Expect(k8s.Create(ctx, outsider)).To(Succeed())

		Eventually(rolledOut).WithArguments(api).Should(BeTrue())
		pods := runningPods(api)
		Expect(pods).To(HaveLen(2))
		for _, pod := range pods {
			Expect(pod.Annotations).To(HaveKeyWithValue(keepalive.AnnotationPolicy, "KeepalivePolicy/"+ns+"/behind-nlb"))
			Expect(readSysctls(ns, pod.Name)).To(Equal(nlbValues), "pod %s", pod.Name)
		}
		waitRunning(outsider)
		Expect(readSysctls(ns, outsider.Name)).To(Equal(kernelDefaults))
	})

	It("rolls Deployments created before the policy one at a time, and rolls them back when it is deleted", func() {
		ns := "e2e-rollout"
		createNamespace(ns, nil)
		labels := map[string]string{"tier": "legacy"}
		var deployments []*appsv1.Deployment
		for _, name := range []string{"legacy-a", "legacy-b", "legacy-c"} {
			d := tcpappDeployment(ns, name, labels)
			if name == "legacy-a" {
				// A sysctl of the user's own, which must survive the patch and the undo.
				d.Spec.Template.Spec.SecurityContext = &corev1.PodSecurityContext{
					Sysctls: []corev1.Sysctl{{Name: "net.ipv4.ip_local_port_range", Value: "20000 40000"}},
				}
			}
			Expect(k8s.Create(ctx, d)).To(Succeed())
			deployments = append(deployments, d)
		}
		originals := map[string]*corev1.PodSecurityContext{}
		for _, d := range deployments {
			Eventually(rolledOut).WithArguments(d).Should(BeTrue())
			Expect(readSysctls(ns, runningPods(d)[0].Name)).To(Equal(kernelDefaults))
			originals[d.Name] = d.Spec.Template.Spec.SecurityContext.DeepCopy()
		}

		watch := watchRollouts(ns)
		defer watch.stop()

		By("creating the policy: the operator patches the templates, the controller-manager rolls them")
		policy := testobj.Spec().Preset(v1alpha1.PresetAWSNLB).PodLabels(labels).Policy(ns, "legacy")
		Expect(k8s.Create(ctx, policy)).To(Succeed())
		for _, d := range deployments {
			Eventually(func(g Gomega) {
				g.Expect(k8s.Get(ctx, client.ObjectKeyFromObject(d), d)).To(Succeed())
				g.Expect(d.Annotations).To(HaveKey(keepalive.AnnotationManagedSysctls))
				g.Expect(rolledOut(d)).To(BeTrue())
			}).Should(Succeed(), "Deployment %s", d.Name)
			for _, pod := range runningPods(d) {
				Expect(readSysctls(ns, pod.Name)).To(Equal(nlbValues), "pod %s", pod.Name)
			}
		}
		Expect(deployments[0].Spec.Template.Spec.SecurityContext.Sysctls).To(ContainElement(
			corev1.Sysctl{Name: "net.ipv4.ip_local_port_range", Value: "20000 40000"}))
		Expect(watch.rolled()).To(ConsistOf("legacy-a", "legacy-b", "legacy-c"), "a rollout went unseen")

		By("deleting the policy: the operator restores the templates, one rollout at a time")
		Expect(k8s.Delete(ctx, policy)).To(Succeed())
		watch.reset()
		for _, d := range deployments {
			Eventually(func(g Gomega) {
				g.Expect(k8s.Get(ctx, client.ObjectKeyFromObject(d), d)).To(Succeed())
				g.Expect(d.Annotations).NotTo(HaveKey(keepalive.AnnotationManagedSysctls))
				g.Expect(d.Spec.Template.Spec.SecurityContext).To(Equal(originals[d.Name]))
				g.Expect(rolledOut(d)).To(BeTrue())
			}).Should(Succeed(), "Deployment %s", d.Name)
			for _, pod := range runningPods(d) {
				Expect(readSysctls(ns, pod.Name)).To(Equal(kernelDefaults), "pod %s", pod.Name)
			}
		}
		Eventually(func() error { return k8s.Get(ctx, client.ObjectKeyFromObject(policy), policy) }).
			Should(MatchError(ContainSubstring("not found")), "the finalizer stayed")
		watch.stop()
		Expect(watch.rolled()).To(ConsistOf("legacy-a", "legacy-b", "legacy-c"), "a rollback went unseen")
		Expect(watch.maxConcurrent()).To(Equal(1), "--max-concurrent-rollouts=1 was exceeded")
	})

	It("runs a hostNetwork pod and a pod under Pod Security v1.28 unchanged", func() {
		ns := "e2e-hostnet"
		createNamespace(ns, nil)
		Expect(k8s.Create(ctx, testobj.Spec().Preset(v1alpha1.PresetAWSNLB).Policy(ns, "all"))).To(Succeed())
		waitForInjection(ns, nil)
		host := tcpappPod(ns, "host", nil, "server", "-listen", "127.0.0.1:18080")
		host.Spec.HostNetwork = true
		Expect(k8s.Create(ctx, host)).To(Succeed())
		waitRunning(host)
		Expect(host.Spec.SecurityContext.Sysctls).To(BeEmpty())
		// The node's own values: the kubelet leaves a hostNetwork pod in the node's namespace.
		Expect(readSysctls(ns, host.Name)).To(Equal(kernelDefaults))

		ns = "e2e-psa128"
		createNamespace(ns, map[string]string{
			"pod-security.kubernetes.io/enforce":         "baseline",
			"pod-security.kubernetes.io/enforce-version": "v1.28",
		})
		policy := testobj.Spec().Preset(v1alpha1.PresetAWSNLB).Policy(ns, "all")
		Expect(k8s.Create(ctx, policy)).To(Succeed())
		old := tcpappPod(ns, "pinned", nil, "server")
		Expect(k8s.Create(ctx, old)).To(Succeed())
		Expect(old.Spec.SecurityContext.Sysctls).To(BeEmpty())
		waitRunning(old)
		Expect(readSysctls(ns, old.Name)).To(Equal(kernelDefaults))
		Eventually(func(g Gomega) {
			g.Expect(k8s.Get(ctx, client.ObjectKeyFromObject(policy), policy)).To(Succeed())
			g.Expect(meta.IsStatusConditionTrue(policy.Status.Conditions, controller.ConditionPodsBlocked)).To(BeTrue())
		}).Should(Succeed())
	})

	It("shows that the node enforces sysctls: a pod given an unsafe one fails with SysctlForbidden", func() {
		ns := "e2e-unsafe"
		createNamespace(ns, nil)
		pod := tcpappPod(ns, "unsafe", nil, "server")
		pod.Spec.SecurityContext = &corev1.PodSecurityContext{Sysctls: []corev1.Sysctl{{Name: "net.core.somaxconn", Value: "1024"}}}
		Expect(k8s.Create(ctx, pod)).To(Succeed())
		Eventually(func(g Gomega) {
			g.Expect(k8s.Get(ctx, client.ObjectKeyFromObject(pod), pod)).To(Succeed())
			g.Expect(pod.Status.Phase).To(Equal(corev1.PodFailed))
			g.Expect(pod.Status.Reason).To(Equal("SysctlForbidden"))
		}).Should(Succeed())
	})

	It("keeps a pod's idle connection alive through a middlebox that forgets idle flows", func() {
		const idleTimeout = 6 // T: the middlebox forgets a flow idle for 6 s
		lab, err := netlab.NewBehind(nodeNetns, []string{nodePodNet}, idleTimeout)
		Expect(err).NotTo(HaveOccurred())
		defer lab.Close()
		server := exec.Command("ip", "netns", "exec", lab.Server, os.Getenv("TCPAPP"), "server", "-listen", netlab.ServerIP+":8080")
		server.Stdout, server.Stderr = GinkgoWriter, GinkgoWriter
		Expect(server.Start()).To(Succeed())
		defer func() { _ = server.Process.Kill(); _ = server.Wait() }()

		ns := "e2e-wire"
		createNamespace(ns, nil)
		Expect(k8s.Create(ctx, testobj.Spec().Custom("middlebox", idleTimeout).
			PodLabels(map[string]string{"wire": "kept"}).Policy(ns, "short-hop"))).To(Succeed())
		waitForInjection(ns, map[string]string{"wire": "kept"})

		idle := fmt.Sprintf("%ds", 3*idleTimeout)
		target := netlab.ServerIP + ":8080"
		kept := tcpappPod(ns, "kept", map[string]string{"wire": "kept"}, "client", "-connect", target, "-idle", idle)
		plain := tcpappPod(ns, "plain", nil, "client", "-connect", target, "-idle", idle)
		Expect(k8s.Create(ctx, kept)).To(Succeed())
		Expect(k8s.Create(ctx, plain)).To(Succeed())
		Expect(kept.Spec.SecurityContext.Sysctls).To(ContainElement(corev1.Sysctl{Name: "net.ipv4.tcp_keepalive_time", Value: "3"}))
		Expect(plain.Spec.SecurityContext.Sysctls).To(BeEmpty())

		Expect(finished(kept)).To(Equal(corev1.PodSucceeded), logs(kept))
		Expect(logs(kept)).To(ContainSubstring("alive after " + idle + " idle"))
		Expect(finished(plain)).To(Equal(corev1.PodFailed), logs(plain))
		Expect(logs(plain)).To(ContainSubstring("connection reset by peer"))
	})

	It("keeps each operator pod within the chart's memory request of 128 MiB", func() {
		var usage map[string]uint64
		Eventually(func(g Gomega) {
			var err error
			usage, err = operatorMemory()
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(usage).To(HaveLen(2))
			for _, bytes := range usage {
				g.Expect(bytes).NotTo(BeZero(), "no figure from the kubelet yet")
			}
		}).Should(Succeed())
		for pod, bytes := range usage {
			Expect(bytes).To(BeNumerically("<", 128<<20), pod)
			AddReportEntry("working set of "+pod, fmt.Sprintf("%.1f MiB", float64(bytes)/(1<<20)))
		}
	})

	It("fails over when the leader is killed, and admits pods with the values throughout", func() {
		ns := "e2e-nlb"
		old := leaderPod()
		Expect(old).NotTo(BeEmpty())

		var admitted, wrong atomic.Int32
		var problems sync.Map
		done := make(chan struct{})
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer GinkgoRecover()
			for i := 0; ; i++ {
				select {
				case <-done:
					return
				case <-time.After(250 * time.Millisecond):
				}
				pod := tcpappPod(ns, fmt.Sprintf("during-failover-%d", i), map[string]string{"app": "api"}, "server")
				err := k8s.Create(ctx, pod, client.DryRunAll)
				if err == nil && podValues(pod) == nlbValues {
					admitted.Add(1)
					continue
				}
				wrong.Add(1)
				problems.Store(i, fmt.Sprintf("error %v, sysctls %v", err, pod.Spec.SecurityContext))
			}
		}()

		By("killing the leader's process, then its pod " + old + ", so that it cannot release the lease")
		pod := &corev1.Pod{}
		Expect(k8s.Get(ctx, client.ObjectKey{Namespace: operatorNamespace, Name: old}, pod)).To(Succeed())
		Expect(killOperator(pod.UID)).To(Succeed())
		start := time.Now()
		out, err := kubectl("delete", "pod", "-n", operatorNamespace, old, "--grace-period=0", "--force")
		Expect(err).NotTo(HaveOccurred(), out)
		Eventually(leaderPod, time.Minute).ShouldNot(Or(BeEmpty(), Equal(old)))
		AddReportEntry("leader failover after the leader was killed", time.Since(start).Round(100*time.Millisecond).String())

		By("the new leader " + leaderPod() + " writes status")
		policy := testobj.Spec().Preset(v1alpha1.PresetAzureLB).PodLabels(map[string]string{"app": "after-failover"}).Policy(ns, "after-failover")
		Expect(k8s.Create(ctx, policy)).To(Succeed())
		Eventually(func(g Gomega) {
			g.Expect(k8s.Get(ctx, client.ObjectKeyFromObject(policy), policy)).To(Succeed())
			g.Expect(policy.Status.ObservedGeneration).To(Equal(policy.Generation))
			g.Expect(policy.Status.Keepalive).NotTo(BeNil())
			g.Expect(policy.Status.Keepalive.TimeSeconds).To(BeEquivalentTo(120))
		}).Should(Succeed())

		// Admission goes on until the Deployment has two replicas again.
		Eventually(func(g Gomega) {
			d := &appsv1.Deployment{}
			g.Expect(k8s.Get(ctx, client.ObjectKey{Namespace: operatorNamespace, Name: release}, d)).To(Succeed())
			g.Expect(d.Status.ReadyReplicas).To(BeEquivalentTo(2))
		}).Should(Succeed())
		close(done)
		wg.Wait()
		var list []string
		problems.Range(func(k, v any) bool { list = append(list, fmt.Sprint(k, ": ", v)); return true })
		Expect(wrong.Load()).To(BeZero(), strings.Join(list, "\n"))
		Expect(admitted.Load()).To(BeNumerically(">=", 10))
		AddReportEntry("pods admitted with the values during the failover", admitted.Load())
	})

	It("made no pod fail because of the operator: the only SysctlForbidden is the unsafe pod's", func() {
		events := &corev1.EventList{}
		Expect(k8s.List(ctx, events)).To(Succeed())
		var forbidden []string
		for _, e := range events.Items {
			// The kubelet's refusal, or a controller's pod create refused at admission.
			if e.Reason == "SysctlForbidden" || (e.Reason == "FailedCreate" && strings.Contains(e.Message, "sysctl")) {
				forbidden = append(forbidden, e.InvolvedObject.Namespace+"/"+e.InvolvedObject.Name+": "+e.Reason+": "+e.Message)
			}
		}
		Expect(forbidden).NotTo(BeEmpty(), "the unsafe pod's event is missing: are events recorded?")
		for _, f := range forbidden {
			Expect(f).To(HavePrefix("e2e-unsafe/unsafe: "))
		}
		pods := &corev1.PodList{}
		Expect(k8s.List(ctx, pods)).To(Succeed())
		for _, p := range pods.Items {
			if p.Status.Reason == "SysctlForbidden" {
				Expect(p.Namespace + "/" + p.Name).To(Equal("e2e-unsafe/unsafe"))
			}
		}
	})
})

// killOperator sends SIGKILL to the operator process of the pod with this
// UID, found through its cgroup, as a crash would end it.
func killOperator(uid types.UID) error {
	procs, err := filepath.Glob("/proc/[0-9]*")
	if err != nil {
		return err
	}
	for _, proc := range procs {
		cgroup, err1 := os.ReadFile(proc + "/cgroup")
		comm, err2 := os.ReadFile(proc + "/comm")
		if err1 != nil || err2 != nil || !strings.Contains(string(cgroup), "pod"+string(uid)) ||
			!strings.HasPrefix(string(comm), "keepalive-op") {
			continue
		}
		pid, err := strconv.Atoi(filepath.Base(proc))
		if err != nil {
			return err
		}
		return syscall.Kill(pid, syscall.SIGKILL)
	}
	return fmt.Errorf("no operator process in the cgroup of pod %s", uid)
}

// tcpappPod runs the test application with args.
func tcpappPod(ns, name string, labels map[string]string, args ...string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
		Spec: corev1.PodSpec{
			RestartPolicy:                 corev1.RestartPolicyNever,
			TerminationGracePeriodSeconds: ptr.To[int64](1),
			Containers: []corev1.Container{{
				Name: "app", Image: tcpappImage, ImagePullPolicy: corev1.PullNever,
				Command: append([]string{"/ko-app/tcpapp"}, args...), // where ko puts the binary
			}},
		},
	}
}

// tcpappDeployment runs two replicas of the test application's server.
func tcpappDeployment(ns, name string, labels map[string]string) *appsv1.Deployment {
	pod := tcpappPod(ns, "", nil, "server")
	pod.Spec.RestartPolicy = corev1.RestartPolicyAlways
	pod.Spec.Containers[0].ReadinessProbe = &corev1.Probe{
		ProbeHandler:  corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(8080)}},
		PeriodSeconds: 1,
	}
	podLabels := map[string]string{"deployment": name}
	maps.Copy(podLabels, labels)
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To[int32](2),
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"deployment": name}},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: podLabels}, Spec: pod.Spec},
		},
	}
}

// waitForInjection waits until the webhook serves: a dry-run pod with these
// labels comes back with the keepalive sysctls.
func waitForInjection(ns string, labels map[string]string) {
	Eventually(func(g Gomega) {
		pod := tcpappPod(ns, "probe", labels, "server")
		g.Expect(k8s.Create(ctx, pod, client.DryRunAll)).To(Succeed())
		g.Expect(podValues(pod)).NotTo(BeEmpty())
	}).Should(Succeed(), "the webhook does not inject in %s", ns)
}

// podValues is a pod spec's keepalive sysctls as time/intvl/probes, or "".
func podValues(pod *corev1.Pod) string {
	if pod.Spec.SecurityContext == nil {
		return ""
	}
	values := map[string]string{}
	for _, s := range pod.Spec.SecurityContext.Sysctls {
		values[s.Name] = s.Value
	}
	t, i, p := values["net.ipv4.tcp_keepalive_time"], values["net.ipv4.tcp_keepalive_intvl"], values["net.ipv4.tcp_keepalive_probes"]
	if t == "" || i == "" || p == "" {
		return ""
	}
	return t + "/" + i + "/" + p
}

// readSysctls reads the keepalive sysctls inside a running container from
// /proc, as time/intvl/probes.
func readSysctls(ns, pod string) string {
	out, err := kubectl("exec", "-n", ns, pod, "--", "/ko-app/tcpapp", "sysctls")
	Expect(err).NotTo(HaveOccurred(), out)
	values := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		name, value, _ := strings.Cut(line, "=")
		values[strings.TrimPrefix(name, "net.ipv4.tcp_keepalive_")] = value
	}
	return values["time"] + "/" + values["intvl"] + "/" + values["probes"]
}

func waitRunning(pod *corev1.Pod) {
	Eventually(func(g Gomega) {
		g.Expect(k8s.Get(ctx, client.ObjectKeyFromObject(pod), pod)).To(Succeed())
		g.Expect(pod.Status.Phase).To(Equal(corev1.PodRunning))
	}).Should(Succeed(), "pod %s/%s", pod.Namespace, pod.Name)
}

// finished waits for a pod that runs to completion and returns its phase.
func finished(pod *corev1.Pod) corev1.PodPhase {
	Eventually(func(g Gomega) {
		g.Expect(k8s.Get(ctx, client.ObjectKeyFromObject(pod), pod)).To(Succeed())
		g.Expect(pod.Status.Phase).To(BeElementOf(corev1.PodSucceeded, corev1.PodFailed))
	}).Should(Succeed(), "pod %s/%s", pod.Namespace, pod.Name)
	return pod.Status.Phase
}

func logs(pod *corev1.Pod) string {
	out, _ := kubectl("logs", "-n", pod.Namespace, pod.Name)
	return out
}

// rolledOut reads a Deployment and says whether it is done rolling out.
func rolledOut(d *appsv1.Deployment) bool {
	return k8s.Get(ctx, client.ObjectKeyFromObject(d), d) == nil && deploymentDone(d)
}

// deploymentDone is true when a Deployment's controller has observed its latest
// template and every replica runs it and is available.
func deploymentDone(d *appsv1.Deployment) bool {
	want := *d.Spec.Replicas
	s := d.Status
	return s.ObservedGeneration >= d.Generation && s.UpdatedReplicas == want && s.Replicas == want && s.AvailableReplicas == want
}

// runningPods are a Deployment's pods that run and are not being deleted.
func runningPods(d *appsv1.Deployment) []corev1.Pod {
	list := &corev1.PodList{}
	Expect(k8s.List(ctx, list, client.InNamespace(d.Namespace), client.MatchingLabels(d.Spec.Selector.MatchLabels))).To(Succeed())
	var pods []corev1.Pod
	for _, p := range list.Items {
		if p.DeletionTimestamp == nil && p.Status.Phase == corev1.PodRunning {
			pods = append(pods, p)
		}
	}
	return pods
}

// rolloutWatch samples Deployments and records which were rolling at once.
type rolloutWatch struct {
	mu      sync.Mutex
	max     int
	seen    map[string]bool
	stopped chan struct{}
	once    sync.Once
	wg      sync.WaitGroup
}

func watchRollouts(ns string) *rolloutWatch {
	w := &rolloutWatch{seen: map[string]bool{}, stopped: make(chan struct{})}
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		for {
			select {
			case <-w.stopped:
				return
			case <-time.After(100 * time.Millisecond):
			}
			list := &appsv1.DeploymentList{}
			if err := k8s.List(ctx, list, client.InNamespace(ns)); err != nil {
				continue
			}
			rolling := 0
			w.mu.Lock()
			for i := range list.Items {
				if d := &list.Items[i]; !deploymentDone(d) {
					rolling++
					w.seen[d.Name] = true
				}
			}
			w.max = max(w.max, rolling)
			w.mu.Unlock()
		}
	}()
	return w
}

func (w *rolloutWatch) stop() {
	w.once.Do(func() { close(w.stopped) })
	w.wg.Wait()
}

// reset forgets which Deployments were seen rolling.
func (w *rolloutWatch) reset() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.seen = map[string]bool{}
}

func (w *rolloutWatch) rolled() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var names []string
	for n := range w.seen {
		names = append(names, n)
	}
	return names
}

func (w *rolloutWatch) maxConcurrent() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.max
}
