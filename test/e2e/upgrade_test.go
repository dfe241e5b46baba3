//go:build e2e

package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/keepalive-operator/keepalive-operator/api/v1alpha1"
	"github.com/keepalive-operator/keepalive-operator/internal/controller"
	"github.com/keepalive-operator/keepalive-operator/internal/keepalive"
	"github.com/keepalive-operator/keepalive-operator/internal/testenv"
	"github.com/keepalive-operator/keepalive-operator/internal/testobj"
)

// The previous release, as `make image-archives` builds it from the commit
// E2E_PREVIOUS_RELEASE: its chart, and its operator image under this tag.
const previousTag = "previous"

// chartValues are the suite's Helm values, for the operator image of tag.
func chartValues(tag string) []string {
	return []string{
		"--set", "image.repository=keepalive-operator", "--set", "image.tag=" + tag, "--set", "image.pullPolicy=Never",
		"--set", "operator.maxConcurrentRollouts=1",
	}
}

// currentChartValues are those of the working tree's chart: its image and
// the audit agent, which the previous release's chart has no values for
// (its schema refuses them).
func currentChartValues() []string {
	return append(chartValues("e2e"),
		"--set", "audit.enabled=true", "--set", "audit.interval="+auditInterval.String())
}

func chartPath() string { return filepath.Join(testenv.Root(), "charts", "keepalive-operator") }

func helm(args ...string) {
	out, err := command(os.Getenv("HELM"), args...)
	ExpectWithOffset(1, err).NotTo(HaveOccurred(), out)
}

