package controller

import (
	"fmt"
	"slices"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"github.com/onsi/gomega/gstruct"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/keepalive-operator/keepalive-operator/api/v1alpha1"
	"github.com/keepalive-operator/keepalive-operator/internal/keepalive"
	"github.com/keepalive-operator/keepalive-operator/internal/testobj"
)

var (
	albValues   = ks(keepalive.SysctlTime, "30", keepalive.SysctlInterval, "10", keepalive.SysctlProbes, "9")
	azureValues = ks(keepalive.SysctlTime, "120", keepalive.SysctlInterval, "30", keepalive.SysctlProbes, "9")
)

// withUser puts the user's own entries around the keepalive values, where
// the operator writes them into userOwn: its time in place, the rest appended.
func withUser(values []corev1.Sysctl) []corev1.Sysctl {
	return append(ks("kernel.shm_rmid_forced", "1"), values...)
}

// policyNamed builds one of the policies the several-policy specs combine.
func policyNamed(name, ns string) client.Object {
	switch name {
	case "nlb":
		return testobj.Spec().Preset(v1alpha1.PresetAWSNLB).Policy(ns, "nlb")
	case "alb":
		return testobj.Spec().Preset(v1alpha1.PresetAWSALB).Policy(ns, "alb")
	case "azure":
		return testobj.Spec().Preset(v1alpha1.PresetAzureLB).ClusterPolicy("azure-"+ns, map[string]string{"team": ns})
	}
	panic(name)
}

// settles waits until the Deployment's template has want, then checks that
// the operator wrote it exactly writes times in all and writes no more.
func settles(d *appsv1.Deployment, want []corev1.Sysctl, writes int) {
	GinkgoHelper()
	Eventually(sysctlsOf).WithArguments(d).Should(Equal(want))
	Eventually(writesOf).WithArguments("deployments", d).Should(Equal(writes))
	Consistently(writesOf, "1500ms").WithArguments("deployments", d).Should(Equal(writes), "a template written again for the same desired state")
}

var _ = Describe("several policies on one workload", func() {
	It("writes a template once for policies applied together", func() {
		ns := newNamespace(nil)
		d := deployment(ns, "api", userOwn)
		nlb, alb := policyNamed("nlb", ns), policyNamed("alb", ns)
		createPolicy(nlb)
		createPolicy(alb)
		settles(d, mostAggressive([]client.Object{nlb, alb}), 1)
	})

	DescribeTable("converge on the most aggressive values whatever the order, one write per change of the desired state",
		func(order []string, wantAfter [][]corev1.Sysctl, writesAfter []int) {
			ns := newNamespace(nil)
			labelNamespace(ns, map[string]string{"team": ns}) // for the cluster policy
			d := deployment(ns, "api", userOwn)
			var created []client.Object
			for i, name := range order {
				p := policyNamed(name, ns)
				createPolicy(p)
				created = append(created, p)
				settles(d, wantAfter[i], writesAfter[i])
			}
			_, record := templateOf(d)
			Expect(record).To(ContainSubstring(`"original":[{"name":"net.ipv4.tcp_keepalive_time","value":"7200"}]`))

			By("deleting the policies in the order they came: each deletion moves the template to the others' values")
			writes := writesAfter[len(writesAfter)-1]
			for i, p := range created[:len(created)-1] {
				want := mostAggressive(created[i+1:])
				if !slices.Equal(want, sysctlsOf(d)) { // read before the deletion, which the operator acts on at once
					writes++
				}
				Expect(k8sClient.Delete(ctx, p)).To(Succeed())
				settles(d, want, writes)
			}
			By("deleting the last policy: the user's list exactly, and no record")
			Expect(k8sClient.Delete(ctx, created[len(created)-1])).To(Succeed())
			settles(d, userOwn, writes+1)
			_, record = templateOf(d)
			Expect(record).To(BeEmpty())
		},
		Entry("NLB then ALB", []string{"nlb", "alb"},
			[][]corev1.Sysctl{withUser(nlbValues), withUser(albValues)}, []int{1, 2}),
		Entry("ALB then NLB", []string{"alb", "nlb"},
			[][]corev1.Sysctl{withUser(albValues), withUser(albValues)}, []int{1, 1}),
		Entry("cluster policy, NLB, ALB", []string{"azure", "nlb", "alb"},
			[][]corev1.Sysctl{withUser(azureValues), withUser(azureValues), withUser(albValues)}, []int{1, 1, 2}),
		Entry("ALB, NLB, cluster policy", []string{"alb", "nlb", "azure"},
			[][]corev1.Sysctl{withUser(albValues), withUser(albValues), withUser(albValues)}, []int{1, 1, 1}),
	)
})

