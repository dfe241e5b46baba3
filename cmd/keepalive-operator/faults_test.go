package main

import (
	"bytes"
	"context"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"github.com/open-policy-agent/cert-controller/pkg/rotator"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/keepalive-operator/keepalive-operator/api/v1alpha1"
	"github.com/keepalive-operator/keepalive-operator/internal/keepalive"
	"github.com/keepalive-operator/keepalive-operator/internal/testobj"
)

// Certificate rotation under load: the operator runs with --cert-rotation,
// its certificate is made to expire within cert-controller's lookahead
// (90 days), and pods are created all the while through the real API
// server, which calls the webhook over TLS with the caBundle the operator
// injects. No create may fail and every pod must carry the values.

const (
	// rotationLookahead is cert-controller's default: a certificate that
	// is no longer valid this far ahead is renewed.
	rotationLookahead = 90 * 24 * time.Hour
	// kubeletDelay is how long the spec, standing in for the kubelet,
	// takes to project a changed Secret into the webhook's folder. A
	// kubelet takes up to its sync period (a minute) plus its cache's TTL.
	kubeletDelay = 2 * time.Second
	// nearExpiryMargin is how long after the spec writes a near-expiry
	// certificate it enters the lookahead. The certificate settles within
	// it (kubeletDelay, the caBundle, a pod admitted): until then the
	// operator's own writes send events of the Secret and the webhook
	// configuration, and one that came after the certificate entered the
	// lookahead would renew it before the spec touches the Secret.
	nearExpiryMargin = 10 * time.Second
	// installedConfig is the webhook configuration of config/webhook,
	// which envtest installs.
	installedConfig = "webhook-configuration"
)

// rotationFixture is an operator with --cert-rotation whose webhook the API
// server calls through a Service, as in a cluster.
type rotationFixture struct {
	secret  client.ObjectKey
	config  client.ObjectKey
	addr    string // where the webhook server listens
	dnsName string // what its certificate is for
	ns      string // a namespace with a policy for every pod
	fast    client.Client
}

// newRotationFixture creates the Secret, a Service of type ExternalName that
// resolves to this host, a webhook configuration with the project's rules
// and selectors pointing at the Service, and starts the operator and a
// stand-in for the kubelet that copies the Secret into the certificate
// folder kubeletDelay after each change.
func newRotationFixture(name string) *rotationFixture {
	ctx := context.Background()
	_, port, err := net.SplitHostPort(freeAddr())
	Expect(err).NotTo(HaveOccurred())
	portNum, _ := strconv.Atoi(port)
	f := &rotationFixture{
		secret:  client.ObjectKey{Namespace: operatorNS, Name: name + "-tls"},
		config:  client.ObjectKey{Name: name},
		addr:    net.JoinHostPort("127.0.0.1", port),
		dnsName: name + "." + operatorNS + ".svc",
	}
	cfg := rest.CopyConfig(env.Config)
	cfg.QPS, cfg.Burst = -1, 0
	f.fast, err = client.New(cfg, client.Options{Scheme: env.Scheme})
	Expect(err).NotTo(HaveOccurred())

	create := func(obj client.Object) {
		Expect(k8sClient.Create(ctx, obj)).To(Succeed())
		DeferCleanup(func() { Expect(client.IgnoreNotFound(k8sClient.Delete(ctx, obj))).To(Succeed()) })
	}
	create(&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: operatorNS, Name: f.secret.Name}})
	create(&corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: operatorNS, Name: name},
		Spec:       corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "localhost"},
	})
	var installed admissionregistrationv1.MutatingWebhookConfiguration
	Expect(k8sClient.Get(ctx, client.ObjectKey{Name: installedConfig}, &installed)).To(Succeed())
	config := &admissionregistrationv1.MutatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: name}}
	for _, wh := range installed.Webhooks {
		// envtest points the installed configuration at a URL; this one
		// goes through the Service, as the chart's does.
		wh.ClientConfig = admissionregistrationv1.WebhookClientConfig{Service: &admissionregistrationv1.ServiceReference{
			Namespace: operatorNS, Name: name, Path: new("/mutate-v1-pod"), Port: new(int32(portNum)),
		}}
		config.Webhooks = append(config.Webhooks, wh)
	}
	create(config)

	certDir := GinkgoT().TempDir()
	kubelet, stop := context.WithCancel(ctx)
	var synced sync.WaitGroup
	synced.Go(func() { project(kubelet, f.secret, certDir) })
	DeferCleanup(func() { stop(); synced.Wait() })
	start("--health-probe-bind-address", freeAddr(), "--metrics-bind-address", "0", "--cert-rotation",
		"--webhook-secret-name", f.secret.Name, "--webhook-service-name", name, "--webhook-configuration-name", name,
		"--webhook-cert-path", certDir, "--webhook-port", port)

	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "rotation-"}}
	Expect(k8sClient.Create(ctx, ns)).To(Succeed())
	f.ns = ns.Name
	Expect(k8sClient.Create(ctx, testobj.Spec().Preset(v1alpha1.PresetAWSNLB).Policy(f.ns, "nlb"))).To(Succeed())
	f.settled(time.Minute)
	return f
}