var _ = Describe("helm upgrade from the previous release", Ordered, func() {
	// upgraded is set once the release runs the working tree's chart again,
	// as the other specs expect.
	upgraded := false

	BeforeAll(func() {
		previous := os.Getenv("PREVIOUS_CHART")
		Expect(previous).NotTo(BeEmpty(), "PREVIOUS_CHART is not set: run `make test-e2e`")
		Expect(filepath.Join(previous, "Chart.yaml")).To(BeAnExistingFile())

		By("deleting every policy, so that the operator restores what it patched, then uninstalling the release and its CRDs")
		Expect(k8s.DeleteAllOf(ctx, &v1alpha1.ClusterKeepalivePolicy{})).To(Succeed())
		namespaces := &corev1.NamespaceList{}
		Expect(k8s.List(ctx, namespaces)).To(Succeed())
		for _, n := range namespaces.Items {
			Expect(k8s.DeleteAllOf(ctx, &v1alpha1.KeepalivePolicy{}, client.InNamespace(n.Name))).To(Succeed())
		}
		Eventually(func(g Gomega) {
			kaps, ckaps := &v1alpha1.KeepalivePolicyList{}, &v1alpha1.ClusterKeepalivePolicyList{}
			g.Expect(k8s.List(ctx, kaps)).To(Succeed())
			g.Expect(k8s.List(ctx, ckaps)).To(Succeed())
			g.Expect(kaps.Items).To(BeEmpty())
			g.Expect(ckaps.Items).To(BeEmpty())
		}, 3*time.Minute).Should(Succeed(), "policies are left")
		helm("uninstall", release, "--namespace", operatorNamespace, "--wait", "--timeout", "2m")
		// Helm leaves CRDs; without them, installing the previous chart
		// creates its own from its crds/ folder, as a first install would.
		out, err := kubectl("delete", "crd", "keepalivepolicies.keepalive.io", "clusterkeepalivepolicies.keepalive.io", "--wait")
		Expect(err).NotTo(HaveOccurred(), out)

		By("installing the previous release: its chart, CRDs and operator image")
		start := time.Now()
		helm(append([]string{"install", release, previous, "--namespace", operatorNamespace, "--wait", "--timeout", "5m"},
			chartValues(previousTag)...)...)
		AddReportEntry("helm install --wait of the previous release", time.Since(start).Round(100*time.Millisecond).String())
		Eventually(leaderPod).ShouldNot(BeEmpty(), "no replica of the previous release took the leader lease")
	})

	AfterAll(func() {
		if upgraded {
			return
		}
		By("the spec failed: installing the working tree's chart, for the specs that follow")
		out, err := kubectl("apply", "--server-side", "--force-conflicts", "-f", filepath.Join(chartPath(), "crds"))
		Expect(err).NotTo(HaveOccurred(), out)
		helm(append([]string{"upgrade", "--install", release, chartPath(), "--namespace", operatorNamespace, "--wait", "--timeout", "5m"},
			currentChartValues()...)...)
	})

	It("keeps the policies, their status and the workload records, rolls no workload and admits every pod with its values", func() {
		ns := "e2e-upgrade"
		nsLabels := map[string]string{"keepalive-e2e/upgrade": "yes"}
		createNamespace(ns, nsLabels)
		nlb, azure := map[string]string{"tier": "nlb"}, map[string]string{"tier": "azure"}
		var deployments []*appsv1.Deployment
		for _, d := range []*appsv1.Deployment{
			tcpappDeployment(ns, "up-a", nlb), tcpappDeployment(ns, "up-b", nlb), tcpappDeployment(ns, "up-c", azure),
		} {
			if d.Name == "up-a" {
				// A larger value of the user's own, which the record keeps.
				d.Spec.Template.Spec.SecurityContext = &corev1.PodSecurityContext{
					Sysctls: []corev1.Sysctl{{Name: "net.ipv4.tcp_keepalive_time", Value: "7200"}},
				}
			}
			Expect(k8s.Create(ctx, d)).To(Succeed())
			deployments = append(deployments, d)
		}
		for _, d := range deployments {
			Eventually(rolledOut).WithArguments(d).Should(BeTrue())
		}

		By("policies of both kinds, applied by the previous release's operator")
		kap := testobj.Spec().Preset(v1alpha1.PresetAWSNLB).PodLabels(nlb).Policy(ns, "nlb")
		ckap := testobj.Spec().Preset(v1alpha1.PresetAzureLB).PodLabels(azure).ClusterPolicy("e2e-upgrade-azure", nsLabels)
		Expect(k8s.Create(ctx, kap)).To(Succeed())
		Expect(k8s.Create(ctx, ckap)).To(Succeed())
		policies := []client.Object{kap, ckap}
		Eventually(func(g Gomega) {
			for _, d := range deployments {
				g.Expect(k8s.Get(ctx, client.ObjectKeyFromObject(d), d)).To(Succeed())
				g.Expect(d.Annotations).To(HaveKey(keepalive.AnnotationManagedSysctls), "Deployment %s", d.Name)
				g.Expect(deploymentDone(d)).To(BeTrue(), "Deployment %s", d.Name)
			}
			for _, p := range policies {
				g.Expect(k8s.Get(ctx, client.ObjectKeyFromObject(p), p)).To(Succeed())
			}
			g.Expect(*policyStatus(kap)).To(convergedStatus(2, 4))
			g.Expect(*policyStatus(ckap)).To(convergedStatus(1, 2))
		}, 3*time.Minute).Should(Succeed())

		before := snapshot(policies, deployments)

		By("creating pods continuously while the CRDs are applied and the release is upgraded")
		var creator podCreator
		creator.start(ns, map[string]string{"nlb": nlbValues, "azure": "120/30/9"})
		defer creator.stop()

		start := time.Now()
		// What the README's upgrade section says to do: Helm created the CRDs
		// and owns their fields, so the apply takes them over.
		out, err := kubectl("apply", "--server-side", "--force-conflicts", "-f", filepath.Join(chartPath(), "crds"))
		Expect(err).NotTo(HaveOccurred(), out)
		helm(append([]string{"upgrade", release, chartPath(), "--namespace", operatorNamespace, "--wait", "--timeout", "5m"},
			currentChartValues()...)...)
		upgraded = true
		AddReportEntry("CRDs applied and helm upgrade --wait", time.Since(start).Round(100*time.Millisecond).String())

		By("waiting until only the new release's pods run and one of them leads")
		newPods := operatorPodsOf("keepalive-operator:e2e")
		Eventually(newPods).Should(HaveLen(2))
		Eventually(func(g Gomega) {
			pods := &corev1.PodList{}
			g.Expect(k8s.List(ctx, pods, client.InNamespace(operatorNamespace), operatorPodLabels)).To(Succeed())
			g.Expect(pods.Items).To(HaveLen(2), "pods of the previous release remain")
			g.Expect(newPods()).To(ContainElement(leaderPod()))
		}).Should(Succeed())
		// Admission goes on a little after the last old pod is gone, while the
		// API server's view of the webhook's endpoints catches up.
		time.Sleep(3 * time.Second)
		creator.stop()
		Expect(creator.wrong.Load()).To(BeZero(), strings.Join(creator.problemList(), "\n"))
		Expect(creator.admitted.Load()).To(BeNumerically(">=", 50))
		AddReportEntry("pods admitted with their values during the upgrade", creator.admitted.Load())

		By("the policies and their status as the previous release left them")
		after := snapshot(policies, deployments)
		Expect(after.policies).To(Equal(before.policies))

		By("a pod for each policy: the new leader counts it, so it has reconciled both")
		for _, p := range []struct {
			labels map[string]string
			policy client.Object
		}{{nlb, kap}, {azure, ckap}} {
			pod := tcpappPod(ns, "after-upgrade-"+p.labels["tier"], p.labels, "server")
			Expect(k8s.Create(ctx, pod)).To(Succeed())
			waitRunning(pod)
			matched := before.policies[p.policy.GetName()].Pods.Matched
			Eventually(func(g Gomega) {
				g.Expect(k8s.Get(ctx, client.ObjectKeyFromObject(p.policy), p.policy)).To(Succeed())
				s := policyStatus(p.policy)
				g.Expect(s.Pods).NotTo(BeNil())
				g.Expect(s.Pods.Matched).To(Equal(matched+1), "policy %s", p.policy.GetName())
				g.Expect(s.Pods.Compliant).To(Equal(matched + 1))
			}).Should(Succeed())
		}

		By("no workload rolled: same generations, ReplicaSets, pods and records as before the upgrade")
		Consistently(func(g Gomega) {
			now := snapshot(policies, deployments)
			g.Expect(now.workloads).To(Equal(before.workloads))
			for name, s := range now.policies {
				g.Expect(s.generation).To(Equal(before.policies[name].generation))
				g.Expect(s.Workloads).To(Equal(before.policies[name].Workloads))
				g.Expect(s.ready).To(BeTrue(), "policy %s", name)
			}
		}, 5*time.Second, 500*time.Millisecond).Should(Succeed())

		By("removing the workloads, then the policies, which have nothing left to restore")
		for _, d := range deployments {
			Expect(k8s.Delete(ctx, d)).To(Succeed())
		}
		for _, tier := range []string{"nlb", "azure"} {
			Expect(k8s.Delete(ctx, tcpappPod(ns, "after-upgrade-"+tier, nil))).To(Succeed())
		}
		for _, p := range policies {
			Expect(k8s.Delete(ctx, p)).To(Succeed())
			Eventually(func() error { return k8s.Get(ctx, client.ObjectKeyFromObject(p), p) }).
				Should(MatchError(ContainSubstring("not found")), "the finalizer of %s stayed", p.GetName())
		}
	})
})

