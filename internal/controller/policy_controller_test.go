package controller

import (
	"fmt"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"github.com/onsi/gomega/gstruct"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/keepalive-operator/keepalive-operator/api/v1alpha1"
	"github.com/keepalive-operator/keepalive-operator/internal/keepalive"
	"github.com/keepalive-operator/keepalive-operator/internal/testobj"
)

var (
	nlbValues = ks(keepalive.SysctlTime, "175", keepalive.SysctlInterval, "30", keepalive.SysctlProbes, "9")
	userOwn   = ks("kernel.shm_rmid_forced", "1", keepalive.SysctlTime, "7200")
)

var _ = Describe("policy status", func() {
	DescribeTable("reports the values and conditions of a sample",
		func(file string, want v1alpha1.KeepaliveValues, governing v1alpha1.GoverningTimeout, l7 metav1.ConditionStatus) {
			ns := newNamespace(nil)
			p := sample(file, ns)
			createPolicy(p)
			Eventually(status(p)).Should(And(
				HaveField("ObservedGeneration", BeNumerically(">", 0)),
				HaveField("Keepalive", gstruct.PointTo(Equal(want))),
				HaveField("GoverningTimeout", gstruct.PointTo(Equal(governing))),
			))
			s := status(p)()
			Expect(condition(s, ConditionReady).Status).To(Equal(metav1.ConditionTrue))
			Expect(condition(s, ConditionL7ProxyInPath).Status).To(Equal(l7))
			Expect(condition(s, ConditionPodsBlocked).Status).To(Equal(metav1.ConditionFalse))
			if l7 == metav1.ConditionTrue {
				Expect(condition(s, ConditionL7ProxyInPath).Message).To(And(
					ContainSubstring("aws-alb (60 s)"), ContainSubstring("do not reset the proxy's idle timer"),
					ContainSubstring("HTTP keep-alive timeout"), ContainSubstring("application-level heartbeats")))
			}
		},
		Entry("NLB", "keepalive_v1alpha1_keepalivepolicy_nlb.yaml",
			v1alpha1.KeepaliveValues{TimeSeconds: 175, IntervalSeconds: 30, Probes: 9, DetectionSeconds: 445},
			v1alpha1.GoverningTimeout{Name: "aws-nlb", Seconds: 350}, metav1.ConditionFalse),
		Entry("ALB", "keepalive_v1alpha1_keepalivepolicy_alb.yaml",
			v1alpha1.KeepaliveValues{TimeSeconds: 30, IntervalSeconds: 10, Probes: 9, DetectionSeconds: 120},
			v1alpha1.GoverningTimeout{Name: "aws-alb", Seconds: 60}, metav1.ConditionTrue),
		Entry("Azure load balancer", "keepalive_v1alpha1_keepalivepolicy_azure_lb.yaml",
			v1alpha1.KeepaliveValues{TimeSeconds: 120, IntervalSeconds: 30, Probes: 9, DetectionSeconds: 390},
			v1alpha1.GoverningTimeout{Name: "azure-lb", Seconds: 240}, metav1.ConditionFalse),
		Entry("three hops", "keepalive_v1alpha1_keepalivepolicy_three_hops.yaml",
			v1alpha1.KeepaliveValues{TimeSeconds: 175, IntervalSeconds: 30, Probes: 5, DetectionSeconds: 325},
			v1alpha1.GoverningTimeout{Name: "aws-nat-gateway", Seconds: 350}, metav1.ConditionFalse),
	)

	It("counts compliant, stale, hostNetwork and opted-out pods", func() {
		ns := newNamespace(nil)
		create(testobj.MakePod(ns, "compliant").Sysctl(keepalive.SysctlTime, "100").Sysctl(keepalive.SysctlInterval, "30").Sysctl(keepalive.SysctlProbes, "9").Obj())
		create(testobj.MakePod(ns, "stale").Sysctl(keepalive.SysctlTime, "7200").Obj())
		create(testobj.MakePod(ns, "host").HostNetwork().Obj())
		create(testobj.MakePod(ns, "opted-out").Labels(map[string]string{keepalive.LabelInject: keepalive.InjectDisabled}).Obj())
		p := testobj.Spec().Preset(v1alpha1.PresetAWSNLB).Policy(ns, "nlb")
		createPolicy(p)
		Eventually(status(p)).Should(HaveField("Pods", gstruct.PointTo(Equal(v1alpha1.PodCounts{Matched: 4, Compliant: 1, Stale: 1, Skipped: 2}))))
		s := status(p)()
		Expect(condition(s, ConditionPodsBlocked)).To(And(
			HaveField("Status", metav1.ConditionTrue),
			HaveField("Message", Equal("1 pods cannot take the keepalive sysctls: 1 hostNetwork"))))
		Expect(condition(s, ConditionReady).Message).To(ContainSubstring("1 stale pods belong to Jobs or no workload"))
	})

	It("shows a Pod Security namespace pinned to v1.28 and a node with kubelet v1.28 in PodsBlocked", func() {
		pinned := newNamespace(map[string]string{"egress": "blocked", "pod-security.kubernetes.io/enforce": "baseline", "pod-security.kubernetes.io/enforce-version": "v1.28"})
		open := newNamespace(map[string]string{"egress": "blocked"})
		node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{GenerateName: "old-node-"}}
		create(node)
		node.Status.NodeInfo = corev1.NodeSystemInfo{KubeletVersion: "v1.28.15", KernelVersion: "6.1.0"}
		Expect(k8sClient.Status().Update(ctx, node)).To(Succeed())
		create(testobj.MakePod(pinned, "app").Obj())
		create(testobj.MakePod(open, "on-old-node").Node(node.Name).Obj())
		p := testobj.Spec().Preset(v1alpha1.PresetAWSNLB).ClusterPolicy("blocked-"+open, map[string]string{"egress": "blocked"})
		createPolicy(p)
		Eventually(status(p)).Should(HaveField("Conditions", ContainElement(And(
			HaveField("Type", ConditionPodsBlocked),
			HaveField("Status", metav1.ConditionTrue),
			HaveField("Message", Equal(fmt.Sprintf("2 pods cannot take the keepalive sysctls: 1 kubelet older than 1.29 (nodes %s); 1 Pod Security enforce-version older than v1.29 (namespaces %s). "+
				"1 schedulable node cannot take the keepalive sysctls: %s (kubelet v1.28.15); new pods that could be scheduled there are admitted without the values, "+
				"and neither are the templates of workloads whose pods could be, until those nodes are upgraded, cordoned or gone", node.Name, pinned, node.Name))),
		))))
		Expect(status(p)().Pods).To(gstruct.PointTo(Equal(v1alpha1.PodCounts{Matched: 2, Skipped: 2})))

		By("upgrading the node and the namespace's Pod Security version: the counts follow, with no pod event")
		node.Status.NodeInfo.KubeletVersion = "v1.36.3"
		Expect(k8sClient.Status().Update(ctx, node)).To(Succeed())
		labelNamespace(pinned, map[string]string{"egress": "blocked", "pod-security.kubernetes.io/enforce": "baseline", "pod-security.kubernetes.io/enforce-version": "v1.29"})
		Eventually(status(p)).Should(HaveField("Pods", gstruct.PointTo(Equal(v1alpha1.PodCounts{Matched: 2, Stale: 2}))))
		Expect(condition(status(p)(), ConditionPodsBlocked).Status).To(Equal(metav1.ConditionFalse))

		By("a namespace leaving the policy's selector, and a pod going")
		labelNamespace(pinned, nil)
		Expect(k8sClient.Delete(ctx, testobj.MakePod(open, "on-old-node").Obj())).To(Succeed())
		Eventually(status(p)).Should(HaveField("Pods", gstruct.PointTo(Equal(v1alpha1.PodCounts{}))))
	})

	It("reports an Audit policy without touching anything", func() {
		ns := newNamespace(nil)
		d := deployment(ns, "api", nil)
		p := testobj.Spec().Preset(v1alpha1.PresetAzureLB).Mode(v1alpha1.ModeAudit).Policy(ns, "trial")
		createPolicy(p)
		Eventually(status(p)).Should(HaveField("Conditions", ContainElement(And(
			HaveField("Type", ConditionReady), HaveField("Reason", ReasonAuditOnly),
			HaveField("Message", ContainSubstring("1 of 1 pods would need them"))))))
		Consistently(func() []corev1.Sysctl { return sysctlsOf(d) }, "2s").Should(BeEmpty())
	})
})