// project copies the Secret's keys into dir as the kubelet does for a
// Secret volume, kubeletDelay after it sees a change, until ctx ends.
func project(ctx context.Context, key client.ObjectKey, dir string) {
	var written map[string][]byte
	var changed time.Time
	for ctx.Err() == nil {
		time.Sleep(50 * time.Millisecond)
		var s corev1.Secret
		if err := k8sClient.Get(ctx, key, &s); err != nil || len(s.Data) == 0 || sameData(s.Data, written) {
			changed = time.Time{}
			continue
		}
		if changed.IsZero() {
			changed = time.Now()
		}
		if time.Since(changed) < kubeletDelay {
			continue
		}
		// The key first: the webhook server keeps its certificate until
		// it reads a pair that matches.
		for _, name := range []string{"tls.key", "tls.crt", "ca.crt", "ca.key"} {
			if err := os.WriteFile(filepath.Join(dir, name), s.Data[name], 0o600); err != nil {
				GinkgoWriter.Println("project the Secret:", err)
			}
		}
		written, changed = s.Data, time.Time{}
	}
}

func sameData(a, b map[string][]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if !bytes.Equal(v, b[k]) {
			return false
		}
	}
	return true
}

// state is what the Secret holds, what the webhook configuration trusts
// and what the webhook server serves.
type state struct {
	secret   map[string][]byte
	caBundle []byte
	served   *x509.Certificate
}

func (f *rotationFixture) state() state {
	ctx := context.Background()
	var st state
	var s corev1.Secret
	if k8sClient.Get(ctx, f.secret, &s) == nil {
		st.secret = s.Data
	}
	var c admissionregistrationv1.MutatingWebhookConfiguration
	if k8sClient.Get(ctx, f.config, &c) == nil && len(c.Webhooks) > 0 {
		st.caBundle = c.Webhooks[0].ClientConfig.CABundle
	}
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: time.Second}, "tcp", f.addr, &tls.Config{InsecureSkipVerify: true})
	if err == nil {
		st.served = conn.ConnectionState().PeerCertificates[0]
		_ = conn.Close()
	}
	return st
}

