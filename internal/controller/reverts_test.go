package controller

import (
	"encoding/json"
	"testing"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	appsv1ac "k8s.io/client-go/applyconfigurations/apps/v1"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	metav1ac "k8s.io/client-go/applyconfigurations/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/keepalive-operator/keepalive-operator/api/v1alpha1"
	"github.com/keepalive-operator/keepalive-operator/internal/testobj"
)

// gitDeployment is the Deployment "api" as a GitOps tool applies it from
// Git.
func gitDeployment(ns string, sysctls []corev1.Sysctl) *appsv1ac.DeploymentApplyConfiguration {
	const name = "api"
	spec := corev1ac.PodSpec().WithContainers(corev1ac.Container().WithName("app").WithImage("app:1"))
	if len(sysctls) > 0 {
		sc := corev1ac.PodSecurityContext()
		for _, s := range sysctls {
			sc = sc.WithSysctls(corev1ac.Sysctl().WithName(s.Name).WithValue(s.Value))
		}
		spec = spec.WithSecurityContext(sc)
	}
	return appsv1ac.Deployment(name, ns).WithSpec(appsv1ac.DeploymentSpec().
		WithSelector(metav1ac.LabelSelector().WithMatchLabels(map[string]string{"app": name})).
		WithTemplate(corev1ac.PodTemplateSpec().WithLabels(map[string]string{"app": name}).WithSpec(spec)))
}

// applyFromGit applies the manifest with server-side apply as the named
// field manager; force takes over fields others own, as self-heal does.
func applyFromGit(manifest *appsv1ac.DeploymentApplyConfiguration, manager string, force bool) error {
	opts := []client.ApplyOption{client.FieldOwner(manager)}
	if force {
		opts = append(opts, client.ForceOwnership)
	}
	return k8sClient.Apply(ctx, manifest, opts...)
}

// gitOpsDeployment applies the Deployment "api" from Git and gives it a
// ReplicaSet and one stale pod, as the controller-manager would.
func gitOpsDeployment(ns, manager string, sysctls []corev1.Sysctl) *appsv1.Deployment {
	const name = "api"
	Expect(applyFromGit(gitDeployment(ns, sysctls), manager, true)).To(Succeed())
	d := &appsv1.Deployment{}
	Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, d)).To(Succeed())
	DeferCleanup(func() { Expect(client.IgnoreNotFound(k8sClient.Delete(ctx, d))).To(Succeed()) })
	replicaSetOf(d, sysctls)
	return d
}

// revertClientSide sends what kubectl apply (client-side) sends when the
// manifest's sysctls differ from the live ones: a strategic merge patch
// that sets the list whole.
func revertClientSide(d *appsv1.Deployment, sysctls []corev1.Sysctl) {
	raw, err := json.Marshal(map[string]any{"spec": map[string]any{"template": map[string]any{"spec": map[string]any{
		"securityContext": map[string]any{"sysctls": sysctls}}}}})
	Expect(err).NotTo(HaveOccurred())
	Expect(k8sClient.Patch(ctx, d.DeepCopy(), client.RawPatch(types.StrategicMergePatchType, raw), client.FieldOwner("kubectl-client-side-apply"))).To(Succeed())
}