var _ = Describe("rollout", func() {
	It("patches Deployments, StatefulSets, DaemonSets and CronJobs, keeping the user's sysctls, and only reports Jobs and bare pods", func() {
		ns := newNamespace(nil)
		workloads := []client.Object{
			deployment(ns, "deploy", userOwn),
			statefulSet(ns, "sts", userOwn),
			daemonSet(ns, "ds", userOwn),
			cronJob(ns, "cron", userOwn),
		}
		j := job(ns, "once")
		create(testobj.MakePod(ns, "bare").Obj())
		p := testobj.Spec().Preset(v1alpha1.PresetAWSNLB).Policy(ns, "nlb")
		createPolicy(p)

		want := ks("kernel.shm_rmid_forced", "1", keepalive.SysctlTime, "175", keepalive.SysctlInterval, "30", keepalive.SysctlProbes, "9")
		for _, w := range workloads {
			Eventually(sysctlsOf).WithArguments(w).Should(Equal(want), "%T %s", w, w.GetName())
			_, record := templateOf(w)
			Expect(record).To(Equal(keepalive.Managed{
				Policy:   "KeepalivePolicy/" + ns + "/nlb",
				Set:      nlbValues,
				Original: ks(keepalive.SysctlTime, "7200"),
			}.String()))
		}
		Expect(sysctlsOf(j)).To(BeEmpty(), "a Job's template is never patched")
		Eventually(status(p)).Should(And(
			HaveField("Pods", gstruct.PointTo(Equal(v1alpha1.PodCounts{Matched: 6, Stale: 6}))),
			HaveField("Workloads.Patched", BeEquivalentTo(4)),
			HaveField("Workloads.Pending", BeEquivalentTo(0)),
		))
		Expect(condition(status(p)(), ConditionReady)).To(And(
			HaveField("Status", metav1.ConditionFalse), HaveField("Reason", ReasonRolloutInProgress)))
	})

	It("never touches another namespace's workloads", func() {
		owner, other := newNamespace(nil), newNamespace(nil)
		d := deployment(other, "api", userOwn)
		p := testobj.Spec().Preset(v1alpha1.PresetAWSNLB).Policy(owner, "nlb")
		createPolicy(p)
		Eventually(status(p)).Should(HaveField("Pods", gstruct.PointTo(Equal(v1alpha1.PodCounts{}))))
		Consistently(sysctlsOf, "2s").WithArguments(d).Should(Equal(userOwn))
	})

	It("patches with a cluster policy the workloads of the namespaces it selects", func() {
		selected := newNamespace(map[string]string{"egress": "cloud-nat"})
		d := deployment(selected, "api", nil)
		p := testobj.Spec().Preset(v1alpha1.PresetGCPCloudNAT).ClusterPolicy("nat-"+selected, map[string]string{"egress": "cloud-nat"})
		createPolicy(p)
		Eventually(sysctlsOf).WithArguments(d).Should(Equal(ks(keepalive.SysctlTime, "600", keepalive.SysctlInterval, "30", keepalive.SysctlProbes, "9")))
		_, record := templateOf(d)
		Expect(record).To(ContainSubstring(`"policy":"ClusterKeepalivePolicy/nat-` + selected + `"`))
	})

	It("re-patches when the values change, and restores the exact originals when the policy is deleted", func() {
		ns := newNamespace(nil)
		d := deployment(ns, "api", userOwn)
		p := testobj.Spec().Preset(v1alpha1.PresetAWSNLB).Policy(ns, "path")
		createPolicy(p)
		Eventually(sysctlsOf).WithArguments(d).Should(Equal(ks("kernel.shm_rmid_forced", "1", keepalive.SysctlTime, "175", keepalive.SysctlInterval, "30", keepalive.SysctlProbes, "9")))

		By("switching the path to an ALB")
		updatePolicy(p, func() { p.Spec.IdleTimeouts = []v1alpha1.Hop{{Preset: v1alpha1.PresetAWSALB}} })
		Eventually(sysctlsOf).WithArguments(d).Should(Equal(ks("kernel.shm_rmid_forced", "1", keepalive.SysctlTime, "30", keepalive.SysctlInterval, "10", keepalive.SysctlProbes, "9")))

		By("switching back to the NLB: the larger values replace the operator's own")
		updatePolicy(p, func() { p.Spec.IdleTimeouts = []v1alpha1.Hop{{Preset: v1alpha1.PresetAWSNLB}} })
		Eventually(sysctlsOf).WithArguments(d).Should(Equal(ks("kernel.shm_rmid_forced", "1", keepalive.SysctlTime, "175", keepalive.SysctlInterval, "30", keepalive.SysctlProbes, "9")))

		By("deleting the policy")
		Expect(k8sClient.Delete(ctx, p)).To(Succeed())
		Eventually(func() []corev1.Sysctl { return sysctlsOf(d) }).Should(Equal(userOwn))
		_, record := templateOf(d)
		Expect(record).To(BeEmpty())
	})

	It("leaves alone a Deployment's ReplicaSets, which carry copies of its record", func() {
		ns := newNamespace(nil)
		d := deployment(ns, "api", userOwn)
		p := testobj.Spec().Preset(v1alpha1.PresetAWSNLB).Policy(ns, "nlb")
		createPolicy(p)
		Eventually(sysctlsOf).WithArguments(d).ShouldNot(Equal(userOwn))
		patched, record := templateOf(d)

		By("copying the patched template and the record to a new ReplicaSet, as the Deployment controller does")
		rs := &appsv1.ReplicaSet{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "api-2",
				Annotations:     map[string]string{keepalive.AnnotationManagedSysctls: record},
				OwnerReferences: []metav1.OwnerReference{*metav1.NewControllerRef(d, appsv1.SchemeGroupVersion.WithKind("Deployment"))}},
			Spec: appsv1.ReplicaSetSpec{Selector: selector("api"), Template: makeTemplate("api", patched)},
		}
		create(rs)
		finishRollout(d)
		Eventually(status(p)).Should(HaveField("Workloads", gstruct.PointTo(Equal(v1alpha1.WorkloadCounts{Patched: 1}))))

		Expect(k8sClient.Delete(ctx, p)).To(Succeed())
		Eventually(func() []corev1.Sysctl { return sysctlsOf(d) }).Should(Equal(userOwn))
		Expect(sysctlsOf(rs)).To(Equal(patched), "the operator changed a ReplicaSet its Deployment owns")
	})

	It("restores and patches nothing with rollout: None", func() {
		ns := newNamespace(nil)
		patched := deployment(ns, "patched", userOwn)
		p := testobj.Spec().Preset(v1alpha1.PresetAWSNLB).Policy(ns, "nlb")
		createPolicy(p)
		Eventually(sysctlsOf).WithArguments(patched).ShouldNot(Equal(userOwn))

		updatePolicy(p, func() { p.Spec.Rollout = v1alpha1.RolloutNone })
		Eventually(sysctlsOf).WithArguments(patched).Should(Equal(userOwn))
		finishRollout(patched)
		fresh := deployment(ns, "fresh", nil)
		Eventually(status(p)).Should(HaveField("Conditions", ContainElement(HaveField("Reason", ReasonRolloutDisabled))))
		Consistently(sysctlsOf, "2s").WithArguments(fresh).Should(BeEmpty())
		Expect(sysctlsOf(patched)).To(Equal(userOwn))
	})
})

