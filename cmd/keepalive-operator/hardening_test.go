package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/keepalive-operator/keepalive-operator/internal/testobj"
)

// servers starts the operator with a webhook server and a secure metrics
// server on local ports, and returns their addresses once both listen.
func servers(args ...string) (webhook, metrics string) {
	dir := GinkgoT().TempDir()
	writeCert(dir, "hardening")
	_, port, err := net.SplitHostPort(freeAddr())
	Expect(err).NotTo(HaveOccurred())
	webhook, metrics = net.JoinHostPort("127.0.0.1", port), freeAddr()
	start(append([]string{"--health-probe-bind-address", freeAddr(), "--metrics-bind-address", metrics,
		"--webhook-cert-path", dir, "--webhook-port", port}, args...)...)
	for _, addr := range []string{webhook, metrics} {
		Eventually(func() error { _, err := handshake(addr, nil); return err }, 20*time.Second).Should(Succeed(), addr)
	}
	return webhook, metrics
}

// handshake opens a TLS connection to addr offering the application
// protocols protos (none: no ALPN), and returns the one agreed on.
func handshake(addr string, protos []string) (string, error) {
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: time.Second}, "tcp", addr,
		&tls.Config{InsecureSkipVerify: true, NextProtos: protos})
	if err != nil {
		return "", err
	}
	defer conn.Close()
	return conn.ConnectionState().NegotiatedProtocol, nil
}

// protoMajor is the HTTP major version of the answer to a GET of url by a
// client that prefers HTTP/2.
func protoMajor(url string) int {
	tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, ForceAttemptHTTP2: true}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Get(url)
	Expect(err).NotTo(HaveOccurred())
	defer resp.Body.Close()
	return resp.ProtoMajor
}

var _ = Describe("the webhook and metrics servers", func() {
	It("speak HTTP/1.1 only by default: an HTTP/2 client falls back, an HTTP/2-only one is refused", func() {
		webhook, metrics := servers()
		for _, addr := range []string{webhook, metrics} {
			Expect(handshake(addr, []string{"h2", "http/1.1"})).To(Equal("http/1.1"), addr)
			_, err := handshake(addr, []string{"h2"})
			Expect(err).To(MatchError(ContainSubstring("no application protocol")), addr)
			Expect(protoMajor("https://"+addr+"/metrics")).To(Equal(1), addr)
		}
	})

	It("offer HTTP/2 with --enable-http2", func() {
		webhook, metrics := servers("--enable-http2")
		for _, addr := range []string{webhook, metrics} {
			Expect(handshake(addr, []string{"h2", "http/1.1"})).To(Equal("h2"), addr)
			Expect(handshake(addr, []string{"http/1.1"})).To(Equal("http/1.1"), addr)
			Expect(protoMajor("https://"+addr+"/metrics")).To(Equal(2), addr)
		}
	})

	It("refuse TLS 1.1", func() {
		webhook, metrics := servers()
		for _, addr := range []string{webhook, metrics} {
			_, err := tls.DialWithDialer(&net.Dialer{Timeout: time.Second}, "tcp", addr,
				&tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11})
			Expect(err).To(MatchError(ContainSubstring("protocol version not supported")), addr)
		}
	})
})