// policyStatus is the status of either kind of policy.
func policyStatus(p client.Object) *v1alpha1.KeepalivePolicyStatus {
	switch p := p.(type) {
	case *v1alpha1.KeepalivePolicy:
		return &p.Status
	case *v1alpha1.ClusterKeepalivePolicy:
		return &p.Status
	}
	panic(fmt.Sprintf("not a policy: %T", p))
}

// convergedStatus matches a converged status: Ready, the spec observed, every
// workload patched and done, every pod compliant.
func convergedStatus(workloads, pods int32) OmegaMatcher {
	return And(
		WithTransform(func(s v1alpha1.KeepalivePolicyStatus) bool {
			return meta.IsStatusConditionTrue(s.Conditions, controller.ConditionReady)
		}, BeTrue()),
		WithTransform(func(s v1alpha1.KeepalivePolicyStatus) *v1alpha1.WorkloadCounts { return s.Workloads },
			Equal(&v1alpha1.WorkloadCounts{Patched: workloads})),
		WithTransform(func(s v1alpha1.KeepalivePolicyStatus) *v1alpha1.PodCounts { return s.Pods },
			Equal(&v1alpha1.PodCounts{Matched: pods, Compliant: pods})),
	)
}

// policyState is what a policy keeps across an upgrade.
type policyState struct {
	generation         int64
	observedGeneration int64
	spec               any // the spec of either kind
	ready              bool
	GoverningTimeout   *v1alpha1.GoverningTimeout
	Keepalive          *v1alpha1.KeepaliveValues
	Pods               *v1alpha1.PodCounts
	Workloads          *v1alpha1.WorkloadCounts
}

// workloadState is what shows whether a Deployment rolled: its generation
// (which counts its template writes), its ReplicaSets, its pods, its record.
type workloadState struct {
	generation  int64
	record      string
	replicaSets []string
	pods        []types.UID
}

type clusterSnapshot struct {
	policies  map[string]policyState
	workloads map[string]workloadState
}