// mostAggressive is what the template carries under the remaining
// policies: the smallest time wins (ALB 30 s, Azure 120 s, NLB 175 s).
func mostAggressive(rest []client.Object) []corev1.Sysctl {
	for _, name := range []string{"alb", "azure-", "nlb"} {
		for _, p := range rest {
			if strings.HasPrefix(p.GetName(), name) {
				return withUser(map[string][]corev1.Sysctl{"alb": albValues, "azure-": azureValues, "nlb": nlbValues}[name])
			}
		}
	}
	return userOwn
}

func labelNamespace(name string, labels map[string]string) {
	GinkgoHelper()
	Eventually(func() error {
		ns := &corev1.Namespace{}
		if err := k8sClient.Get(ctx, client.ObjectKey{Name: name}, ns); err != nil {
			return err
		}
		ns.Labels = labels
		return k8sClient.Update(ctx, ns)
	}).Should(Succeed())
}

var _ = Describe("writes that change only what the operator owns", func() {
	It("writes nothing when the user appends an entry or reorders the list", func() {
		ns := newNamespace(nil)
		d := deployment(ns, "api", nil)
		createPolicy(policyNamed("nlb", ns))
		settles(d, nlbValues, 1)

		By("appending an entry")
		editTemplate(d, func(t *corev1.PodTemplateSpec) {
			t.Spec.SecurityContext.Sysctls = append(t.Spec.SecurityContext.Sysctls, corev1.Sysctl{Name: "kernel.shm_rmid_forced", Value: "1"})
		})
		settles(d, append(slices.Clone(nlbValues), corev1.Sysctl{Name: "kernel.shm_rmid_forced", Value: "1"}), 1)

		By("reversing the list")
		editTemplate(d, func(t *corev1.PodTemplateSpec) { slices.Reverse(t.Spec.SecurityContext.Sysctls) })
		reversed := append(ks("kernel.shm_rmid_forced", "1"), slices.Clone(nlbValues)...)
		slices.Reverse(reversed[1:])
		settles(d, reversed, 1)
	})

	It("leaves a template with an unreadable record alone, and says so once", func() {
		ns := newNamespace(nil)
		d := deployment(ns, "broken", nil)
		editObject(d, func(o client.Object) {
			o.SetAnnotations(map[string]string{keepalive.AnnotationManagedSysctls: `{"policy":`})
		})
		p := policyNamed("nlb", ns)
		createPolicy(p)
		Eventually(status(p)).Should(HaveField("Workloads.Failed", BeEquivalentTo(1)))
		Expect(condition(status(p)(), ConditionReady)).To(HaveField("Reason", ReasonWorkloadsFailed))
		Eventually(eventsOf).WithArguments(p, ReasonRecordBroken).Should(HaveLen(1))
		Eventually(eventsOf).WithArguments(d, ReasonRecordBroken).Should(HaveLen(1))
		Expect(eventsOf(p, ReasonRecordBroken)[0].Note).To(ContainSubstring("Deployment/" + ns + "/broken"))
		Consistently(writesOf, "1500ms").WithArguments("deployments", d).Should(BeZero())

		By("removing the broken annotation: the template gets the values")
		editObject(d, func(o client.Object) { o.SetAnnotations(nil) })
		settles(d, nlbValues, 1)
		Eventually(status(p)).Should(HaveField("Workloads.Failed", BeEquivalentTo(0)))
		Expect(eventsOf(p, ReasonRecordBroken)).To(HaveLen(1))
	})

	It("warns when someone removes the record of a patched template, and writes nothing", func() {
		_, d, p := patchedByNLB()
		editObject(d, func(o client.Object) { o.SetAnnotations(nil) })
		Eventually(eventsOf).WithArguments(d, ReasonRecordRemoved).Should(HaveLen(1))
		Eventually(eventsOf).WithArguments(p, ReasonRecordRemoved).Should(HaveLen(1))
		Expect(eventsOf(d, ReasonRecordRemoved)[0].Note).To(ContainSubstring("net.ipv4.tcp_keepalive_time=7200 will not be restored"))
		Consistently(writesOf, "1500ms").WithArguments("deployments", d).Should(Equal(1))
	})

	It("tells each template write once, on the workload, with the policy as the related object", func() {
		ns, d, p := patchedByNLB()
		Eventually(eventsOf).WithArguments(d, ReasonTemplatePatched).Should(HaveLen(1))
		e := eventsOf(d, ReasonTemplatePatched)[0]
		Expect(e.Note).To(And(ContainSubstring("net.ipv4.tcp_keepalive_time=175"), ContainSubstring("for KeepalivePolicy/"+ns+"/nlb")))
		Expect(e.Related).NotTo(BeNil())
		Expect([]string{e.Related.Kind, e.Related.Namespace, e.Related.Name}).To(Equal([]string{"KeepalivePolicy", ns, "nlb"}))
		// One event per written workload, not a second one on the policy.
		Expect(eventsOf(p, ReasonTemplatePatched)).To(BeEmpty())
	})
})

