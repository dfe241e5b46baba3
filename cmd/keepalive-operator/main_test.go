package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"github.com/onsi/gomega/gbytes"
	"github.com/onsi/gomega/gexec"
	admissionv1 "k8s.io/api/admission/v1"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/keepalive-operator/keepalive-operator/api/v1alpha1"
	"github.com/keepalive-operator/keepalive-operator/internal/testenv"
	"github.com/keepalive-operator/keepalive-operator/internal/testobj"
)

var (
	env       *testenv.Env
	k8sClient client.Client
	// binary is the operator, built from this package.
	binary string
)

// operatorNS is where the specs run the operator.
const operatorNS = "keepalive-system"

func TestManager(t *testing.T) {
	RegisterFailHandler(Fail)
	RunSpecs(t, "manager suite")
}

var _ = BeforeSuite(func() {
	var err error
	env, err = testenv.Start(testenv.CRDs|testenv.Webhooks, nil, GinkgoT().TempDir())
	Expect(err).NotTo(HaveOccurred())
	k8sClient = env.Client
	Expect(k8sClient.Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: operatorNS}})).To(Succeed())
	binary, err = gexec.Build("github.com/keepalive-operator/keepalive-operator/cmd/keepalive-operator")
	Expect(err).NotTo(HaveOccurred())
})

var _ = AfterSuite(func() {
	gexec.CleanupBuildArtifacts()
	if env != nil {
		Expect(env.Stop()).To(Succeed())
	}
})

// freeAddr is testenv.FreeAddr for a spec.
func freeAddr() string {
	addr, err := testenv.FreeAddr()
	Expect(err).NotTo(HaveOccurred())
	return addr
}

// start runs the operator's binary with args until the spec ends, its
// webhook server where envtest's webhook configuration points. Later flags
// override earlier ones.
func start(args ...string) *gexec.Session {
	wh := env.WebhookInstallOptions
	cmd := exec.Command(binary, append([]string{
		"--kubeconfig", env.Kubeconfig,
		"--webhook-cert-path", wh.LocalServingCertDir,
		"--webhook-port", strconv.Itoa(wh.LocalServingPort),
		"--operator-namespace", operatorNS,
		"--shutdown-delay", "0s", // one spec tries the delay
	}, args...)...)
	session, err := gexec.Start(cmd, GinkgoWriter, GinkgoWriter)
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(func() {
		Eventually(session.Terminate(), 30*time.Second).Should(gexec.Exit(0))
	})
	return session
}