// consistent says whether the server serves the Secret's certificate and the
// webhook configuration trusts its CA.
func (st state) consistent() error {
	if st.served == nil {
		return fmt.Errorf("the webhook serves nothing")
	}
	cert := parseCert(st.secret["tls.crt"])
	if cert == nil || !cert.Equal(st.served) {
		return fmt.Errorf("the webhook does not serve the Secret's certificate yet")
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(st.caBundle) {
		return fmt.Errorf("no caBundle")
	}
	if _, err := st.served.Verify(x509.VerifyOptions{Roots: pool}); err != nil {
		return fmt.Errorf("the caBundle does not trust the served certificate: %w", err)
	}
	if !bytes.Contains(st.caBundle, st.secret["ca.crt"]) {
		return fmt.Errorf("the caBundle lacks the Secret's CA")
	}
	return nil
}

// settled waits until the state is consistent and the API server admits a
// pod through the webhook.
func (f *rotationFixture) settled(timeout time.Duration) {
	Eventually(func() error { return f.state().consistent() }, timeout, 50*time.Millisecond).Should(Succeed())
	Eventually(func() error {
		pod := testobj.MakePod(f.ns, "probe").Obj()
		if err := f.fast.Create(context.Background(), pod, client.DryRunAll); err != nil {
			return err
		}
		if pod.Annotations[keepalive.AnnotationPolicy] == "" {
			return fmt.Errorf("the pod was admitted without the values")
		}
		return nil
	}, timeout, 50*time.Millisecond).Should(Succeed())
}

// writeSecret replaces the Secret's certificates.
func (f *rotationFixture) writeSecret(ca *rotator.KeyPairArtifacts, certPEM, keyPEM []byte) {
	var s corev1.Secret
	Expect(k8sClient.Get(context.Background(), f.secret, &s)).To(Succeed())
	s.Data = map[string][]byte{"ca.crt": ca.CertPEM, "ca.key": ca.KeyPEM, "tls.crt": certPEM, "tls.key": keyPEM}
	Expect(k8sClient.Update(context.Background(), &s)).To(Succeed())
}

// touch changes the Secret's annotations: cert-controller checks its
// certificates on every event of its Secret, as it does every 12 hours.
func (f *rotationFixture) touch() {
	var s corev1.Secret
	Expect(k8sClient.Get(context.Background(), f.secret, &s)).To(Succeed())
	patch := client.MergeFrom(s.DeepCopy())
	metav1.SetMetaDataAnnotation(&s.ObjectMeta, "faults.keepalive.io/touched", time.Now().Format(time.RFC3339Nano))
	Expect(k8sClient.Patch(context.Background(), &s, patch)).To(Succeed())
}

// issuer makes certificates as the operator's rotator does.
func (f *rotationFixture) issuer() *rotator.CertRotator {
	return &rotator.CertRotator{
		CAName: "keepalive-operator-ca", CAOrganization: "keepalive-operator", DNSName: f.dnsName,
		ExtKeyUsages: &[]x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
}

func parseCert(raw []byte) *x509.Certificate {
	b, _ := pem.Decode(raw)
	if b == nil {
		return nil
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		return nil
	}
	return c
}

// caOf reads the CA of the Secret's data.
func caOf(data map[string][]byte) *rotator.KeyPairArtifacts {
	cert := parseCert(data["ca.crt"])
	Expect(cert).NotTo(BeNil())
	b, _ := pem.Decode(data["ca.key"])
	Expect(b).NotTo(BeNil())
	key, err := x509.ParsePKCS1PrivateKey(b.Bytes)
	Expect(err).NotTo(HaveOccurred())
	return &rotator.KeyPairArtifacts{Cert: cert, Key: key, CertPEM: data["ca.crt"], KeyPEM: data["ca.key"]}
}

// creates is a tally of pod creates.
type creates struct {
	total, failed, uninjected atomic.Int64
	mu                        sync.Mutex
	firstProblem              string
}

func (c *creates) problem(format string, args ...any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.firstProblem == "" {
		c.firstProblem = fmt.Sprintf(format, args...)
	}
}

func (c *creates) String() string {
	return fmt.Sprintf("%d creates, %d failed, %d without the values (first: %q)", c.total.Load(), c.failed.Load(), c.uninjected.Load(), c.firstProblem)
}

// createContinuously creates pods in the fixture's namespace, workers at a
// time, until the returned function is called.
func (f *rotationFixture) createContinuously(workers int) (tally *creates, stop func()) {
	tally = &creates{}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for ctx.Err() == nil {
				pod := testobj.MakePod(f.ns, "").Obj()
				pod.GenerateName = "rotation-"
				err := f.fast.Create(context.Background(), pod)
				tally.total.Add(1)
				switch {
				case err != nil:
					tally.failed.Add(1)
					tally.problem("%s: %v", time.Now().Format(time.StampMilli), err)
				case pod.Annotations[keepalive.AnnotationPolicy] == "" || pod.Spec.SecurityContext == nil ||
					len(pod.Spec.SecurityContext.Sysctls) == 0:
					tally.uninjected.Add(1)
					tally.problem("%s: %s admitted without the values", time.Now().Format(time.StampMilli), pod.Name)
				}
			}
		})
	}
	return tally, func() { cancel(); wg.Wait() }
}