// editTemplate changes a Deployment's pod template as its user would.
func editTemplate(d *appsv1.Deployment, change func(*corev1.PodTemplateSpec)) {
	GinkgoHelper()
	editObject(d, func(o client.Object) { change(&o.(*appsv1.Deployment).Spec.Template) })
}

func editObject(obj client.Object, change func(client.Object)) {
	GinkgoHelper()
	Eventually(func() error {
		fresh := obj.DeepCopyObject().(client.Object)
		if err := k8sClient.Get(ctx, client.ObjectKeyFromObject(obj), fresh); err != nil {
			return err
		}
		change(fresh)
		return k8sClient.Update(ctx, fresh)
	}).Should(Succeed())
}

// patchedByNLB makes a Deployment with the user's own sysctls in a new
// namespace and an aws-nlb policy there, and waits for the one write.
func patchedByNLB() (string, *appsv1.Deployment, client.Object) {
	GinkgoHelper()
	ns := newNamespace(nil)
	d := deployment(ns, "api", userOwn)
	p := policyNamed("nlb", ns)
	createPolicy(p)
	settles(d, withUser(nlbValues), 1)
	return ns, d, p
}

// eventsOf lists the events about obj with a reason.
func eventsOf(obj client.Object, reason string) []eventsv1.Event {
	var list eventsv1.EventList
	ns := obj.GetNamespace()
	if ns == "" {
		ns = metav1.NamespaceDefault
	}
	Expect(k8sClient.List(ctx, &list, client.InNamespace(ns))).To(Succeed())
	var out []eventsv1.Event
	for _, e := range list.Items {
		if e.Regarding.Name == obj.GetName() && e.Reason == reason {
			out = append(out, e)
		}
	}
	return out
}