func get(c *http.Client, url string) (int, string) {
	resp, err := c.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

var _ = Describe("the manager", func() {
	It("serves health, readiness and plain metrics", func() {
		probes, metrics := freeAddr(), freeAddr()
		start("--health-probe-bind-address", probes, "--metrics-bind-address", metrics, "--metrics-secure=false")
		Eventually(func() int { code, _ := get(http.DefaultClient, "http://"+probes+"/healthz"); return code }, 20*time.Second).Should(Equal(http.StatusOK))
		Eventually(func() int { code, _ := get(http.DefaultClient, "http://"+probes+"/readyz"); return code }, 20*time.Second).Should(Equal(http.StatusOK))
		Eventually(func() string { _, body := get(http.DefaultClient, "http://"+metrics+"/metrics"); return body }, 20*time.Second).
			Should(ContainSubstring("controller_runtime_"))
	})

	It("injects pods through its webhook", func() {
		start("--health-probe-bind-address", freeAddr(), "--metrics-bind-address", "0")
		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "shop-"}}
		Expect(k8sClient.Create(context.Background(), ns)).To(Succeed())
		policy := testobj.Spec().Preset(v1alpha1.PresetAWSNLB).Policy(ns.Name, "nlb")
		Expect(k8sClient.Create(context.Background(), policy)).To(Succeed())
		Eventually(func() map[string]string {
			pod := testobj.MakePod(ns.Name, "app").Obj()
			if err := k8sClient.Create(context.Background(), pod, client.DryRunAll); err != nil {
				return nil
			}
			return pod.Annotations
		}, 20*time.Second).Should(HaveKeyWithValue("keepalive.io/policy", "KeepalivePolicy/"+ns.Name+"/nlb"))
	})

	It("goes on admitting pods for --shutdown-delay after SIGTERM, closing each connection after its answer, then stops", func() {
		session := start("--health-probe-bind-address", freeAddr(), "--metrics-bind-address", "0", "--shutdown-delay", "5s")
		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "shop-"}}
		Expect(k8sClient.Create(context.Background(), ns)).To(Succeed())
		Expect(k8sClient.Create(context.Background(), testobj.Spec().Preset(v1alpha1.PresetAWSNLB).Policy(ns.Name, "nlb"))).To(Succeed())
		injected := func() bool {
			pod := testobj.MakePod(ns.Name, "app").Obj()
			return k8sClient.Create(context.Background(), pod, client.DryRunAll) == nil && pod.Annotations["keepalive.io/policy"] != ""
		}
		Eventually(injected, 20*time.Second).Should(BeTrue())

		By("keeping its connections alive before SIGTERM")
		wh := env.WebhookInstallOptions
		direct := newReviewer(net.JoinHostPort(wh.LocalServingHost, strconv.Itoa(wh.LocalServingPort)), false)
		Expect(direct.review().close).To(BeFalse())
		Expect(direct.review().reused).To(BeTrue(), "the second review did not reuse the connection")

		session.Signal(syscall.SIGTERM)
		sent := time.Now()
		// The signal is handled asynchronously; the operator logs this once it has.
		Eventually(session.Err, 2*time.Second).Should(gbytes.Say(`"msg":"stopping"`))

		By("closing each connection after its answer from SIGTERM on")
		last := direct.review()
		Expect(last.reused).To(BeTrue(), "the review after SIGTERM came on a new connection")
		Expect(last.close).To(BeTrue(), "no Connection: close")
		next := direct.review()
		Expect(next.reused).To(BeFalse(), "the connection was kept after Connection: close")
		Expect(next.close).To(BeTrue())

		Consistently(injected, "3s", "200ms").Should(BeTrue(), "a review in the shutdown delay went unanswered")
		Eventually(session, 20*time.Second).Should(gexec.Exit(0))
		Expect(time.Since(sent)).To(BeNumerically(">=", 5*time.Second), "stopped before the delay was over")
	})

	It("ends its HTTP/2 connections with GOAWAY from SIGTERM on", func() {
		session := start("--health-probe-bind-address", freeAddr(), "--metrics-bind-address", "0",
			"--enable-http2", "--shutdown-delay", "3s")
		wh := env.WebhookInstallOptions
		direct := newReviewer(net.JoinHostPort(wh.LocalServingHost, strconv.Itoa(wh.LocalServingPort)), true)
		Eventually(func() error { _, err := direct.post(); return err }, 20*time.Second).Should(Succeed())
		before := direct.review()
		Expect(before.protoMajor).To(Equal(2))
		Expect(before.reused).To(BeTrue())

		session.Signal(syscall.SIGTERM)
		Eventually(session.Err, 2*time.Second).Should(gbytes.Say(`"msg":"stopping"`))
		Expect(direct.review().reused).To(BeTrue(), "the review after SIGTERM came on a new connection")
		Expect(direct.review().reused).To(BeFalse(), "the connection was kept after the GOAWAY")
		Eventually(session, 20*time.Second).Should(gexec.Exit(0))
	})

	It("leaves alone the namespaces and pods its scope flags exclude", func() {
		bg := context.Background()
		included := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "shop-"}}
		excluded := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "batch-"}}
		Expect(k8sClient.Create(bg, included)).To(Succeed())
		Expect(k8sClient.Create(bg, excluded)).To(Succeed())
		start("--health-probe-bind-address", freeAddr(), "--metrics-bind-address", "0",
			"--excluded-namespaces", "kube-node-lease,"+excluded.Name, "--object-selector", "tier notin (batch)")
		for _, ns := range []string{included.Name, excluded.Name} {
			Expect(k8sClient.Create(bg, testobj.Spec().Preset(v1alpha1.PresetAWSNLB).Policy(ns, "nlb"))).To(Succeed())
		}
		admitted := func(ns string, labels map[string]string) map[string]string {
			pod := testobj.MakePod(ns, "app").Labels(labels).Obj()
			Expect(k8sClient.Create(bg, pod, client.DryRunAll)).To(Succeed())
			return pod.Annotations
		}
		Eventually(admitted, 20*time.Second).WithArguments(included.Name, map[string]string(nil)).
			Should(HaveKeyWithValue("keepalive.io/policy", "KeepalivePolicy/"+included.Name+"/nlb"))
		Expect(admitted(excluded.Name, nil)).NotTo(HaveKey("keepalive.io/policy"))
		Expect(admitted(included.Name, map[string]string{"tier": "batch"})).NotTo(HaveKey("keepalive.io/policy"))
	})

	It("refuses metrics to a client that does not authenticate", func() {
		probes, metrics := freeAddr(), freeAddr()
		start("--health-probe-bind-address", probes, "--metrics-bind-address", metrics)
		insecure := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
		Eventually(func() int { code, _ := get(insecure, "https://"+metrics+"/metrics"); return code }, 20*time.Second).
			Should(Equal(http.StatusUnauthorized))
	})

	It("takes the leader lease when leader election is on", func() {
		// After the start: another spec may have left the lease, released.
		started := time.Now().Truncate(time.Second)
		start("--health-probe-bind-address", freeAddr(), "--metrics-bind-address", "0",
			"--leader-elect", "--leader-election-namespace", operatorNS)
		Eventually(func(g Gomega) {
			lease := &coordinationv1.Lease{}
			g.Expect(k8sClient.Get(context.Background(), client.ObjectKey{Namespace: operatorNS, Name: "keepalive-operator.keepalive.io"}, lease)).To(Succeed())
			g.Expect(lease.Spec.HolderIdentity).NotTo(BeNil())
			g.Expect(*lease.Spec.HolderIdentity).NotTo(BeEmpty())
			g.Expect(lease.Spec.AcquireTime).NotTo(BeNil())
			g.Expect(lease.Spec.AcquireTime.Time).To(BeTemporally(">=", started))
		}, 30*time.Second).Should(Succeed())
	})
})

