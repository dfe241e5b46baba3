//go:build e2e

package e2e

import (
	"path/filepath"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/keepalive-operator/keepalive-operator/api/v1alpha1"
	"github.com/keepalive-operator/keepalive-operator/internal/controller"
	"github.com/keepalive-operator/keepalive-operator/internal/keepalive"
	"github.com/keepalive-operator/keepalive-operator/internal/testenv"
	"github.com/keepalive-operator/keepalive-operator/internal/testobj"
)

// controlPlaneOutage is how long etcd and the API server stay down: longer
// than the leader's renew deadline (10 s), so that the leader loses its lease
// and whichever replica leads next rebuilds the rollout slots from the cluster.
const controlPlaneOutage = 12 * time.Second

var _ = Describe("a control plane crash in the middle of a rollout", Ordered, func() {
	It("loses no record, writes each template once, rolls one workload at a time and converges", func() {
		ns := "e2e-crash"
		createNamespace(ns, nil)
		labels := map[string]string{"tier": "crash"}
		var deployments []*appsv1.Deployment
		for _, name := range []string{"crash-a", "crash-b", "crash-c"} {
			d := tcpappDeployment(ns, name, labels)
			// Each rollout lasts a few seconds, so that the crash finds one
			// under way and others waiting for the slot.
			d.Spec.MinReadySeconds = 2
			if name == "crash-a" {
				// A larger value of the user's own: replaced, and kept in the record.
				d.Spec.Template.Spec.SecurityContext = &corev1.PodSecurityContext{
					Sysctls: []corev1.Sysctl{{Name: "net.ipv4.tcp_keepalive_time", Value: "7200"}},
				}
			}
			Expect(k8s.Create(ctx, d)).To(Succeed())
			deployments = append(deployments, d)
		}
		generations := map[string]int64{}
		for _, d := range deployments {
			Eventually(rolledOut).WithArguments(d).Should(BeTrue())
			generations[d.Name] = d.Generation
			Expect(replicaSets(d)).To(HaveLen(1), "Deployment %s", d.Name)
		}
		restartsBefore := operatorRestarts()

		watch := watchRollouts(ns)
		defer watch.stop()
		policy := testobj.Spec().Preset(v1alpha1.PresetAWSNLB).PodLabels(labels).Policy(ns, "crash")
		Expect(k8s.Create(ctx, policy)).To(Succeed())

		By("waiting until the operator has patched one Deployment that is still rolling, and others wait for the slot")
		Eventually(func(g Gomega) {
			patched, rolling := 0, 0
			for _, d := range deployments {
				g.Expect(k8s.Get(ctx, client.ObjectKeyFromObject(d), d)).To(Succeed())
				if _, ok := d.Annotations[keepalive.AnnotationManagedSysctls]; ok {
					patched++
					if !deploymentDone(d) {
						rolling++
					}
				}
			}
			g.Expect(rolling).To(Equal(1))
			g.Expect(patched).To(BeNumerically("<", len(deployments)))
		}).WithPolling(50 * time.Millisecond).Should(Succeed())

		By("killing kube-apiserver and etcd with SIGKILL, for " + controlPlaneOutage.String())
		cluster := filepath.Join(testenv.Root(), "hack", "local-cluster.sh")
		out, err := command(cluster, "kill", "kube-apiserver", "etcd")
		Expect(err).NotTo(HaveOccurred(), out)
		time.Sleep(controlPlaneOutage)
		start := time.Now()
		out, err = command(cluster, "start", "etcd", "kube-apiserver")
		Expect(err).NotTo(HaveOccurred(), out)
		AddReportEntry("etcd and kube-apiserver restarted, API ready", time.Since(start).Round(100*time.Millisecond).String())

		By("every Deployment gets its values and record, and the policy's status converges")
		Eventually(func(g Gomega) {
			for _, d := range deployments {
				g.Expect(k8s.Get(ctx, client.ObjectKeyFromObject(d), d)).To(Succeed())
				g.Expect(d.Annotations).To(HaveKey(keepalive.AnnotationManagedSysctls), "Deployment %s", d.Name)
				g.Expect(deploymentDone(d)).To(BeTrue(), "Deployment %s", d.Name)
			}
			g.Expect(k8s.Get(ctx, client.ObjectKeyFromObject(policy), policy)).To(Succeed())
			s := policy.Status
			g.Expect(s.ObservedGeneration).To(Equal(policy.Generation))
			g.Expect(meta.IsStatusConditionTrue(s.Conditions, controller.ConditionReady)).To(BeTrue(), "%v", s.Conditions)
			g.Expect(s.Workloads).To(Equal(&v1alpha1.WorkloadCounts{Patched: 3}))
			g.Expect(s.Pods).To(Equal(&v1alpha1.PodCounts{Matched: 6, Compliant: 6}))
		}, 3*time.Minute).Should(Succeed())
		AddReportEntry("restart until every Deployment rolled and the status converged", time.Since(start).Round(100*time.Millisecond).String())
		watch.stop()

		set := []corev1.Sysctl{
			{Name: "net.ipv4.tcp_keepalive_time", Value: "175"},
			{Name: "net.ipv4.tcp_keepalive_intvl", Value: "30"},
			{Name: "net.ipv4.tcp_keepalive_probes", Value: "9"},
		}
		for _, d := range deployments {
			By("Deployment " + d.Name + ": its record, one template write, one new ReplicaSet")
			record, ok, err := keepalive.ParseManaged(d.Annotations)
			Expect(err).NotTo(HaveOccurred())
			Expect(ok).To(BeTrue())
			want := keepalive.Managed{Policy: "KeepalivePolicy/" + ns + "/crash", Set: set}
			if d.Name == "crash-a" {
				want.Original = []corev1.Sysctl{{Name: "net.ipv4.tcp_keepalive_time", Value: "7200"}}
			}
			Expect(record.Policy).To(Equal(want.Policy))
			Expect(record.Set).To(ConsistOf(want.Set))
			Expect(record.Original).To(Equal(want.Original))
			Expect(d.Spec.Template.Spec.SecurityContext.Sysctls).To(ConsistOf(set))
			// The generation counts the changes of the spec: the operator's
			// template writes, since nothing else changes these Deployments.
			Expect(d.Generation).To(Equal(generations[d.Name]+1), "template writes of %s", d.Name)
			Expect(replicaSets(d)).To(HaveLen(2), "ReplicaSets of %s", d.Name)
			for _, pod := range runningPods(d) {
				Expect(podValues(&pod)).To(Equal(nlbValues), "pod %s", pod.Name)
			}
		}
		Expect(watch.rolled()).To(ConsistOf("crash-a", "crash-b", "crash-c"), "a rollout went unseen")
		Expect(watch.maxConcurrent()).To(Equal(1), "--max-concurrent-rollouts=1 was exceeded")

		By("the operator serves again: two ready replicas and a leader")
		Eventually(func(g Gomega) {
			d := &appsv1.Deployment{}
			g.Expect(k8s.Get(ctx, client.ObjectKey{Namespace: operatorNamespace, Name: release}, d)).To(Succeed())
			g.Expect(d.Status.ReadyReplicas).To(BeEquivalentTo(2))
			g.Expect(leaderPod()).NotTo(BeEmpty())
		}).Should(Succeed())
		AddReportEntry("operator container restarts across the crash", operatorRestarts()-restartsBefore)

		By("removing the Deployments, then the policy, which has nothing left to restore")
		for _, d := range deployments {
			Expect(k8s.Delete(ctx, d)).To(Succeed())
		}
		Expect(k8s.Delete(ctx, policy)).To(Succeed())
		Eventually(func() error { return k8s.Get(ctx, client.ObjectKeyFromObject(policy), policy) }).
			Should(MatchError(ContainSubstring("not found")), "the finalizer stayed")
	})
})

// replicaSets are the ReplicaSets of a Deployment, one per template it has had.
func replicaSets(d *appsv1.Deployment) []appsv1.ReplicaSet {
	list := &appsv1.ReplicaSetList{}
	Expect(k8s.List(ctx, list, client.InNamespace(d.Namespace), client.MatchingLabels(d.Spec.Selector.MatchLabels))).To(Succeed())
	return list.Items
}

// operatorRestarts sums the container restarts of the operator's pods.
func operatorRestarts() int32 {
	pods := &corev1.PodList{}
	Expect(k8s.List(ctx, pods, client.InNamespace(operatorNamespace), operatorPodLabels)).To(Succeed())
	var n int32
	for _, p := range pods.Items {
		for _, c := range p.Status.ContainerStatuses {
			n += c.RestartCount
		}
	}
	return n
}