var _ = Describe("failures stay local", func() {
	It("patches the other workloads when an admission policy rejects one, with one Warning event", func() {
		ns := newNamespace(nil)
		vap := &admissionregistrationv1.ValidatingAdmissionPolicy{
			ObjectMeta: metav1.ObjectMeta{Name: "freeze-" + ns},
			Spec: admissionregistrationv1.ValidatingAdmissionPolicySpec{
				FailurePolicy: ptr.To(admissionregistrationv1.Fail),
				MatchConstraints: &admissionregistrationv1.MatchResources{ResourceRules: []admissionregistrationv1.NamedRuleWithOperations{{
					RuleWithOperations: admissionregistrationv1.RuleWithOperations{
						Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Update},
						Rule:       admissionregistrationv1.Rule{APIGroups: []string{"apps"}, APIVersions: []string{"v1"}, Resources: []string{"deployments"}},
					},
				}}},
				Validations: []admissionregistrationv1.Validation{{Expression: "object.metadata.name != 'rejected'", Message: "this Deployment is frozen"}},
			},
		}
		create(vap)
		binding := &admissionregistrationv1.ValidatingAdmissionPolicyBinding{
			ObjectMeta: metav1.ObjectMeta{Name: "freeze-" + ns},
			Spec: admissionregistrationv1.ValidatingAdmissionPolicyBindingSpec{
				PolicyName:        vap.Name,
				ValidationActions: []admissionregistrationv1.ValidationAction{admissionregistrationv1.Deny},
				MatchResources: &admissionregistrationv1.MatchResources{NamespaceSelector: &metav1.LabelSelector{
					MatchLabels: map[string]string{"kubernetes.io/metadata.name": ns}}},
			},
		}
		create(binding)
		first, rejected, last := deployment(ns, "a-first", nil), deployment(ns, "rejected", nil), deployment(ns, "z-last", nil)
		Eventually(func() error {
			return k8sClient.Patch(ctx, rejected.DeepCopy(), client.RawPatch(types.MergePatchType, []byte(`{"metadata":{"labels":{"probe":"1"}}}`)))
		}).Should(MatchError(ContainSubstring("this Deployment is frozen")), "the admission policy is not in force yet")

		p := policyNamed("nlb", ns)
		createPolicy(p)
		Eventually(sysctlsOf).WithArguments(first).Should(Equal(nlbValues))
		Eventually(sysctlsOf).WithArguments(last).Should(Equal(nlbValues))
		Eventually(status(p)).Should(And(HaveField("Workloads.Failed", BeEquivalentTo(1)), HaveField("Workloads.Patched", BeEquivalentTo(2))))
		Expect(condition(status(p)(), ConditionReady)).To(And(HaveField("Reason", ReasonWorkloadsFailed),
			HaveField("Message", ContainSubstring("Deployment/"+ns+"/rejected"))))
		// The write is retried with backoff; the error is told once.
		Consistently(func() int { return len(eventsOf(p, ReasonWriteFailed)) }, "2s").Should(Equal(1))
		Expect(eventsOf(p, ReasonWriteFailed)[0].Note).To(And(ContainSubstring("Deployment/"+ns+"/rejected"), ContainSubstring("this Deployment is frozen")))
		Expect(sysctlsOf(rejected)).To(BeEmpty())

		By("lifting the admission policy: the retry gets through")
		Expect(k8sClient.Delete(ctx, binding)).To(Succeed())
		Eventually(sysctlsOf, 30*time.Second).WithArguments(rejected).Should(Equal(nlbValues))
		Eventually(status(p)).Should(HaveField("Workloads.Failed", BeEquivalentTo(0)))
	})
})