// reviewer sends pod admission reviews straight to a webhook server, over
// one client whose connections are kept alive between reviews.
type reviewer struct {
	client *http.Client
	url    string
}

func newReviewer(addr string, http2 bool) reviewer {
	tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, ForceAttemptHTTP2: http2}
	DeferCleanup(tr.CloseIdleConnections)
	return reviewer{client: &http.Client{Transport: tr, Timeout: 5 * time.Second}, url: "https://" + addr + "/mutate-v1-pod"}
}

// answer is what a review's answer tells of its connection.
type answer struct {
	// close: it carried Connection: close, which net/http's client takes
	// out of the header.
	close      bool
	reused     bool // it came over a connection already used
	protoMajor int
}

// post sends a review and reads its answer in full, for the connection to be
// reused.
func (r reviewer) post() (answer, error) {
	var a answer
	// The last connection counts: an HTTP/2 request may be retried on another.
	trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) { a.reused = info.Reused }}
	req, err := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace),
		http.MethodPost, r.url, bytes.NewReader(podReview("default")))
	if err != nil {
		return a, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := r.client.Do(req)
	if err != nil {
		return a, err
	}
	defer resp.Body.Close()
	out := admissionv1.AdmissionReview{}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return a, err
	}
	if out.Response == nil || !out.Response.Allowed {
		return a, fmt.Errorf("review not allowed: %+v", out.Response)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	a.close, a.protoMajor = resp.Close, resp.ProtoMajor
	return a, nil
}

func (r reviewer) review() answer {
	a, err := r.post()
	ExpectWithOffset(1, err).NotTo(HaveOccurred())
	return a
}

