package install

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"github.com/onsi/gomega/gexec"
	admissionv1 "k8s.io/api/admission/v1"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/keepalive-operator/keepalive-operator/api/v1alpha1"
	"github.com/keepalive-operator/keepalive-operator/internal/testenv"
	"github.com/keepalive-operator/keepalive-operator/internal/testobj"
)

// serviceAccountKubeconfig writes a kubeconfig with a token of i's
// ServiceAccount, as the kubelet would mount it, and returns its path.
func serviceAccountKubeconfig(i install) (path, token string) {
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: i.ns, Name: i.serviceAccount}}
	req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: new(int64(3600))}}
	Expect(env.Client.SubResource("token").Create(ctx, sa, req)).To(Succeed())
	return tokenKubeconfig(req.Status.Token), req.Status.Token
}

// tokenKubeconfig writes a kubeconfig that authenticates with token and
// returns its path.
func tokenKubeconfig(token string) string {
	kc := clientcmdapi.NewConfig()
	kc.Clusters["envtest"] = &clientcmdapi.Cluster{Server: env.Config.Host, CertificateAuthorityData: env.Config.CAData}
	kc.AuthInfos["operator"] = &clientcmdapi.AuthInfo{Token: token}
	kc.Contexts["operator"] = &clientcmdapi.Context{Cluster: "envtest", AuthInfo: "operator"}
	kc.CurrentContext = "operator"
	path := filepath.Join(GinkgoT().TempDir(), "kubeconfig")
	Expect(clientcmd.WriteToFile(*kc, path)).To(Succeed())
	return path
}

// freeAddr is testenv.FreeAddr for a spec.
func freeAddr() string {
	addr, err := testenv.FreeAddr()
	Expect(err).NotTo(HaveOccurred())
	return addr
}

// chartArgs are the operator's arguments in the chart's Deployment.
func chartArgs(i install) []string {
	var args []string
	for _, u := range i.objects() {
		if u.GetKind() == "Deployment" {
			d := &appsv1.Deployment{}
			Expect(runtimeConvert(u, d)).To(Succeed())
			args = d.Spec.Template.Spec.Containers[0].Args
		}
	}
	Expect(args).NotTo(BeEmpty())
	return args
}

// staleDeployment creates in ns a Deployment with a ReplicaSet and a pod that has
// no keepalive sysctls, as the controller-manager would.
func staleDeployment(ns string) *appsv1.Deployment {
	labels := map[string]string{"app": "api"}
	template := corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{Labels: labels},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "app:1"}}},
	}
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "api"},
		Spec:       appsv1.DeploymentSpec{Selector: &metav1.LabelSelector{MatchLabels: labels}, Template: template},
	}
	Expect(env.Client.Create(ctx, d)).To(Succeed())
	rs := &appsv1.ReplicaSet{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "api-1",
			OwnerReferences: []metav1.OwnerReference{*metav1.NewControllerRef(d, appsv1.SchemeGroupVersion.WithKind("Deployment"))}},
		Spec: appsv1.ReplicaSetSpec{Selector: &metav1.LabelSelector{MatchLabels: labels}, Template: template},
	}
	Expect(env.Client.Create(ctx, rs)).To(Succeed())
	Expect(env.Client.Create(ctx, testobj.MakePod(ns, "api-1-a").Labels(labels).Owner(rs, "apps/v1", "ReplicaSet").Obj())).To(Succeed())
	return d
}

// review posts an AdmissionReview for a pod of ns to the webhook at addr and
// returns the answer.
func review(c *http.Client, addr, ns string) (*admissionv1.AdmissionResponse, error) {
	pod, err := json.Marshal(testobj.MakePod(ns, "new").Obj())
	Expect(err).NotTo(HaveOccurred())
	body, err := testobj.Review(admissionv1.Create, ns, pod)
	Expect(err).NotTo(HaveOccurred())
	resp, err := c.Post("https://"+addr+"/mutate-v1-pod", "application/json", bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out := admissionv1.AdmissionReview{}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return nil, err
	}
	return out.Response, nil
}