var _ = Describe("the scope of the webhook", func() {
	It("never patches workloads in excluded namespaces or outside the object selector, and counts their pods as skipped", func() {
		ns := newNamespace(nil)
		scope := map[string]string{"scope-test": ns}
		labelNamespace(ns, scope)
		labelNamespace(excludedNamespace, scope)
		excluded := deployment(excludedNamespace, "api", nil)
		outside := &appsv1.Deployment{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "outside"},
			Spec:       appsv1.DeploymentSpec{Selector: selector("outside"), Template: makeTemplate("outside", nil)},
		}
		outside.Spec.Template.Labels[excludedLabel] = "true"
		create(outside)
		create(testobj.MakePod(ns, "outside-1").Labels(map[string]string{"app": "outside", excludedLabel: "true"}).Obj())
		inside := deployment(ns, "inside", nil)

		p := testobj.Spec().Preset(v1alpha1.PresetAWSNLB).ClusterPolicy("scope-"+ns, scope)
		createPolicy(p)
		Eventually(sysctlsOf).WithArguments(inside).Should(Equal(nlbValues))
		Eventually(status(p)).Should(HaveField("Pods", gstruct.PointTo(Equal(v1alpha1.PodCounts{Matched: 3, Stale: 1, Skipped: 2}))))
		Consistently(func() int { return writesOf("deployments", excluded) + writesOf("deployments", outside) }, "1500ms").Should(BeZero())
	})
})

var _ = Describe("quiet when nothing changes", func() {
	It("sends no request for pod label changes no selector reads, nor for namespace annotations", func() {
		ns := newNamespace(nil)
		d := deployment(ns, "api", nil)
		p := policyNamed("nlb", ns)
		createPolicy(p)
		settles(d, nlbValues, 1)
		finishRollout(d)
		Eventually(status(p)).Should(HaveField("Conditions", ContainElement(And(HaveField("Type", ConditionReady), HaveField("Reason", ReasonApplied)))))
		// Let the passes the rollout caused finish.
		var before int
		Eventually(func() []string {
			before = len(operatorRequests())
			time.Sleep(time.Second)
			return requestsSince(before)
		}).Should(BeEmpty())

		pod := &corev1.Pod{}
		Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: "api-1-a"}, pod)).To(Succeed())
		for i := range 10 {
			editObject(pod, func(o client.Object) {
				l := o.GetLabels()
				l["noise"] = fmt.Sprint(i)
				o.SetLabels(l)
			})
		}
		editObject(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, func(o client.Object) {
			o.SetAnnotations(map[string]string{"owner": "someone"})
		})
		Consistently(func() []string { return requestsSince(before) }, "2s").Should(BeEmpty())
	})
})