// rotation is what rotate saw.
type rotation struct {
	before state
	// secret, caBundle and served are when, after the spec touched the
	// Secret, the Secret held a new certificate, the caBundle changed (zero
	// if it did not) and the server served the new certificate with the
	// caBundle trusting it.
	secret, caBundle, served time.Duration
	tally                    *creates
}

func (r rotation) String() string {
	bundle := "caBundle unchanged"
	if r.caBundle != 0 {
		bundle = "caBundle changed after " + r.caBundle.Round(time.Millisecond).String()
	}
	return fmt.Sprintf("Secret renewed after %s, %s, new certificate served after %s; %s",
		r.secret.Round(time.Millisecond), bundle, r.served.Round(time.Millisecond), r.tally)
}

// rotateUnderLoad rotates (see rotate), reports the figures under name, and
// checks that every pod created meanwhile was admitted with the values. It
// returns the state before and after.
func (f *rotationFixture) rotateUnderLoad(notAfter time.Time, name string) (before, after state) {
	GinkgoHelper()
	r := f.rotate(notAfter)
	before, tally, after := r.before, r.tally, f.state()
	report := r.String()
	AddReportEntry(name, report)
	GinkgoWriter.Println(report)
	Expect(tally.failed.Load()).To(BeZero(), report)
	Expect(tally.uninjected.Load()).To(BeZero(), report)
	Expect(tally.total.Load()).To(BeNumerically(">=", 20), report)
	return before, after
}

// rotate makes the operator renew its certificate while pods are created.
// nearExpiry is the certificate's notAfter, a whole second: the spec touches
// the Secret as soon as the certificate is within the lookahead.
func (f *rotationFixture) rotate(nearExpiry time.Time) rotation {
	due := nearExpiry.Add(-rotationLookahead)
	GinkgoWriter.Printf("the near-expiry certificate settled %s before it enters the lookahead\n", time.Until(due).Round(time.Millisecond))
	Expect(time.Until(due)).To(BeNumerically(">", time.Second),
		"the near-expiry certificate settled less than a second before it enters the lookahead")
	// Creates before the rotation too, for a second: the baseline is zero
	// failures.
	time.Sleep(time.Until(due) - time.Second)
	r := rotation{before: f.state()}
	tally, stop := f.createContinuously(4)
	r.tally = tally
	time.Sleep(time.Until(due))
	// The rotation measured is the one the touch starts.
	if st := f.state(); !bytes.Equal(st.secret["tls.crt"], r.before.secret["tls.crt"]) {
		stop()
		Fail("the certificate was renewed before the spec touched the Secret")
	}
	start := time.Now()
	f.touch()
	Eventually(func() error {
		st := f.state()
		if r.caBundle == 0 && !bytes.Equal(st.caBundle, r.before.caBundle) {
			r.caBundle = time.Since(start)
		}
		if bytes.Equal(st.secret["tls.crt"], r.before.secret["tls.crt"]) {
			return fmt.Errorf("the Secret still holds the old certificate")
		}
		if r.secret == 0 {
			r.secret = time.Since(start)
		}
		return st.consistent()
	}, 30*time.Second, 20*time.Millisecond).Should(Succeed())
	r.served = time.Since(start)
	// And after it: the API server may still hold connections of the old
	// configuration.
	time.Sleep(time.Second)
	stop()
	return r
}

