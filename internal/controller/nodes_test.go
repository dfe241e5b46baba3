package controller

import (
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/keepalive-operator/keepalive-operator/api/v1alpha1"
	"github.com/keepalive-operator/keepalive-operator/internal/testobj"
)

var _ = Describe("an upgrade window with a node too old for the sysctls", func() {
	It("patches only the templates whose pods cannot land there, names the node in PodsBlocked, and patches the rest once it is cordoned", func() {
		node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "old-1", Labels: map[string]string{"pool": "old"}}}
		create(node)
		node.Status.NodeInfo = corev1.NodeSystemInfo{KubeletVersion: "v1.28.5-eks-1234", KernelVersion: "6.1.0"}
		Expect(k8sClient.Status().Update(ctx, node)).To(Succeed())
		Eventually(func() int { return len(nodes.OldNodes()) }).Should(Equal(1))

		ns := newNamespace(nil)
		free := deployment(ns, "free", nil)
		pinned := deployment(ns, "pinned", nil)
		Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(pinned), pinned)).To(Succeed())
		pinned.Spec.Template.Spec.NodeSelector = map[string]string{"pool": "new"}
		Expect(k8sClient.Update(ctx, pinned)).To(Succeed())
		p := testobj.Spec().Preset(v1alpha1.PresetAWSNLB).Policy(ns, "nlb")
		createPolicy(p)

		settles(pinned, nlbValues, 1)
		Eventually(func() metav1.Condition { return condition(status(p)(), ConditionPodsBlocked) }).Should(And(
			HaveField("Status", metav1.ConditionTrue),
			HaveField("Message", ContainSubstring("1 schedulable node cannot take the keepalive sysctls: old-1 (kubelet v1.28.5-eks-1234)")),
		))
		Consistently(writesOf, "1500ms").WithArguments("deployments", free).Should(BeZero(), "a template whose pods may land on the old node is patched")

		By("cordoning the node lets the operator patch the other template, with no restart")
		Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(node), node)).To(Succeed())
		node.Spec.Unschedulable = true
		Expect(k8sClient.Update(ctx, node)).To(Succeed())
		settles(free, nlbValues, 1)
		Eventually(func() string { return condition(status(p)(), ConditionPodsBlocked).Reason }).Should(Equal(ReasonNoneBlocked))
		finishRollout(free)
		finishRollout(pinned)
		Expect(writesOf("deployments", pinned)).To(Equal(1))
	})
})