var _ = Describe("rollout slots", Serial, func() {
	It("takes no slot for paused, OnDelete and partitioned workloads, and frees a stuck StatefulSet's at its deadline", func() {
		ns, other, stuckNS := newNamespace(nil), newNamespace(nil), newNamespace(nil)
		// Each with a stale pod, as the controllers would have made them.
		var waiting []client.Object
		for i := range 5 {
			d := deployment(ns, fmt.Sprintf("paused-%d", i), nil)
			editObject(d, func(o client.Object) { o.(*appsv1.Deployment).Spec.Paused = true })
			waiting = append(waiting, d)
		}
		onDelete := statefulSet(ns, "on-delete", nil)
		editObject(onDelete, func(o client.Object) {
			o.(*appsv1.StatefulSet).Spec.UpdateStrategy = appsv1.StatefulSetUpdateStrategy{Type: appsv1.OnDeleteStatefulSetStrategyType}
		})
		partitioned := statefulSet(ns, "partitioned", nil)
		editObject(partitioned, func(o client.Object) {
			o.(*appsv1.StatefulSet).Spec.UpdateStrategy.RollingUpdate = &appsv1.RollingUpdateStatefulSetStrategy{Partition: ptr.To[int32](1)}
		})
		dsOnDelete := daemonSet(ns, "ds-on-delete", nil)
		editObject(dsOnDelete, func(o client.Object) {
			o.(*appsv1.DaemonSet).Spec.UpdateStrategy = appsv1.DaemonSetUpdateStrategy{Type: appsv1.OnDeleteDaemonSetStrategyType}
		})
		waiting = append(waiting, onDelete, partitioned, dsOnDelete)
		stuck := statefulSet(stuckNS, "stuck", nil)
		var normal []*appsv1.Deployment
		for i := range maxRollouts {
			normal = append(normal, deployment(other, fmt.Sprintf("app-%d", i), nil))
		}
		pNS := policyNamed("nlb", ns)
		createPolicy(pNS)
		for _, o := range waiting {
			Eventually(sysctlsOf).WithArguments(o).Should(Equal(nlbValues), "%T %s", o, o.GetName())
		}
		Eventually(status(pNS)).Should(HaveField("Workloads", gstruct.PointTo(Equal(v1alpha1.WorkloadCounts{Patched: 8, WaitingForOwner: 8}))))
		Expect(condition(status(pNS)(), ConditionReady).Message).To(ContainSubstring("8 of them wait for their owner"))

		By("rolling workloads in other namespaces still get the slots")
		pStuck := policyNamed("nlb", stuckNS)
		createPolicy(pStuck)
		Eventually(sysctlsOf).WithArguments(stuck).Should(Equal(nlbValues))
		pOther := policyNamed("nlb", other)
		createPolicy(pOther)
		patchedNow := func() int {
			n := 0
			for _, d := range normal {
				if _, rec := templateOf(d); rec != "" {
					n++
				}
			}
			return n
		}
		Eventually(patchedNow).Should(Equal(maxRollouts - 1))
		Eventually(status(pOther)).Should(HaveField("Workloads.Pending", BeEquivalentTo(1)))

		By("the StatefulSet that makes no progress frees its slot at the deadline")
		Eventually(eventsOf, 20*time.Second).WithArguments(stuck, ReasonRolloutStuck).Should(HaveLen(1))
		Eventually(eventsOf).WithArguments(pStuck, ReasonRolloutStuck).Should(HaveLen(1))
		Eventually(patchedNow).Should(Equal(maxRollouts))

		By("deleting the first policy: the waiting workloads are restored without slots, and the policy goes")
		Expect(k8sClient.Delete(ctx, pNS)).To(Succeed())
		for _, o := range waiting {
			Eventually(sysctlsOf).WithArguments(o).Should(BeEmpty(), "%T %s", o, o.GetName())
		}
		Eventually(func() bool { return apierrors.IsNotFound(k8sClient.Get(ctx, client.ObjectKeyFromObject(pNS), pNS)) }).Should(BeTrue())
		// Before the other policies go: their restores would wait for rollouts nobody finishes.
		for _, o := range append([]client.Object{stuck}, normal[0], normal[1], normal[2]) {
			Expect(k8sClient.Delete(ctx, o)).To(Succeed())
		}
	})

	It("holds the limit across a new leader, which counts the rollouts under way before it patches", func() {
		ns := newNamespace(nil)
		var ds []*appsv1.Deployment
		for i := range maxRollouts + 1 {
			ds = append(ds, deployment(ns, fmt.Sprintf("app-%d", i), nil))
		}
		patched := func() (out []*appsv1.Deployment) {
			for _, d := range ds {
				if _, rec := templateOf(d); rec != "" {
					out = append(out, d)
				}
			}
			return out
		}
		p := policyNamed("nlb", ns)
		createPolicy(p)
		Eventually(func() int { return len(patched()) }).Should(Equal(maxRollouts))

		By("a new leader")
		stopManager()
		startManager()
		Consistently(func() int { return len(patched()) }, "2s").Should(Equal(maxRollouts), "the new leader exceeded the limit")
		finishRollout(patched()[0])
		Eventually(func() int { return len(patched()) }).Should(Equal(maxRollouts + 1))
		for _, d := range ds {
			Expect(k8sClient.Delete(ctx, d)).To(Succeed()) // before the policy: its restores would wait for rollouts nobody finishes
		}
	})
})