var _ = Describe("the webhook server", func() {
	It("closes the connection of a client that sends its body too slowly, within the read timeout", func() {
		const timeout = 2 * time.Second
		webhook, _ := servers("--webhook-read-timeout", timeout.String())
		conn, err := tls.Dial("tcp", webhook, &tls.Config{InsecureSkipVerify: true})
		Expect(err).NotTo(HaveOccurred())
		defer conn.Close()
		began := time.Now()
		// 10 of the 100 bytes promised, then nothing.
		_, err = fmt.Fprintf(conn, "POST /mutate-v1-pod HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n%s",
			webhook, `{"kind":"A`)
		Expect(err).NotTo(HaveOccurred())
		Expect(conn.SetReadDeadline(time.Now().Add(timeout + 30*time.Second))).To(Succeed())
		answer, err := io.ReadAll(conn) // until the server closes the connection
		took := time.Since(began)
		Expect(err).NotTo(HaveOccurred(), "the server still holds the connection after %s", took)
		GinkgoWriter.Printf("slow client: answered and closed after %s: %q\n", took, firstLine(answer))
		Expect(took).To(BeNumerically(">=", timeout-100*time.Millisecond))
		Expect(took).To(BeNumerically("<", timeout+5*time.Second))
	})

	It("stops reading an oversized review, allows the pod unchanged and keeps serving", func() {
		webhook, _ := servers()
		c := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
		// 64 MiB, sent in full if the server reads it all.
		body := io.MultiReader(strings.NewReader(`{"kind":"AdmissionReview","padding":"`), io.LimitReader(zeros{}, 64<<20))
		resp, err := c.Post("https://"+webhook+"/mutate-v1-pod", "application/json", body)
		Expect(err).NotTo(HaveOccurred())
		answer, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		GinkgoWriter.Printf("oversized review: HTTP %d %s, connection closed: %t\n", resp.StatusCode, answer, resp.Close)
		// Fail open, as for any review it cannot read: no patch, and no uid,
		// which the API server takes for a webhook error (failurePolicy).
		Expect(string(answer)).To(MatchJSON(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"","allowed":true}}`))
		Expect(resp.Close).To(BeTrue(), "the rest of the body is not read")

		By("answering the next review")
		resp, err = c.Post("https://"+webhook+"/mutate-v1-pod", "application/json", bytes.NewReader(podReview("shop")))
		Expect(err).NotTo(HaveOccurred())
		defer resp.Body.Close()
		out := admissionv1.AdmissionReview{}
		Expect(json.NewDecoder(resp.Body).Decode(&out)).To(Succeed())
		Expect(out.Response.UID).To(BeEquivalentTo(testobj.ReviewUID))
		Expect(out.Response.Allowed).To(BeTrue())
	})
})

// zeros reads as an endless run of '0'.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = '0'
	}
	return len(p), nil
}

func firstLine(b []byte) string {
	line, _, _ := strings.Cut(string(b), "\r\n")
	return line
}

var _ = DescribeTable("hardening flags",
	func(args []string, check func(options)) {
		o, err := parseFlags(args)
		Expect(err).NotTo(HaveOccurred())
		check(o)
	},
	Entry("HTTP/2 off and a 10 s body deadline by default", nil, func(o options) {
		Expect(o.enableHTTP2).To(BeFalse())
		Expect(o.webhookReadTime).To(Equal(10 * time.Second))
	}),
	Entry("HTTP/2 on", []string{"--enable-http2"}, func(o options) { Expect(o.enableHTTP2).To(BeTrue()) }),
)

var _ = It("refuses a webhook read timeout that is not positive", func() {
	_, err := parseFlags([]string{"--webhook-read-timeout", "0s"})
	Expect(err).To(MatchError("--webhook-read-timeout must be positive, is 0s"))
})

var _ = DescribeTable("the client sends its requests without client-go's 5 per second, whatever the kubeconfig",
	func(load func() (*rest.Config, error)) {
		cfg, err := load()
		Expect(err).NotTo(HaveOccurred())
		o, err := parseFlags(nil)
		Expect(err).NotTo(HaveOccurred())
		limitClient(cfg, o.qps, o.burst)
		cs, err := kubernetes.NewForConfig(cfg)
		Expect(err).NotTo(HaveOccurred())
		// 50 requests at once: at 5 per second with a burst of 10, 8 s.
		began := time.Now()
		var wg sync.WaitGroup
		errs := make(chan error, 50)
		for range 50 {
			wg.Go(func() {
				_, err := cs.CoreV1().Namespaces().Get(context.Background(), "default", metav1.GetOptions{})
				errs <- err
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			Expect(err).NotTo(HaveOccurred())
		}
		took := time.Since(began)
		GinkgoWriter.Printf("50 requests in %s\n", took)
		Expect(took).To(BeNumerically("<", 2*time.Second))
	},
	Entry("--kubeconfig", func() (*rest.Config, error) { return restConfig(env.Kubeconfig) }),
	Entry("KUBECONFIG", func() (*rest.Config, error) {
		GinkgoT().Setenv("KUBECONFIG", env.Kubeconfig)
		return restConfig("")
	}),
)

var _ = It("narrows the certificate rotator's lists and watches to its objects by name", func() {
	var mu sync.Mutex
	seen := map[string]string{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen[r.URL.Path] = r.URL.Query().Get("fieldSelector")
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"kind":"List","apiVersion":"v1","metadata":{},"items":[]}`)
	}))
	defer srv.Close()
	// A server with a path of its own, as behind a proxy.
	cfg := byName(&rest.Config{Host: srv.URL + "/proxy"}, map[string]string{
		"/api/v1/namespaces/keepalive-system/secrets":                         "webhook-tls",
		"/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations": "keepalive-operator",
	})
	cs, err := kubernetes.NewForConfig(cfg)
	Expect(err).NotTo(HaveOccurred())
	bg := context.Background()
	_, _ = cs.CoreV1().Secrets("keepalive-system").List(bg, metav1.ListOptions{})
	_, _ = cs.AdmissionregistrationV1().MutatingWebhookConfigurations().List(bg, metav1.ListOptions{})
	_, _ = cs.CoreV1().Secrets("shop").List(bg, metav1.ListOptions{})
	_, _ = cs.CoreV1().ConfigMaps("keepalive-system").List(bg, metav1.ListOptions{})
	Expect(seen).To(Equal(map[string]string{
		"/proxy/api/v1/namespaces/keepalive-system/secrets":                         "metadata.name=webhook-tls",
		"/proxy/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations": "metadata.name=keepalive-operator",
		"/proxy/api/v1/namespaces/shop/secrets":                                     "",
		"/proxy/api/v1/namespaces/keepalive-system/configmaps":                      "",
	}))
})