var _ = Describe("another writer reverting the operator's template change", func() {
	gitSysctls := ks("kernel.shm_rmid_forced", "1")

	// fight lets the writer revert the operator's change three times: the
	// operator writes after the first two and stops at the third.
	fight := func(d *appsv1.Deployment, revert func()) {
		GinkgoHelper()
		for i := 1; i <= 3; i++ {
			finishRollout(d)
			revert()
			if i < 3 {
				Eventually(writesOf).WithArguments("deployments", d).Should(Equal(i+1), "the operator writes again after revert %d", i)
				Eventually(sysctlsOf).WithArguments(d).Should(Equal(withUser(nlbValues)))
			}
		}
		Consistently(writesOf, "2s").WithArguments("deployments", d).Should(Equal(3), "a template written after its third revert")
		Expect(sysctlsOf(d)).To(Equal(gitSysctls), "the writer's version stays")
	}

	It("leaves a workload alone after three server-side applies with force, names the writer, counts it, and clears once the values are in Git", func() {
		ns := newNamespace(nil)
		d := gitOpsDeployment(ns, "argocd-controller", gitSysctls)
		p := testobj.Spec().Preset(v1alpha1.PresetAWSNLB).Policy(ns, "nlb")
		createPolicy(p)
		settles(d, withUser(nlbValues), 1)

		By("re-applying the unchanged manifest without force conflicts on the list the operator took over")
		err := applyFromGit(gitDeployment(ns, gitSysctls), "argocd-controller", false)
		Expect(apierrors.IsConflict(err)).To(BeTrue(), "got %v", err)
		Expect(err.Error()).To(ContainSubstring(".spec.template.spec.securityContext.sysctls"))
		Expect(err.Error()).To(ContainSubstring(FieldOwner))

		fight(d, func() {
			Expect(applyFromGit(gitDeployment(ns, gitSysctls), "argocd-controller", true)).To(Succeed())
		})

		Eventually(func() []string {
			var notes []string
			for _, obj := range []client.Object{d, p} {
				for _, e := range eventsOf(obj, ReasonTemplateReverted) {
					notes = append(notes, e.Type+": "+e.Note)
				}
			}
			return notes
		}).Should(ConsistOf(
			And(HavePrefix("Warning: Deployment/"+ns+"/api: argocd-controller (Apply) reverted"), ContainSubstring("rollout: None"), ContainSubstring("ignore")),
			HavePrefix("Warning: Deployment/"+ns+"/api: argocd-controller (Apply) reverted"),
		), "one Warning on the workload and one on the policy")
		Eventually(func() int32 { return ptrWorkloads(status(p)()).Reverted }).Should(Equal(int32(1)))
		Eventually(func() string { return condition(status(p)(), ConditionReady).Reason }).Should(Equal(ReasonTemplatesReverted))

		By("the values put into Git make the template compliant: the count clears, and nothing is written")
		Expect(applyFromGit(gitDeployment(ns, withUser(nlbValues)), "argocd-controller", true)).To(Succeed())
		Eventually(func() int32 { return ptrWorkloads(status(p)()).Reverted }).Should(Equal(int32(0)))
		Consistently(writesOf, "1500ms").WithArguments("deployments", d).Should(Equal(3))
		Expect(applyFromGit(gitDeployment(ns, withUser(nlbValues)), "argocd-controller", false)).To(Succeed(), "re-applying Git conflicts no more")
	})

	It("counts client-side apply reverts too, and writes again once the policy changes", func() {
		ns := newNamespace(nil)
		d := gitOpsDeployment(ns, "kubectl-client-side-apply", gitSysctls)
		p := testobj.Spec().Preset(v1alpha1.PresetAWSNLB).Policy(ns, "nlb")
		createPolicy(p)
		settles(d, withUser(nlbValues), 1)

		fight(d, func() { revertClientSide(d, gitSysctls) })
		Eventually(func() []string {
			var notes []string
			for _, e := range eventsOf(d, ReasonTemplateReverted) {
				notes = append(notes, e.Note)
			}
			return notes
		}).Should(ConsistOf(HavePrefix("Deployment/" + ns + "/api: kubectl-client-side-apply (Update) reverted")))
		Eventually(func() int32 { return ptrWorkloads(status(p)()).Reverted }).Should(Equal(int32(1)))

		By("a policy change starts over: one more write")
		updatePolicy(p, func() { p.Spec.Probes = 5 })
		Eventually(func() int32 { return ptrWorkloads(status(p)()).Reverted }).Should(Equal(int32(0)))
		Eventually(writesOf).WithArguments("deployments", d).Should(Equal(4))
		Eventually(sysctlsOf).WithArguments(d).Should(ContainElement(corev1.Sysctl{Name: "net.ipv4.tcp_keepalive_probes", Value: "5"}))
	})

	It("keeps the values through the syncs of Argo CD with RespectIgnoreDifferences: the live list is applied back", func() {
		ns := newNamespace(nil)
		d := gitOpsDeployment(ns, "argocd-controller", gitSysctls)
		p := testobj.Spec().Preset(v1alpha1.PresetAWSNLB).Policy(ns, "nlb")
		createPolicy(p)
		settles(d, withUser(nlbValues), 1)
		for _, image := range []string{"app:2", "app:3", "app:4"} {
			finishRollout(d)
			// The ignored field is taken from the live object before the sync applies.
			m := gitDeployment(ns, sysctlsOf(d))
			m.Spec.Template.Spec.Containers[0].WithImage(image)
			Expect(applyFromGit(m, "argocd-controller", true)).To(Succeed())
		}
		Consistently(writesOf, "1500ms").WithArguments("deployments", d).Should(Equal(1))
		Expect(sysctlsOf(d)).To(Equal(withUser(nlbValues)))
		Expect(ptrWorkloads(status(p)()).Reverted).To(BeZero())
	})

	It("is not fooled by a template the user changes elsewhere: the values stay, nothing is counted", func() {
		ns := newNamespace(nil)
		d := gitOpsDeployment(ns, "argocd-controller", nil)
		p := testobj.Spec().Preset(v1alpha1.PresetAWSNLB).Policy(ns, "nlb")
		createPolicy(p)
		settles(d, nlbValues, 1)
		for _, image := range []string{"app:2", "app:3", "app:4"} {
			finishRollout(d)
			m := gitDeployment(ns, nil)
			m.Spec.Template.Spec.Containers[0].WithImage(image) // a manifest without sysctls leaves them to the operator
			Expect(applyFromGit(m, "argocd-controller", false)).To(Succeed())
		}
		Consistently(writesOf, "1500ms").WithArguments("deployments", d).Should(Equal(1))
		Expect(sysctlsOf(d)).To(Equal(nlbValues))
		Expect(ptrWorkloads(status(p)()).Reverted).To(BeZero())
	})
})