// podReview is an AdmissionReview of the creation of a pod in ns.
func podReview(ns string) []byte {
	pod, err := json.Marshal(testobj.MakePod(ns, "api").Obj())
	Expect(err).NotTo(HaveOccurred())
	review, err := testobj.Review(admissionv1.Create, ns, pod)
	Expect(err).NotTo(HaveOccurred())
	return review
}

// writeCert writes a self-signed certificate for 127.0.0.1 named cn into dir
// as tls.crt and tls.key.
func writeCert(dir, cn string) {
	Expect(testenv.WriteServingCert(dir, cn)).To(Succeed())
}

// servedCN returns the common name of the certificate served at addr.
func servedCN(addr string) string {
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: time.Second}, "tcp", addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		return ""
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0].Subject.CommonName
}

var _ = It("reloads the webhook certificate when its files change", func() {
	dir := GinkgoT().TempDir()
	writeCert(dir, "first")
	_, port, err := net.SplitHostPort(freeAddr())
	Expect(err).NotTo(HaveOccurred())
	// The later flags override start's.
	start("--health-probe-bind-address", freeAddr(), "--metrics-bind-address", "0",
		"--webhook-cert-path", dir, "--webhook-port", port)
	addr := net.JoinHostPort("127.0.0.1", port)
	Eventually(servedCN).WithArguments(addr).WithTimeout(20 * time.Second).Should(Equal("first"))
	writeCert(dir, "second")
	Eventually(servedCN).WithArguments(addr).WithTimeout(30 * time.Second).Should(Equal("second"))
})

var _ = It("manages its webhook certificate with --cert-rotation", func() {
	ctx := context.Background()
	secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: operatorNS, Name: "keepalive-operator-webhook-tls"}}
	Expect(k8sClient.Create(ctx, secret)).To(Succeed())
	never := &metav1.LabelSelector{MatchLabels: map[string]string{"never": "matches"}}
	ignore, none := admissionregistrationv1.Ignore, admissionregistrationv1.SideEffectClassNone
	config := &admissionregistrationv1.MutatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: "rotation-test"},
		Webhooks: []admissionregistrationv1.MutatingWebhook{{
			Name:                    "pods.keepalive.io",
			AdmissionReviewVersions: []string{"v1"},
			ClientConfig: admissionregistrationv1.WebhookClientConfig{Service: &admissionregistrationv1.ServiceReference{
				Namespace: operatorNS, Name: "keepalive-operator-webhook", Path: new("/mutate-v1-pod")}},
			FailurePolicy: &ignore, SideEffects: &none, NamespaceSelector: never,
		}},
	}
	Expect(k8sClient.Create(ctx, config)).To(Succeed())

	probes, certDir := freeAddr(), GinkgoT().TempDir()
	_, port, err := net.SplitHostPort(freeAddr())
	Expect(err).NotTo(HaveOccurred())
	start("--health-probe-bind-address", probes, "--metrics-bind-address", "0", "--cert-rotation",
		"--webhook-configuration-name", "rotation-test", "--webhook-cert-path", certDir, "--webhook-port", port)

	Eventually(func() map[string][]byte {
		_ = k8sClient.Get(ctx, client.ObjectKeyFromObject(secret), secret)
		return secret.Data
	}, 30*time.Second).Should(And(HaveKey("ca.crt"), HaveKey("tls.crt"), HaveKey("tls.key")))
	// The kubelet projects the Secret into the pod; here the spec does.
	for name, data := range secret.Data {
		Expect(os.WriteFile(filepath.Join(certDir, name), data, 0o600)).To(Succeed())
	}
	Eventually(func() []byte {
		_ = k8sClient.Get(ctx, client.ObjectKeyFromObject(config), config)
		return config.Webhooks[0].ClientConfig.CABundle
	}, 30*time.Second).Should(Equal(secret.Data["ca.crt"]))

	pool := x509.NewCertPool()
	Expect(pool.AppendCertsFromPEM(secret.Data["ca.crt"])).To(BeTrue())
	Eventually(func() error {
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: time.Second}, "tcp", net.JoinHostPort("127.0.0.1", port),
			&tls.Config{RootCAs: pool, ServerName: "keepalive-operator-webhook." + operatorNS + ".svc"})
		if err != nil {
			return err
		}
		return conn.Close()
	}, 30*time.Second).Should(Succeed(), "the webhook does not serve a certificate of the injected CA")
	Eventually(func() int { code, _ := get(http.DefaultClient, "http://"+probes+"/readyz"); return code }, 20*time.Second).Should(Equal(http.StatusOK))
})