var _ = Describe("the operator's binary, as the chart's ServiceAccount", Ordered, func() {
	var binary string

	BeforeAll(func() {
		var err error
		binary, err = gexec.Build("github.com/keepalive-operator/keepalive-operator/cmd/keepalive-operator")
		Expect(err).NotTo(HaveOccurred())
		DeferCleanup(gexec.CleanupBuildArtifacts)
	})

	for _, i := range []install{chartRotation, chartCertManager} {
		It("works with the rules of "+i.title+" alone", func() {
			createIdentity(i, "Secret", "MutatingWebhookConfiguration", "CustomResourceDefinition")
			kubeconfig, token := serviceAccountKubeconfig(i)
			certDir := GinkgoT().TempDir()
			if !i.rotation {
				// cert-manager's Secret, as the kubelet mounts it.
				Expect(testenv.WriteServingCert(certDir, "cert-manager")).To(Succeed())
			}
			probes, metrics := freeAddr(), freeAddr()
			_, port, err := net.SplitHostPort(freeAddr())
			Expect(err).NotTo(HaveOccurred())
			// The chart's arguments; later flags override earlier ones.
			cmd := exec.Command(binary, append(chartArgs(i), "--kubeconfig", kubeconfig, "--webhook-cert-path", certDir,
				"--webhook-port", port, "--health-probe-bind-address", probes, "--metrics-bind-address", metrics)...)
			cmd.Env = append(os.Environ(), "POD_NAMESPACE="+i.ns)
			session, err := gexec.Start(cmd, GinkgoWriter, GinkgoWriter)
			Expect(err).NotTo(HaveOccurred())
			DeferCleanup(func() { Eventually(session.Terminate(), 30*time.Second).Should(gexec.Exit(0)) })

			tlsConfig := &tls.Config{InsecureSkipVerify: true}
			if i.rotation {
				By("rotating the certificate: its Secret filled, the CA in its webhook configuration")
				secret := &corev1.Secret{}
				Eventually(func() map[string][]byte {
					_ = env.Client.Get(ctx, client.ObjectKey{Namespace: i.ns, Name: i.secret}, secret)
					return secret.Data
				}, 30*time.Second).Should(And(HaveKey("ca.crt"), HaveKey("tls.crt"), HaveKey("tls.key")))
				for name, data := range secret.Data {
					Expect(os.WriteFile(filepath.Join(certDir, name), data, 0o600)).To(Succeed())
				}
				Eventually(func() []byte {
					wh := &admissionregistrationv1.MutatingWebhookConfiguration{}
					_ = env.Client.Get(ctx, client.ObjectKey{Name: i.webhookConfig}, wh)
					return wh.Webhooks[0].ClientConfig.CABundle
				}, 30*time.Second).Should(Equal(secret.Data["ca.crt"]))
				pool := x509.NewCertPool()
				Expect(pool.AppendCertsFromPEM(secret.Data["ca.crt"])).To(BeTrue())
				tlsConfig = &tls.Config{RootCAs: pool, ServerName: i.serviceAccount + "-webhook." + i.ns + ".svc"}
			}
			Eventually(func() int {
				resp, err := http.Get("http://" + probes + "/readyz")
				if err != nil {
					return 0
				}
				resp.Body.Close()
				return resp.StatusCode
			}, 60*time.Second).Should(Equal(http.StatusOK))

			By("holding the leader Lease in its namespace")
			Eventually(func() *string {
				lease := &coordinationv1.Lease{}
				_ = env.Client.Get(ctx, client.ObjectKey{Namespace: i.ns, Name: "keepalive-operator.keepalive.io"}, lease)
				return lease.Spec.HolderIdentity
			}, 30*time.Second).ShouldNot(BeNil())

			By("reconciling a policy: status written, the stale Deployment's template patched")
			shop := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "shop-"}}
			Expect(env.Client.Create(ctx, shop)).To(Succeed())
			Eventually(func() error {
				return env.Client.Create(ctx, testobj.Spec().Preset(v1alpha1.PresetAWSNLB).Policy(shop.Name, "nlb"))
			}, 10*time.Second).Should(Succeed())
			d := staleDeployment(shop.Name)
			Eventually(func() []corev1.Sysctl {
				_ = env.Client.Get(ctx, client.ObjectKeyFromObject(d), d)
				if sc := d.Spec.Template.Spec.SecurityContext; sc != nil {
					return sc.Sysctls
				}
				return nil
			}, 30*time.Second).Should(ContainElement(corev1.Sysctl{Name: "net.ipv4.tcp_keepalive_time", Value: "175"}))
			Eventually(func() int64 {
				p := &v1alpha1.KeepalivePolicy{}
				_ = env.Client.Get(ctx, client.ObjectKey{Namespace: shop.Name, Name: "nlb"}, p)
				return p.Status.ObservedGeneration
			}, 30*time.Second).Should(BeNumerically(">", 0))

			By("admitting a pod")
			c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsConfig}}
			Eventually(func() (string, error) {
				resp, err := review(c, net.JoinHostPort("127.0.0.1", port), shop.Name)
				if err != nil || !resp.Allowed {
					return "", err
				}
				return string(resp.Patch), nil
			}, 20*time.Second).Should(ContainSubstring("net.ipv4.tcp_keepalive_time"))

			By("authenticating and authorizing metrics scrapers through the API server")
			insecure := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
			Eventually(func() int {
				req, err := http.NewRequest(http.MethodGet, "https://"+metrics+"/metrics", nil)
				Expect(err).NotTo(HaveOccurred())
				// Its own token: a ServiceAccount the API server knows, not
				// bound to the metrics-reader role.
				req.Header.Set("Authorization", "Bearer "+token)
				resp, err := insecure.Do(req)
				if err != nil {
					return 0
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				return resp.StatusCode
			}, 20*time.Second).Should(Equal(http.StatusForbidden))

			By("never being refused a request")
			Expect(string(session.Err.Contents())).NotTo(ContainSubstring("forbidden"))
		})
	}
})