func ptrWorkloads(s v1alpha1.KeepalivePolicyStatus) v1alpha1.WorkloadCounts {
	if s.Workloads == nil {
		return v1alpha1.WorkloadCounts{}
	}
	return *s.Workloads
}

func TestRevertedBy(t *testing.T) {
	at := func(min int) *metav1.Time { return &metav1.Time{Time: time.Date(2026, 1, 1, 0, min, 0, 0, time.UTC)} }
	entry := func(manager string, op metav1.ManagedFieldsOperationType, min int, fields string) metav1.ManagedFieldsEntry {
		return metav1.ManagedFieldsEntry{Manager: manager, Operation: op, Time: at(min), FieldsType: "FieldsV1", FieldsV1: metav1.NewFieldsV1(fields)}
	}
	sysctls := `{"f:spec":{"f:template":{"f:spec":{"f:securityContext":{"f:sysctls":{}}}}}}`
	image := `{"f:spec":{"f:template":{"f:spec":{"f:containers":{}}}}}`
	cases := map[string]struct {
		kind   string
		fields []metav1.ManagedFieldsEntry
		want   string
	}{
		"the owner of the list": {kindDeployment, []metav1.ManagedFieldsEntry{
			entry(FieldOwner, metav1.ManagedFieldsOperationUpdate, 1, sysctls), entry("argocd-controller", metav1.ManagedFieldsOperationApply, 2, sysctls),
		}, "argocd-controller (Apply)"},
		"the operator itself is never the writer": {kindDeployment, []metav1.ManagedFieldsEntry{
			entry(FieldOwner, metav1.ManagedFieldsOperationUpdate, 5, sysctls),
		}, ""},
		"the list removed: the last other writer of the spec": {kindDeployment, []metav1.ManagedFieldsEntry{
			entry("helm", metav1.ManagedFieldsOperationUpdate, 1, image), entry("kustomize-controller", metav1.ManagedFieldsOperationApply, 3, image),
			entry("kube-controller-manager", metav1.ManagedFieldsOperationUpdate, 4, `{"f:status":{}}`),
		}, "kustomize-controller (Apply)"},
		"a CronJob's list": {kindCronJob, []metav1.ManagedFieldsEntry{
			entry("flux", metav1.ManagedFieldsOperationApply, 1, `{"f:spec":{"f:jobTemplate":{"f:spec":{"f:template":{"f:spec":{"f:securityContext":{"f:sysctls":{}}}}}}}}`),
		}, "flux (Apply)"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			if got := revertedBy(tc.fields, tc.kind); got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func TestRevertsCount(t *testing.T) {
	key := workloadKey{Kind: kindDeployment, Namespace: "shop", Name: "api"}
	obj := func(uid string, gen int64) client.Object {
		return &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{UID: types.UID(uid), Generation: gen}}
	}
	values := ks("net.ipv4.tcp_keepalive_time", "175")
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	r := newReverts()
	r.wrote(key, obj("a", 2), values, "p", 1)
	if alone, _ := r.observe(key, obj("a", 1), values, "p", 1, now); alone {
		t.Fatal("a cache behind the operator's write counted as a revert")
	}
	gen := int64(2)
	for i := 1; i <= 3; i++ {
		gen++ // a scale, say, while the template is as the operator wrote it
		if _, was := r.settled(key, obj("a", gen), values); was || r.m[key] == nil {
			t.Fatalf("a spec change that kept the operator's values cleared the count before revert %d", i)
		}
		gen++ // the writer reverts
		alone, newly := r.observe(key, obj("a", gen), values, "p", 1, now.Add(time.Duration(i)*time.Minute))
		if alone != (i == 3) || newly != (i == 3) {
			t.Fatalf("revert %d: alone %v newly %v", i, alone, newly)
		}
		if i < 3 {
			gen++ // the operator writes again
			r.wrote(key, obj("a", gen), values, "p", 1)
		}
	}
	if alone, newly := r.observe(key, obj("a", gen), values, "p", 1, now.Add(time.Hour)); !alone || newly {
		t.Errorf("left alone once told: alone %v newly %v", alone, newly)
	}
	if n := r.count("p"); n != 1 {
		t.Errorf("count = %d, want 1", n)
	}
	if p, was := r.settled(key, obj("a", gen+1), values); !was || p != "p" || r.count("p") != 0 {
		t.Errorf("the values put back by someone else: settled %q %v, count %d; want the count cleared", p, was, r.count("p"))
	}

	r = newReverts()
	r.wrote(key, obj("a", 2), values, "p", 1)
	for i, gap := range []time.Duration{0, 40 * time.Minute, 80 * time.Minute} {
		alone, _ := r.observe(key, obj("a", int64(3+2*i)), values, "p", 1, now.Add(gap))
		if alone {
			t.Fatalf("reverts more than an hour apart left the workload alone at %s", gap)
		}
		r.wrote(key, obj("a", int64(4+2*i)), values, "p", 1)
	}
	if r.count("p") != 0 {
		t.Errorf("count = %d, want 0", r.count("p"))
	}
}
