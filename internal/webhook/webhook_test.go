package webhook

import (
	"context"
	"slices"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/keepalive-operator/keepalive-operator/api/v1alpha1"
	"github.com/keepalive-operator/keepalive-operator/internal/keepalive"
	"github.com/keepalive-operator/keepalive-operator/internal/testobj"
)

var ctx = context.Background()

func refOf(obj client.Object) keepalive.Ref {
	switch obj.(type) {
	case *v1alpha1.KeepalivePolicy:
		return keepalive.Ref{Kind: keepalive.KindKeepalivePolicy, Namespace: obj.GetNamespace(), Name: obj.GetName()}
	default:
		return keepalive.Ref{Kind: keepalive.KindClusterKeepalivePolicy, Name: obj.GetName()}
	}
}

func storeHas(ref keepalive.Ref) bool {
	_, _, namespaced, cluster := store.Lookup(ref.Namespace)
	return slices.ContainsFunc(slices.Concat(namespaced, cluster), func(p keepalive.Policy) bool { return p.Ref == ref })
}

// createPolicy creates a policy, waits until the webhook knows it, and
// deletes it when the spec ends.
func createPolicy(obj client.Object) {
	Expect(k8sClient.Create(ctx, obj)).To(Succeed(), describeObj(obj))
	ref := refOf(obj)
	Eventually(storeHas).WithArguments(ref).Should(BeTrue(), "the webhook never saw %s", ref)
	DeferCleanup(func() {
		Expect(k8sClient.Delete(ctx, obj)).To(Succeed())
		Eventually(storeHas).WithArguments(ref).Should(BeFalse())
	})
}

// createPod creates the pod and returns it as the API server stored it.
func createPod(p *corev1.Pod, opts ...client.CreateOption) *corev1.Pod {
	warnings.take()
	Expect(k8sClient.Create(ctx, p, opts...)).To(Succeed(), describeObj(p))
	return p
}

func sysctlsOf(p *corev1.Pod) map[string]string {
	if p.Spec.SecurityContext == nil {
		return nil
	}
	out := map[string]string{}
	for _, s := range p.Spec.SecurityContext.Sysctls {
		out[s.Name] = s.Value
	}
	return out
}

// keepaliveSysctls are the three sysctls with the default 9 probes.
func keepaliveSysctls(t, i string) map[string]string {
	return map[string]string{keepalive.SysctlTime: t, keepalive.SysctlInterval: i, keepalive.SysctlProbes: "9"}
}