var _ = Describe("certificate rotation with pods created throughout", Serial, func() {
	It("renews a serving certificate near expiry with the same CA", func() {
		f := newRotationFixture("rotation-serving")
		ca := caOf(f.state().secret)
		// A serving certificate of the operator's CA that enters the
		// lookahead nearExpiryMargin from now (a certificate's notAfter is
		// a whole second).
		notAfter := time.Now().Add(rotationLookahead + nearExpiryMargin).Truncate(time.Second)
		certPEM, keyPEM, err := f.issuer().CreateCertPEM(ca, time.Now().Add(-time.Hour), notAfter)
		Expect(err).NotTo(HaveOccurred())
		f.writeSecret(ca, certPEM, keyPEM)
		f.settled(30 * time.Second)
		Expect(f.state().served.NotAfter).To(BeTemporally("~", notAfter, time.Second))

		before, after := f.rotateUnderLoad(notAfter, "serving certificate rotation")

		// Only the serving certificate is new: the same CA, the same
		// caBundle, a certificate valid for a year served.
		Expect(after.secret["ca.crt"]).To(Equal(before.secret["ca.crt"]))
		Expect(after.caBundle).To(Equal(before.caBundle))
		Expect(after.served.NotAfter).To(BeTemporally(">", time.Now().Add(364*24*time.Hour)))
		Expect(after.served.PublicKey.(*rsa.PublicKey).Equal(before.served.PublicKey)).To(BeFalse())
	})

	It("renews a CA near expiry and its serving certificate", func() {
		f := newRotationFixture("rotation-ca")
		// A CA and serving certificate that enter the lookahead
		// nearExpiryMargin from now.
		notAfter := time.Now().Add(rotationLookahead + nearExpiryMargin).Truncate(time.Second)
		ca, err := f.issuer().CreateCACert(time.Now().Add(-time.Hour), notAfter)
		Expect(err).NotTo(HaveOccurred())
		certPEM, keyPEM, err := f.issuer().CreateCertPEM(ca, time.Now().Add(-time.Hour), notAfter)
		Expect(err).NotTo(HaveOccurred())
		f.writeSecret(ca, certPEM, keyPEM)
		Eventually(func() []byte { return f.state().caBundle }, 10*time.Second).Should(ContainSubstring(string(ca.CertPEM)))
		f.settled(30 * time.Second)
		Expect(f.state().served.NotAfter).To(BeTemporally("~", notAfter, time.Second))

		before, after := f.rotateUnderLoad(notAfter, "CA rotation")

		// A new CA, valid for years, in the Secret and first in the
		// caBundle, which keeps the CA it replaced for the handover.
		newCA := parseCert(after.secret["ca.crt"])
		Expect(newCA.Equal(ca.Cert)).To(BeFalse())
		Expect(newCA.NotAfter).To(BeTemporally(">", time.Now().Add(9*365*24*time.Hour)))
		Expect(parseCert(after.caBundle).Equal(newCA)).To(BeTrue(), "the new CA is not first in the caBundle")
		Expect(after.caBundle).To(ContainSubstring(string(before.secret["ca.crt"])))
		Expect(after.served.NotAfter).To(BeTemporally(">", time.Now().Add(364*24*time.Hour)))
		Expect(after.served.CheckSignatureFrom(newCA)).To(Succeed())
	})
})

var _ = Describe("the caBundle across a change of CA", func() {
	issuer := &rotator.CertRotator{CAName: "keepalive-operator-ca", CAOrganization: "keepalive-operator"}
	newCA := func(notAfter time.Time) []byte {
		ca, err := issuer.CreateCACert(time.Now().Add(-time.Hour), notAfter)
		Expect(err).NotTo(HaveOccurred())
		return ca.CertPEM
	}
	year := time.Now().Add(365 * 24 * time.Hour)
	a, b, c, expired := newCA(year), newCA(year), newCA(year), newCA(time.Now().Add(-time.Minute))
	join := func(pems ...[]byte) []byte { return bytes.Join(pems, nil) }

	DescribeTable("keeps the CA being replaced, and only it",
		func(next, prev, want []byte) {
			Expect(string(withReplacedCA(next, prev, time.Now()))).To(Equal(string(want)))
		},
		Entry("the first CA", a, nil, a),
		Entry("the same CA again", a, a, a),
		Entry("a new CA keeps the one it replaces", b, a, join(b, a)),
		Entry("the same new CA again keeps it still", b, join(b, a), join(b, a)),
		Entry("a third CA drops the first", c, join(b, a), join(c, b)),
		Entry("an expired CA is dropped", b, expired, b),
		Entry("a caBundle that is not PEM is dropped", b, []byte("not a certificate"), b),
	)
})
