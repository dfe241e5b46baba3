package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"github.com/onsi/gomega/gexec"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	sigsyaml "sigs.k8s.io/yaml"

	"github.com/keepalive-operator/keepalive-operator/api/v1alpha1"
	"github.com/keepalive-operator/keepalive-operator/internal/keepalive"
	"github.com/keepalive-operator/keepalive-operator/internal/testobj"
)

var (
	pluginOnce sync.Once
	plugin     string
)

// kubectlKeepalive runs the plugin against the suite's API server and
// returns its standard output; it fails the spec when the plugin fails.
func kubectlKeepalive(args ...string) []byte {
	pluginOnce.Do(func() {
		var err error
		plugin, err = gexec.Build("github.com/keepalive-operator/keepalive-operator/cmd/kubectl-keepalive")
		Expect(err).NotTo(HaveOccurred())
	})
	cmd := exec.Command(plugin, append(args, "--kubeconfig", env.Kubeconfig)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	ExpectWithOffset(1, err).NotTo(HaveOccurred(), stderr.String())
	return out
}

// explanation is the JSON of kubectl keepalive explain, decoded.
type explanation struct {
	Object   string `json:"object"`
	Policies []struct {
		Policy string `json:"policy"`
		Ready  string `json:"ready"`
	} `json:"policies"`
	Governing   string                   `json:"governing"`
	Over        map[string]string        `json:"over"`
	Skipped     string                   `json:"skipped"`
	Has         []corev1.Sysctl          `json:"has"`
	WouldGet    []corev1.Sysctl          `json:"wouldGet"`
	Annotation  string                   `json:"annotation"`
	Record      *keepalive.Managed       `json:"record"`
	Connections *v1alpha1.PodConnections `json:"connections"`
}

func explainJSON(target, namespace string) explanation {
	var e explanation
	ExpectWithOffset(1, json.Unmarshal(kubectlKeepalive("explain", target, "-n", namespace, "-o", "json"), &e)).To(Succeed())
	return e
}

var _ = Describe("kubectl keepalive explain", func() {
	It("tells which policy governs a pod and why, what it has and would get, its connections, and why a pod is left alone", func(ctx SpecContext) {
		start("--health-probe-bind-address", freeAddr(), "--metrics-bind-address", "0")
		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "explain-"}}
		Expect(k8sClient.Create(ctx, ns)).To(Succeed())
		nlb := testobj.Spec().Preset(v1alpha1.PresetAWSNLB).Policy(ns.Name, "nlb")
		trial := testobj.Spec().Preset(v1alpha1.PresetAWSALB).Mode(v1alpha1.ModeAudit).Policy(ns.Name, "trial")
		for _, p := range []*v1alpha1.KeepalivePolicy{nlb, trial} {
			Expect(k8sClient.Create(ctx, p)).To(Succeed())
			DeferCleanup(func(ctx context.Context) { Expect(k8sClient.Delete(ctx, p)).To(Succeed()) })
		}
		nlbRef, trialRef := "KeepalivePolicy/"+ns.Name+"/nlb", "KeepalivePolicy/"+ns.Name+"/trial"
		values := []corev1.Sysctl{{Name: keepalive.SysctlTime, Value: "175"}, {Name: keepalive.SysctlInterval, Value: "30"}, {Name: keepalive.SysctlProbes, Value: "9"}}

		By("a pod the webhook injected, on a node whose audit reports its connections")
		node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-explain"}}
		Expect(k8sClient.Create(ctx, node)).To(Succeed())
		DeferCleanup(func(ctx context.Context) { Expect(k8sClient.Delete(ctx, node)).To(Succeed()) })
		node.Status.NodeInfo = corev1.NodeSystemInfo{KubeletVersion: "v1.36.3", KernelVersion: "6.1.0"}
		Expect(k8sClient.Status().Update(ctx, node)).To(Succeed())
		var pod *corev1.Pod
		Eventually(func() map[string]string {
			pod = testobj.MakePod(ns.Name, "").Labels(map[string]string{"app": "api"}).Node("node-explain").Obj()
			pod.GenerateName = "api-"
			if err := k8sClient.Create(ctx, pod); err != nil {
				return nil
			}
			if pod.Annotations[keepalive.AnnotationPolicy] == "" {
				Expect(k8sClient.Delete(ctx, pod)).To(Succeed()) // created before the webhook knew the policy
			}
			return pod.Annotations
		}, 20*time.Second).Should(HaveKeyWithValue(keepalive.AnnotationPolicy, nlbRef))
		status := v1alpha1.KeepaliveNodeReportStatus{AuditTime: metav1.Now(), ValidSeconds: 720, IntervalSeconds: 60, PodCount: 1,
			Pods: []v1alpha1.PodConnections{{Namespace: ns.Name, Name: pod.Name, Policies: []v1alpha1.PolicyConnections{{
				Policy: nlbRef, TimeSeconds: 175, ConnectionCounts: v1alpha1.ConnectionCounts{Armed: 2, NotArmed: 1}}}}}}
		// The agent writes its report whole: status is no subresource.
		report := &v1alpha1.KeepaliveNodeReport{ObjectMeta: metav1.ObjectMeta{Name: "node-explain"}, Status: status}
		Expect(k8sClient.Create(ctx, report)).To(Succeed())
		DeferCleanup(func(ctx context.Context) { Expect(k8sClient.Delete(ctx, report)).To(Succeed()) })

		Eventually(func(g Gomega) {
			e := explainJSON("pod/"+pod.Name, ns.Name)
			g.Expect(e.Object).To(Equal("Pod " + ns.Name + "/" + pod.Name))
			g.Expect(e.Governing).To(Equal(nlbRef))
			g.Expect(e.Over).To(Equal(map[string]string{trialRef: "Enforce comes before Audit"}))
			g.Expect(e.Policies).To(HaveLen(2))
			g.Expect(e.Policies[0].Policy).To(Equal(nlbRef))
			for _, p := range e.Policies {
				g.Expect(p.Ready).To(HavePrefix("True"), "the operator's status of %s", p.Policy)
			}
			g.Expect(e.Skipped).To(BeEmpty())
			g.Expect(e.Has).To(Equal(values))
			g.Expect(e.WouldGet).To(Equal(values))
			g.Expect(e.Annotation).To(Equal(nlbRef))
			g.Expect(e.Connections).NotTo(BeNil())
			g.Expect(e.Connections.Policies).To(ConsistOf(HaveField("ConnectionCounts", v1alpha1.ConnectionCounts{Armed: 2, NotArmed: 1})))
		}, 20*time.Second).Should(Succeed())

		text := string(kubectlKeepalive("explain", "pod/"+pod.Name, "-n", ns.Name))
		GinkgoWriter.Println(text)
		Expect(text).To(ContainSubstring("governs: " + nlbRef + "\n    over " + trialRef + ": Enforce comes before Audit"))
		Expect(text).To(ContainSubstring("connections (" + nlbRef + ", 175 s): armed 2, armed late 0, not armed 1, unknown 0"))

		By("a hostNetwork pod, left alone")
		hostNet := testobj.MakePod(ns.Name, "edge").Labels(map[string]string{"app": "edge"}).HostNetwork().Obj()
		Expect(k8sClient.Create(ctx, hostNet)).To(Succeed())
		e := explainJSON("pod/edge", ns.Name)
		Expect(e.Governing).To(Equal(nlbRef))
		Expect(e.Skipped).To(Equal(string(keepalive.SkipHostNetwork)))
		Expect(e.Has).To(BeEmpty())
		Expect(e.WouldGet).To(BeEmpty())

		By("a Deployment: its template's values and the operator's record")
		labels := map[string]string{"app": "api"}
		deploy := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: ns.Name, Name: "api"}, Spec: appsv1.DeploymentSpec{
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: testobj.MakePod(ns.Name, "api").Obj().Spec},
		}}
		Expect(k8sClient.Create(ctx, deploy)).To(Succeed())
		e = explainJSON("deploy/api", ns.Name)
		Expect(e.Object).To(Equal("Deployment " + ns.Name + "/api"))
		Expect(e.Governing).To(Equal(nlbRef))
		Expect(e.WouldGet).To(Equal(values))
		if e.Record != nil { // the operator patched it already
			Expect(e.Record.Policy).To(Equal(nlbRef))
			Expect(e.Has).To(Equal(values))
		}
	})
})