var _ = Describe("the rollout limit", Serial, func() {
	It("rolls at most 3 Deployments at once, patching and restoring, and drains the queue as they complete", func() {
		ns := newNamespace(nil)
		var deployments []*appsv1.Deployment
		for i := range 8 {
			deployments = append(deployments, deployment(ns, fmt.Sprintf("app-%d", i), nil))
		}
		p := testobj.Spec().Preset(v1alpha1.PresetAWSNLB).Policy(ns, "nlb")
		createPolicy(p)

		patchedNow := func() (patched []*appsv1.Deployment) {
			for _, d := range deployments {
				if _, record := templateOf(d); record != "" {
					patched = append(patched, d)
				}
			}
			return patched
		}
		finished := map[string]bool{}
		for _, want := range []int{3, 6, 8} {
			Eventually(func() int { return len(patchedNow()) }).Should(Equal(want))
			Consistently(func() int { return len(patchedNow()) }, "1500ms").Should(Equal(want), "more than %d rolling at once", maxRollouts)
			Eventually(status(p)).Should(HaveField("Workloads", gstruct.PointTo(Equal(v1alpha1.WorkloadCounts{
				Patched: int32(want), Rolling: int32(want - len(finished)), Pending: int32(8 - want)}))))
			for _, d := range patchedNow() {
				if !finished[d.Name] {
					finishRollout(d)
					finished[d.Name] = true
				}
			}
		}
		Eventually(status(p)).Should(HaveField("Conditions", ContainElement(And(
			HaveField("Type", ConditionReady), HaveField("Status", metav1.ConditionTrue)))))

		By("deleting the policy: the restores take the same slots and drain as they complete")
		Expect(k8sClient.Delete(ctx, p)).To(Succeed())
		restoredNow := func() (restored []*appsv1.Deployment) {
			for _, d := range deployments {
				if _, record := templateOf(d); record == "" {
					restored = append(restored, d)
				}
			}
			return restored
		}
		finished = map[string]bool{}
		for _, want := range []int{3, 6, 8} {
			Eventually(func() int { return len(restoredNow()) }).Should(Equal(want))
			Consistently(func() int { return len(restoredNow()) }, "1500ms").Should(Equal(want), "more than %d rolling at once", maxRollouts)
			for _, d := range restoredNow() {
				if !finished[d.Name] {
					finishRollout(d)
					finished[d.Name] = true
				}
			}
		}
		Eventually(func() error { return k8sClient.Get(ctx, client.ObjectKeyFromObject(p), p) }).Should(WithTransform(apierrors.IsNotFound, BeTrue()))
		for _, d := range deployments {
			Expect(k8sClient.Delete(ctx, d)).To(Succeed())
		}
	})
})
