package webhook

import (
	"fmt"
	"strings"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/keepalive-operator/keepalive-operator/api/v1alpha1"
	"github.com/keepalive-operator/keepalive-operator/internal/testobj"
)

// createNode registers a node with the kubelet and kernel given, as a
// kubelet would, and deletes it when the spec ends.
func createNode(name, pool, kubelet, kernel string) *corev1.Node {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"pool": pool}}}
	Expect(k8sClient.Create(ctx, n)).To(Succeed())
	n.Status.NodeInfo = corev1.NodeSystemInfo{KubeletVersion: kubelet, KernelVersion: kernel}
	Expect(k8sClient.Status().Update(ctx, n)).To(Succeed())
	DeferCleanup(func() {
		Expect(client.IgnoreNotFound(k8sClient.Delete(ctx, n))).To(Succeed())
		Eventually(oldNodeNames).ShouldNot(ContainElement(name))
	})
	return n
}

func oldNodeNames() []string {
	var names []string
	for _, n := range store.OldNodes() {
		names = append(names, n.Name)
	}
	return names
}

var _ = Describe("the pod webhook during an upgrade window", func() {
	It("leaves alone the pods that could land on a node too old for the sysctls, until it is cordoned or gone", func() {
		ns := newNamespace(nil)
		createPolicy(testobj.Spec().Preset(v1alpha1.PresetAWSNLB).Policy(ns, "path"))
		createNode("current-1", "new", "v1.36.3", "6.12.0")
		old := createNode("old-1", "old", "v1.28.5-eks-1234", "6.1.0")
		legacy := createNode("legacy-1", "legacy", "v1.36.3", "4.4.0-210-generic")
		Eventually(oldNodeNames).Should(ConsistOf("old-1", "legacy-1"))

		By("a pod that may land anywhere is left alone, and its creator told why")
		pod := createPod(testobj.MakePod(ns, "anywhere").Obj())
		Expect(sysctlsOf(pod)).To(BeEmpty())
		w := strings.Join(warnings.take(), "\n")
		Expect(w).To(ContainSubstring("could be scheduled on node legacy-1, whose kernel 4.4.0-210-generic has no keepalive sysctls"))
		Expect(w).To(ContainSubstring("(and 1 more such nodes)"))

		By("pods pinned away from the old nodes get the values")
		pinned := testobj.MakePod(ns, "by-name").Obj()
		pinned.Spec.NodeName = "current-1"
		Expect(sysctlsOf(createPod(pinned))).To(Equal(keepaliveSysctls("175", "30")))
		selected := testobj.MakePod(ns, "by-selector").Obj()
		selected.Spec.NodeSelector = map[string]string{"pool": "new"}
		Expect(sysctlsOf(createPod(selected))).To(Equal(keepaliveSysctls("175", "30")))
		affine := testobj.MakePod(ns, "by-affinity").Obj()
		affine.Spec.Affinity = &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{
			NodeSelectorTerms: []corev1.NodeSelectorTerm{{MatchExpressions: []corev1.NodeSelectorRequirement{
				{Key: "pool", Operator: corev1.NodeSelectorOpNotIn, Values: []string{"old", "legacy"}}}}}}}}
		Expect(sysctlsOf(createPod(affine))).To(Equal(keepaliveSysctls("175", "30")))

		By("a pod pinned to an old node is left alone, and so is one whose selector matches one")
		onOld := testobj.MakePod(ns, "on-old").Obj()
		onOld.Spec.NodeName = "old-1"
		Expect(sysctlsOf(createPod(onOld))).To(BeEmpty())
		Expect(warnings.take()).To(ContainElement(ContainSubstring("node old-1, whose kubelet v1.28.5-eks-1234 treats the keepalive sysctls as unsafe")))
		toOld := testobj.MakePod(ns, "to-old").Obj()
		toOld.Spec.NodeSelector = map[string]string{"pool": "old"}
		Expect(sysctlsOf(createPod(toOld))).To(BeEmpty())

		By("once the old kubelet's node is cordoned and the old kernel's node gone, new pods get the values again, with no restart")
		old.Spec.Unschedulable = true
		Expect(k8sClient.Update(ctx, old)).To(Succeed())
		Expect(k8sClient.Delete(ctx, legacy)).To(Succeed())
		Eventually(func() []string {
			p := testobj.MakePod(ns, "").Obj()
			p.GenerateName, p.Name = "after-", ""
			got := sysctlsOf(createPod(p))
			return append(warnings.take(), fmt.Sprint(got))
		}).Should(Equal([]string{fmt.Sprint(keepaliveSysctls("175", "30"))}), "the values and no warning")

		By("a DaemonSet's pod, which tolerates the cordon, could still land on the cordoned node: left alone")
		daemon := testobj.MakePod(ns, "daemon").Obj()
		daemon.Spec.Tolerations = []corev1.Toleration{{Key: corev1.TaintNodeUnschedulable, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule}}
		Expect(sysctlsOf(createPod(daemon))).To(BeEmpty())
		Expect(warnings.take()).To(ContainElement(ContainSubstring("node old-1,")))

		By("a pod pinned to the cordoned node by name still could land there: left alone")
		stillOld := testobj.MakePod(ns, "still-old").Obj()
		stillOld.Spec.NodeName = "old-1"
		Expect(sysctlsOf(createPod(stillOld))).To(BeEmpty())
	})
})