var _ = DescribeTable("flag errors",
	func(args []string, want string) {
		_, err := parseFlags(args)
		Expect(err).To(MatchError(ContainSubstring(want)))
	},
	Entry("webhook port out of range", []string{"--webhook-port", "70000"}, "--webhook-port must be between 1 and 65535, is 70000"),
	Entry("a negative rollout limit", []string{"--max-concurrent-rollouts", "-1"}, "--max-concurrent-rollouts must be 0 (no limit) or more, is -1"),
	Entry("a bad excluded namespace", []string{"--excluded-namespaces", "batch,Not_A_Name"}, `--excluded-namespaces: "Not_A_Name" is not a namespace name`),
	Entry("a bad namespace selector", []string{"--namespace-selector", "team in (web"}, "--namespace-selector: "),
	Entry("a bad object selector", []string{"--object-selector", "=x"}, "--object-selector: "),
	Entry("a negative rate limit", []string{"--kube-api-qps", "-5"}, "--kube-api-qps and --kube-api-burst must be 0 or more, are -5 and 0"),
	Entry("no progress deadline", []string{"--rollout-progress-deadline", "0s"}, "--rollout-progress-deadline must be positive, is 0s"),
	Entry("unknown flag", []string{"--metrics-addr", ":8080"}, "flag provided but not defined: -metrics-addr"),
	Entry("stray argument", []string{"start"}, "unexpected arguments: [start]"),
)

var _ = It("defaults to the documented ports", func() {
	o, err := parseFlags(nil)
	Expect(err).NotTo(HaveOccurred())
	Expect(fmt.Sprint(o.metricsAddr, " ", o.probeAddr, " ", o.webhookPort, " ", o.metricsSecure, " ", o.leaderElect, " ", o.maxRollouts)).
		To(Equal(":8443 :8081 9443 true false 5"))
})

var _ = DescribeTable("the client's rate limit, whatever the kubeconfig says",
	func(args []string, wantQPS float32, wantBurst int) {
		o, err := parseFlags(args)
		Expect(err).NotTo(HaveOccurred())
		cfg := &rest.Config{QPS: 5, Burst: 10} // as a kubeconfig leaves it to client-go
		limitClient(cfg, o.qps, o.burst)
		Expect([]any{cfg.QPS, cfg.Burst}).To(Equal([]any{wantQPS, wantBurst}))
		// The client that the config makes has a rate limiter only when asked.
		c, err := rest.RESTClientFor(&rest.Config{Host: "https://127.0.0.1:1", QPS: cfg.QPS, Burst: cfg.Burst,
			ContentConfig: rest.ContentConfig{GroupVersion: &corev1.SchemeGroupVersion, NegotiatedSerializer: scheme.Codecs.WithoutConversion()}})
		Expect(err).NotTo(HaveOccurred())
		Expect(c.GetRateLimiter() == nil).To(Equal(wantQPS < 0))
		if wantQPS > 0 {
			Expect(c.GetRateLimiter().QPS()).To(Equal(wantQPS))
		}
	},
	Entry("none by default: the API server's priority and fairness", nil, float32(-1), 0),
	Entry("a limit and twice as much at once", []string{"--kube-api-qps", "20"}, float32(20), 40),
	Entry("a limit and a burst", []string{"--kube-api-qps", "20", "--kube-api-burst", "25"}, float32(20), 25),
)