// plan is the JSON of kubectl keepalive plan, decoded.
type plan struct {
	Policies []struct {
		Policy string `json:"policy"`
		Live   string `json:"live"`
		Time   int32  `json:"timeSeconds"`
	} `json:"policies"`
	Pods struct {
		Selected, Governed, Compliant, NewValues, AuditOnly, Blocked int
	} `json:"pods"`
	Blocked  map[string][]string `json:"blocked"`
	Rollouts []string            `json:"rollouts"`
	Waves    int                 `json:"waves"`
}

var _ = Describe("kubectl keepalive plan", func() {
	It("tells what a policy would compute, select, leave blocked and roll, writing nothing", func(ctx SpecContext) {
		start("--health-probe-bind-address", freeAddr(), "--metrics-bind-address", "0")
		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "plan-"}}
		other := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "plan-other-"}}
		for _, n := range []*corev1.Namespace{ns, other} {
			Expect(k8sClient.Create(ctx, n)).To(Succeed())
		}
		labels := map[string]string{"app": "api"}
		Expect(k8sClient.Create(ctx, testobj.MakePod(ns.Name, "api").Labels(labels).Obj())).To(Succeed())
		Expect(k8sClient.Create(ctx, testobj.MakePod(ns.Name, "edge").Labels(labels).HostNetwork().Obj())).To(Succeed())
		Expect(k8sClient.Create(ctx, testobj.MakePod(other.Name, "api").Labels(labels).Obj())).To(Succeed())
		for _, name := range []string{"api", "web"} {
			Expect(k8sClient.Create(ctx, &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: ns.Name, Name: name}, Spec: appsv1.DeploymentSpec{
				Selector: &metav1.LabelSelector{MatchLabels: labels},
				Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: testobj.MakePod(ns.Name, name).Obj().Spec},
			}})).To(Succeed())
		}
		policy := testobj.Spec().Preset(v1alpha1.PresetAWSNLB).Policy("", "nlb")
		policy.TypeMeta = metav1.TypeMeta{APIVersion: v1alpha1.GroupVersion.String(), Kind: "KeepalivePolicy"}
		raw, err := sigsyaml.Marshal(policy)
		Expect(err).NotTo(HaveOccurred())
		file := filepath.Join(GinkgoT().TempDir(), "nlb.yaml")
		Expect(os.WriteFile(file, raw, 0o644)).To(Succeed())
		ref := "KeepalivePolicy/" + ns.Name + "/nlb"

		var p plan
		Expect(json.Unmarshal(kubectlKeepalive("plan", "-f", file, "-n", ns.Name, "-o", "json", "--max-concurrent-rollouts", "1"), &p)).To(Succeed())
		Expect(p.Policies).To(HaveLen(1))
		Expect(p.Policies[0].Policy).To(Equal(ref))
		Expect(p.Policies[0].Live).To(Equal("new"))
		Expect(p.Policies[0].Time).To(BeEquivalentTo(175))
		Expect(p.Pods.Selected).To(Equal(2), "the pods of the other namespace are out of the policy's scope")
		Expect(p.Pods.Governed).To(Equal(2))
		Expect(p.Pods.NewValues).To(Equal(1))
		Expect(p.Pods.Blocked).To(Equal(1))
		Expect(p.Blocked).To(Equal(map[string][]string{string(keepalive.SkipHostNetwork): {ns.Name + "/edge"}}))
		Expect(p.Rollouts).To(Equal([]string{"Deployment " + ns.Name + "/api", "Deployment " + ns.Name + "/web"}))
		Expect(p.Waves).To(Equal(2))
		By("the same plan read a pod or workload at a time")
		var paged plan
		Expect(json.Unmarshal(kubectlKeepalive("plan", "-f", file, "-n", ns.Name, "-o", "json", "--max-concurrent-rollouts", "1", "--chunk-size", "1"), &paged)).To(Succeed())
		Expect(paged).To(Equal(p))

		text := string(kubectlKeepalive("plan", "-f", file, "-n", ns.Name))
		GinkgoWriter.Println(text)
		Expect(text).To(ContainSubstring(ref + " (new): Enforce, rollout PatchTemplates\n  computes: time 175 s, interval 30 s, probes 9 (a dead peer found within 445 s), from aws-nlb (350 s)"))
		Expect(text).To(ContainSubstring("  blocked, host-network: " + ns.Name + "/edge\n"))
		Expect(text).To(ContainSubstring("rollouts: 2 workloads, in 1 wave of at most 5 at once:"))

		By("the plan wrote nothing")
		var kaps v1alpha1.KeepalivePolicyList
		Expect(k8sClient.List(ctx, &kaps, client.InNamespace(ns.Name))).To(Succeed())
		Expect(kaps.Items).To(BeEmpty())

		By("planned again once applied")
		policy.Namespace = ns.Name
		Expect(k8sClient.Create(ctx, policy)).To(Succeed())
		DeferCleanup(func(ctx context.Context) { Expect(k8sClient.Delete(ctx, policy)).To(Succeed()) })
		Expect(json.Unmarshal(kubectlKeepalive("plan", "-f", file, "-n", ns.Name, "-o", "json"), &p)).To(Succeed())
		Expect(p.Policies[0].Live).To(Equal("the same values as the live one"))
	})
})