var _ = Describe("the pod webhook", func() {
	DescribeTable("injects a policy's values into new pods",
		func(preset v1alpha1.Preset, want map[string]string) {
			ns := newNamespace(nil)
			createPolicy(testobj.Spec().Preset(preset).Policy(ns, "path"))
			pod := createPod(testobj.MakePod(ns, "app").Obj())
			Expect(sysctlsOf(pod)).To(Equal(want))
			Expect(pod.Annotations).To(HaveKeyWithValue(keepalive.AnnotationPolicy, "KeepalivePolicy/"+ns+"/path"))
			Expect(warnings.take()).To(BeEmpty())
		},
		Entry("behind an NLB", v1alpha1.PresetAWSNLB, keepaliveSysctls("175", "30")),
		Entry("behind an ALB", v1alpha1.PresetAWSALB, keepaliveSysctls("30", "10")),
		Entry("behind an Azure load balancer", v1alpha1.PresetAzureLB, keepaliveSysctls("120", "30")),
	)

	It("applies the policy with the smallest time when two match, and names it", func() {
		ns := newNamespace(nil)
		createPolicy(testobj.Spec().Preset(v1alpha1.PresetAWSNLB).Policy(ns, "nlb"))
		createPolicy(testobj.Spec().Preset(v1alpha1.PresetAWSALB).PodLabels(map[string]string{"app": "web"}).Policy(ns, "alb"))
		pod := createPod(testobj.MakePod(ns, "web").Labels(map[string]string{"app": "web"}).Obj())
		Expect(sysctlsOf(pod)).To(Equal(keepaliveSysctls("30", "10")))
		Expect(pod.Annotations).To(HaveKeyWithValue(keepalive.AnnotationPolicy, "KeepalivePolicy/"+ns+"/alb"))

		other := createPod(testobj.MakePod(ns, "api").Labels(map[string]string{"app": "api"}).Obj())
		Expect(other.Annotations).To(HaveKeyWithValue(keepalive.AnnotationPolicy, "KeepalivePolicy/"+ns+"/nlb"))
	})

	It("replaces a larger user value and records it, and keeps a smaller one", func() {
		ns := newNamespace(nil)
		createPolicy(testobj.Spec().Preset(v1alpha1.PresetAWSNLB).Policy(ns, "nlb"))
		pod := createPod(testobj.MakePod(ns, "db-client").
			Sysctl("kernel.shm_rmid_forced", "1").
			Sysctl(keepalive.SysctlTime, "7200").
			Sysctl(keepalive.SysctlProbes, "3").Obj())
		Expect(pod.Spec.SecurityContext.Sysctls).To(Equal([]corev1.Sysctl{
			{Name: "kernel.shm_rmid_forced", Value: "1"},
			{Name: keepalive.SysctlTime, Value: "175"},
			{Name: keepalive.SysctlProbes, Value: "3"},
			{Name: keepalive.SysctlInterval, Value: "30"},
		}))
		Expect(pod.Annotations).To(HaveKeyWithValue(keepalive.AnnotationOriginalSysctls, `[{"name":"net.ipv4.tcp_keepalive_time","value":"7200"}]`))
		Expect(warnings.take()).To(ConsistOf(ContainSubstring("replaced net.ipv4.tcp_keepalive_time=7200 with net.ipv4.tcp_keepalive_time=175")))
	})

	It("stops applying a policy being deleted, while its finalizer undoes its changes", func() {
		ns := newNamespace(nil)
		p := testobj.Spec().Preset(v1alpha1.PresetAWSNLB).Policy(ns, "leaving")
		p.Finalizers = []string{"keepalive.io/restore"}
		Expect(k8sClient.Create(ctx, p)).To(Succeed())
		Eventually(storeHas).WithArguments(refOf(p)).Should(BeTrue())
		Expect(sysctlsOf(createPod(testobj.MakePod(ns, "before").Obj()))).To(Equal(keepaliveSysctls("175", "30")))

		Expect(k8sClient.Delete(ctx, p)).To(Succeed())
		Eventually(storeHas).WithArguments(refOf(p)).Should(BeFalse())
		pod := createPod(testobj.MakePod(ns, "during").Obj())
		Expect(sysctlsOf(pod)).To(BeEmpty())
		Expect(pod.Annotations).NotTo(HaveKey(keepalive.AnnotationPolicy))

		Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(p), p)).To(Succeed())
		p.Finalizers = nil
		Expect(k8sClient.Update(ctx, p)).To(Succeed())
	})

	It("admits hostNetwork and Windows pods unchanged", func() {
		ns := newNamespace(nil)
		createPolicy(testobj.Spec().Preset(v1alpha1.PresetAWSNLB).Policy(ns, "nlb"))
		for _, p := range []*corev1.Pod{
			testobj.MakePod(ns, "host").HostNetwork().Obj(),
			testobj.MakePod(ns, "windows").OS(corev1.Windows).Obj(),
		} {
			pod := createPod(p)
			Expect(sysctlsOf(pod)).To(BeEmpty(), pod.Name)
			Expect(pod.Annotations).NotTo(HaveKey(keepalive.AnnotationPolicy), pod.Name)
		}
	})

	It("leaves out pods labelled keepalive.io/inject=disabled", func() {
		ns := newNamespace(nil)
		createPolicy(testobj.Spec().Preset(v1alpha1.PresetAWSNLB).Policy(ns, "nlb"))
		pod := createPod(testobj.MakePod(ns, "opted-out").Labels(map[string]string{keepalive.LabelInject: keepalive.InjectDisabled}).Obj())
		Expect(sysctlsOf(pod)).To(BeEmpty())
	})

	Context("under Pod Security baseline", func() {
		psa := func(version string) map[string]string {
			return map[string]string{
				"pod-security.kubernetes.io/enforce":         "baseline",
				"pod-security.kubernetes.io/enforce-version": version,
			}
		}

		It("at v1.28, admits the pod without the sysctls, with a warning", func() {
			ns := newNamespace(psa("v1.28"))
			createPolicy(testobj.Spec().Preset(v1alpha1.PresetAWSNLB).Policy(ns, "nlb"))
			pod := createPod(testobj.MakePod(ns, "app").Obj())
			Expect(sysctlsOf(pod)).To(BeEmpty())
			Expect(warnings.take()).To(ContainElement(ContainSubstring(`Pod Security "baseline" at version v1.28 rejects the keepalive sysctls`)))

			By("Pod Security itself rejecting the same sysctls set by hand")
			err := k8sClient.Create(ctx, testobj.MakePod(ns, "by-hand").
				Labels(map[string]string{keepalive.LabelInject: keepalive.InjectDisabled}).
				Sysctl(keepalive.SysctlTime, "175").Obj())
			Expect(apierrors.IsForbidden(err)).To(BeTrue(), "got %v", err)
			Expect(err.Error()).To(ContainSubstring("violates PodSecurity"))
		})

		It("at v1.29, admits the pod with the sysctls", func() {
			ns := newNamespace(psa("v1.29"))
			createPolicy(testobj.Spec().Preset(v1alpha1.PresetAWSNLB).Policy(ns, "nlb"))
			pod := createPod(testobj.MakePod(ns, "app").Obj())
			Expect(sysctlsOf(pod)).To(Equal(keepaliveSysctls("175", "30")))
		})
	})

	It("reaches with a cluster policy only the namespaces its selector matches", func() {
		selected := newNamespace(map[string]string{"egress": "cloud-nat"})
		other := newNamespace(map[string]string{"egress": "nat-gateway"})
		createPolicy(testobj.Spec().Preset(v1alpha1.PresetGCPCloudNAT).ClusterPolicy("cloud-nat-egress", map[string]string{"egress": "cloud-nat"}))
		in := createPod(testobj.MakePod(selected, "app").Obj())
		Expect(sysctlsOf(in)).To(Equal(keepaliveSysctls("600", "30")))
		Expect(in.Annotations).To(HaveKeyWithValue(keepalive.AnnotationPolicy, "ClusterKeepalivePolicy/cloud-nat-egress"))
		out := createPod(testobj.MakePod(other, "app").Obj())
		Expect(sysctlsOf(out)).To(BeEmpty())
	})

	It("never reaches another namespace with a namespaced policy", func() {
		owner, other := newNamespace(nil), newNamespace(nil)
		createPolicy(testobj.Spec().Preset(v1alpha1.PresetAWSNLB).Policy(owner, "nlb"))
		pod := createPod(testobj.MakePod(other, "app").Obj())
		Expect(sysctlsOf(pod)).To(BeEmpty())
		Expect(pod.Annotations).NotTo(HaveKey(keepalive.AnnotationPolicy))
	})

	It("mutates nothing in Audit mode and says what it would set", func() {
		ns := newNamespace(nil)
		createPolicy(testobj.Spec().Preset(v1alpha1.PresetAzureLB).Mode(v1alpha1.ModeAudit).Policy(ns, "trial"))
		pod := createPod(testobj.MakePod(ns, "app").Obj())
		Expect(sysctlsOf(pod)).To(BeEmpty())
		Expect(pod.Annotations).NotTo(HaveKey(keepalive.AnnotationPolicy))
		Expect(warnings.take()).To(ConsistOf(
			"keepalive.io: KeepalivePolicy/" + ns + "/trial (Audit) would set net.ipv4.tcp_keepalive_time=120, net.ipv4.tcp_keepalive_intvl=30, net.ipv4.tcp_keepalive_probes=9"))
	})

	It("shows its warnings in kubectl", func() {
		ns := newNamespace(nil)
		createPolicy(testobj.Spec().Preset(v1alpha1.PresetAWSNLB).Policy(ns, "nlb"))
		manifest := `{"apiVersion":"v1","kind":"Pod","metadata":{"name":"api","namespace":"` + ns + `"},
			"spec":{"securityContext":{"sysctls":[{"name":"net.ipv4.tcp_keepalive_time","value":"7200"}]},"containers":[{"name":"api","image":"api:1"}]}}`
		stdout, stderr, err := env.Kubectl(manifest, "apply", "-f", "-")
		Expect(err).NotTo(HaveOccurred(), stderr)
		Expect(stdout).To(Equal("pod/api created\n"))
		Expect(stderr).To(Equal("Warning: keepalive.io: KeepalivePolicy/" + ns + "/nlb replaced net.ipv4.tcp_keepalive_time=7200 with net.ipv4.tcp_keepalive_time=175; the originals are in annotation keepalive.io/original-sysctls\n"))
	})

	It("mutates a server-side dry-run create the same way", func() {
		ns := newNamespace(nil)
		createPolicy(testobj.Spec().Preset(v1alpha1.PresetAWSNLB).Policy(ns, "nlb"))
		pod := createPod(testobj.MakePod(ns, "dry").Obj(), client.DryRunAll)
		Expect(sysctlsOf(pod)).To(Equal(keepaliveSysctls("175", "30")))
		Expect(pod.Annotations).To(HaveKeyWithValue(keepalive.AnnotationPolicy, "KeepalivePolicy/"+ns+"/nlb"))
		err := k8sClient.Get(ctx, client.ObjectKeyFromObject(pod), &corev1.Pod{})
		Expect(apierrors.IsNotFound(err)).To(BeTrue(), "a dry run stored the pod: %v", err)
	})

	It("injects a pod created right after its namespace", func() {
		createPolicy(testobj.Spec().Preset(v1alpha1.PresetAWSNLB).ClusterPolicy("fresh-namespaces", map[string]string{"egress": "fresh"}))
		fresh := newNamespace(map[string]string{"egress": "fresh"})
		pod := createPod(testobj.MakePod(fresh, "app").Obj())
		Expect(sysctlsOf(pod)).To(Equal(keepaliveSysctls("175", "30")))
	})
})

var _ = Describe("with the webhook server stopped", Serial, func() {
	It("still creates pods, unchanged (fail-open)", func() {
		ns := newNamespace(nil)
		createPolicy(testobj.Spec().Preset(v1alpha1.PresetAWSNLB).Policy(ns, "nlb"))
		stopManager()
		DeferCleanup(func() { stopManager, store = startManager(env.Config) })

		pod := createPod(testobj.MakePod(ns, "app").Obj())
		Expect(sysctlsOf(pod)).To(BeEmpty())
		Expect(pod.Annotations).NotTo(HaveKey(keepalive.AnnotationPolicy))
	})
})