// snapshot reads the policies and Deployments.
func snapshot(policies []client.Object, deployments []*appsv1.Deployment) clusterSnapshot {
	s := clusterSnapshot{policies: map[string]policyState{}, workloads: map[string]workloadState{}}
	for _, p := range policies {
		Expect(k8s.Get(ctx, client.ObjectKeyFromObject(p), p)).To(Succeed())
		st := policyStatus(p)
		state := policyState{
			generation: p.GetGeneration(), observedGeneration: st.ObservedGeneration,
			ready:            meta.IsStatusConditionTrue(st.Conditions, controller.ConditionReady),
			GoverningTimeout: st.GoverningTimeout, Keepalive: st.Keepalive, Pods: st.Pods, Workloads: st.Workloads,
		}
		switch p := p.(type) {
		case *v1alpha1.KeepalivePolicy:
			state.spec = *p.Spec.DeepCopy()
		case *v1alpha1.ClusterKeepalivePolicy:
			state.spec = *p.Spec.DeepCopy()
		}
		s.policies[p.GetName()] = state
	}
	for _, d := range deployments {
		Expect(k8s.Get(ctx, client.ObjectKeyFromObject(d), d)).To(Succeed())
		w := workloadState{generation: d.Generation, record: d.Annotations[keepalive.AnnotationManagedSysctls]}
		for _, rs := range replicaSets(d) {
			w.replicaSets = append(w.replicaSets, rs.Name)
		}
		for _, pod := range runningPods(d) {
			w.pods = append(w.pods, pod.UID)
		}
		s.workloads[d.Name] = w
	}
	return s
}

// operatorPodsOf returns a function listing the operator pods that run image
// and are not being deleted; the audit agent runs the same image.
func operatorPodsOf(image string) func() []string {
	return func() []string {
		pods := &corev1.PodList{}
		if err := k8s.List(ctx, pods, client.InNamespace(operatorNamespace), operatorPodLabels); err != nil {
			return nil
		}
		var names []string
		for _, p := range pods.Items {
			if p.DeletionTimestamp == nil && strings.HasSuffix(p.Spec.Containers[0].Image, image) {
				names = append(names, p.Name)
			}
		}
		return names
	}
}

// podCreator creates pods through admission (dry run: the webhook sees each
// create, nothing is kept) one after another, and counts those that come back
// without the values their labels call for.
type podCreator struct {
	admitted, wrong atomic.Int32
	problems        sync.Map
	done            chan struct{}
	once            sync.Once
	wg              sync.WaitGroup
	// warnings are those of the create under way, such as the webhook's
	// reason for leaving a pod alone.
	warnings []string
}

func (c *podCreator) HandleWarningHeader(_ int, _ string, text string) {
	c.warnings = append(c.warnings, text)
}

// start creates pods labelled tier=<key> in turn, expecting values[key].
func (c *podCreator) start(ns string, values map[string]string) {
	c.done = make(chan struct{})
	cfg, err := clientcmd.BuildConfigFromFlags("", os.Getenv("KUBECONFIG"))
	Expect(err).NotTo(HaveOccurred())
	cfg.WarningHandler = c
	creator, err := client.New(cfg, client.Options{Scheme: k8s.Scheme()})
	Expect(err).NotTo(HaveOccurred())
	var tiers []string
	for tier := range values {
		tiers = append(tiers, tier)
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		defer GinkgoRecover()
		for i := 0; ; i++ {
			select {
			case <-c.done:
				return
			case <-time.After(50 * time.Millisecond):
			}
			tier := tiers[i%len(tiers)]
			pod := tcpappPod(ns, fmt.Sprintf("during-upgrade-%d", i), map[string]string{"tier": tier}, "server")
			c.warnings = nil
			err := creator.Create(ctx, pod, client.DryRunAll)
			if err == nil && podValues(pod) == values[tier] {
				c.admitted.Add(1)
				continue
			}
			c.wrong.Add(1)
			c.problems.Store(i, fmt.Sprintf("%s at %s: error %v, sysctls %v, annotations %v, warnings %q",
				pod.Name, time.Now().Format("15:04:05.000"), err, pod.Spec.SecurityContext.Sysctls, pod.Annotations, c.warnings))
		}
	}()
}

func (c *podCreator) stop() {
	c.once.Do(func() { close(c.done) })
	c.wg.Wait()
}

// problemList names the pods that came back without their values, and what
// the API server logged about calling the webhook.
func (c *podCreator) problemList() []string {
	var list []string
	c.problems.Range(func(_, v any) bool { list = append(list, v.(string)); return true })
	if len(list) == 0 {
		return nil
	}
	raw, err := os.ReadFile(filepath.Join(os.Getenv("LOCAL_CLUSTER_DIR"), "logs", "kube-apiserver.log"))
	if err != nil {
		return append(list, "the API server's log: "+err.Error())
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if strings.Contains(line, "pods.keepalive.io") {
			list = append(list, "kube-apiserver: "+line)
		}
	}
	return list
}