// finding is one finding of kubectl keepalive doctor.
type finding struct {
	Check, Status, Detail, Fix string
}

var _ = Describe("kubectl keepalive doctor", func() {
	It("reports the cluster's readiness, each finding with what to do", func(ctx SpecContext) {
		start("--health-probe-bind-address", freeAddr(), "--metrics-bind-address", "0", "--leader-elect")
		old := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "doctor-old"}}
		Expect(k8sClient.Create(ctx, old)).To(Succeed())
		DeferCleanup(func(ctx context.Context) { Expect(k8sClient.Delete(ctx, old)).To(Succeed()) })
		old.Status.NodeInfo = corev1.NodeSystemInfo{KubeletVersion: "v1.28.15", KernelVersion: "6.1.0"}
		Expect(k8sClient.Status().Update(ctx, old)).To(Succeed())
		pinned := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "doctor-pinned-", Labels: map[string]string{
			"pod-security.kubernetes.io/enforce": "baseline", "pod-security.kubernetes.io/enforce-version": "v1.28"}}}
		Expect(k8sClient.Create(ctx, pinned)).To(Succeed())
		stale := &v1alpha1.KeepaliveNodeReport{ObjectMeta: metav1.ObjectMeta{Name: old.Name},
			Status: v1alpha1.KeepaliveNodeReportStatus{AuditTime: metav1.NewTime(time.Now().Add(-time.Hour)), ValidSeconds: 180, IntervalSeconds: 60}}
		Expect(k8sClient.Create(ctx, stale)).To(Succeed())
		DeferCleanup(func(ctx context.Context) { Expect(k8sClient.Delete(ctx, stale)).To(Succeed()) })

		By("an in-cluster webhook configuration, which matches no object, with its Service, endpoint and certificate")
		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "doctor-operator-"}}
		Expect(k8sClient.Create(ctx, ns)).To(Succeed())
		certPEM := selfSignedCert("keepalive-operator-webhook." + ns.Name + ".svc")
		Expect(k8sClient.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns.Name, Name: "webhook-tls"},
			Type: corev1.SecretTypeOpaque, Data: map[string][]byte{"tls.crt": certPEM}})).To(Succeed())
		Expect(k8sClient.Create(ctx, &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Namespace: ns.Name, Name: "keepalive-operator-webhook-1", Labels: map[string]string{discoveryv1.LabelServiceName: "keepalive-operator-webhook"}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"10.0.0.7"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}}},
		})).To(Succeed())
		ignore, none := admissionregistrationv1.Ignore, admissionregistrationv1.SideEffectClassNone
		inCluster := &admissionregistrationv1.MutatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: "doctor-in-cluster"},
			Webhooks: []admissionregistrationv1.MutatingWebhook{{
				Name: "pods.keepalive.io", AdmissionReviewVersions: []string{"v1"}, SideEffects: &none, FailurePolicy: &ignore, TimeoutSeconds: ptr.To[int32](2),
				ClientConfig: admissionregistrationv1.WebhookClientConfig{CABundle: certPEM, Service: &admissionregistrationv1.ServiceReference{
					Namespace: ns.Name, Name: "keepalive-operator-webhook", Path: ptr.To("/mutate-v1-pod")}},
				ObjectSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"doctor": "never"}},
				Rules: []admissionregistrationv1.RuleWithOperations{{Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create},
					Rule: admissionregistrationv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods"}}}},
			}}}
		Expect(k8sClient.Create(ctx, inCluster)).To(Succeed())
		DeferCleanup(func(ctx context.Context) { Expect(k8sClient.Delete(ctx, inCluster)).To(Succeed()) })

		// Other specs may leave objects that doctor reports too (a webhook
		// configuration of their own, say): the checks below are about
		// this spec's.
		byCheck := func(g Gomega) map[string][]finding {
			var list []finding
			g.Expect(json.Unmarshal(kubectlKeepalive("doctor", "--operator-namespace", operatorNS, "-o", "json"), &list)).To(Succeed())
			out := map[string][]finding{}
			for _, f := range list {
				out[f.Check] = append(out[f.Check], f)
			}
			return out
		}
		one := func(g Gomega, all map[string][]finding, check string) finding {
			g.Expect(all[check]).To(HaveLen(1), "the findings of %s", check)
			return all[check][0]
		}
		findings := map[string]finding{}
		Eventually(func(g Gomega) {
			all := byCheck(g)
			for _, check := range []string{"kubernetes", "nodes", "pod security", "webhook doctor-in-cluster", "webhook webhook-configuration", "leader", "audit"} {
				findings[check] = one(g, all, check)
			}
			g.Expect(findings["leader"].Status).To(Equal("ok"), "the operator takes the lease")
		}, 40*time.Second).Should(Succeed())
		Expect(findings["kubernetes"]).To(HaveField("Status", "ok"))
		Expect(findings["nodes"].Status).To(Equal("warning"))
		Expect(findings["nodes"].Detail).To(ContainSubstring("doctor-old (kubelet v1.28.15, kernel 6.1.0)"))
		Expect(findings["pod security"].Status).To(Equal("warning"))
		Expect(findings["pod security"].Detail).To(ContainSubstring(pinned.Name + " (baseline at v1.28)"))
		Expect(findings["pod security"].Fix).To(ContainSubstring("enforce-version=v1.29"))
		wh := findings["webhook webhook-configuration"]
		Expect(wh.Status).To(Equal("ok"), "%+v", wh)
		Expect(wh.Detail).To(HavePrefix("caBundle verifies the serving certificate for 127.0.0.1, valid until "))
		Expect(findings["webhook doctor-in-cluster"]).To(Equal(finding{Check: "webhook doctor-in-cluster", Status: "warning",
			Detail: "caBundle verifies the serving certificate for keepalive-operator-webhook." + ns.Name + ".svc, valid until " +
				certNotAfter(certPEM) + "; 1 endpoint ready behind Service " + ns.Name + "/keepalive-operator-webhook",
			Fix: "run 2 replicas (the chart's default), so that a restart or a node drain leaves one serving"}))
		Expect(findings["audit"].Status).To(Equal("warning"))
		Expect(findings["audit"].Detail).To(ContainSubstring(old.Name))

		By("an error, and the exit code")
		cmd := exec.Command(plugin, "doctor", "--operator-namespace", "nowhere", "--kubeconfig", env.Kubeconfig)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		text, err := cmd.Output()
		GinkgoWriter.Println(string(text))
		Expect(err).To(HaveOccurred())
		Expect(string(text)).To(ContainSubstring("[error] leader: no Lease nowhere/keepalive-operator.keepalive.io: no replica has been elected to reconcile\n" +
			"    fix: run the operator with --leader-elect (the chart does), in --operator-namespace\n"))
		// Each error is counted in the exit message; other specs may leave
		// webhook configurations with errors of their own.
		errs := strings.Count("\n"+string(text), "\n[error] ")
		want := fmt.Sprintf("doctor: %d errors", errs)
		if errs == 1 {
			want = "doctor: 1 error"
		}
		Expect(stderr.String()).To(ContainSubstring(want))
	})
})

// selfSignedCert returns a self-signed serving certificate for a DNS name,
// in PEM, valid for a day.
func selfSignedCert(dnsName string) []byte {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	Expect(err).NotTo(HaveOccurred())
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: dnsName}, DNSNames: []string{dnsName},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(24 * time.Hour).Truncate(time.Second),
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true, IsCA: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	Expect(err).NotTo(HaveOccurred())
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func certNotAfter(certPEM []byte) string {
	block, _ := pem.Decode(certPEM)
	cert, err := x509.ParseCertificate(block.Bytes)
	Expect(err).NotTo(HaveOccurred())
	return cert.NotAfter.UTC().Format(time.RFC3339)
}
