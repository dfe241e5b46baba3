// Package testenv starts the real kube-apiserver and etcd of envtest for the
// suites, with the operator's CRDs and, when asked, its webhook configuration.
package testenv

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	kruntime "k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/webhook"

	"github.com/keepalive-operator/keepalive-operator/api/v1alpha1"
)

// Env is a running control plane.
type Env struct {
	*envtest.Environment
	Scheme *kruntime.Scheme
	// Client is an administrator's client; its warnings go to the handler
	// given to Start.
	Client client.Client
	// Kubeconfig is the path of an administrator's kubeconfig.
	Kubeconfig string
	// AuditLog is the API server's audit log of OperatorUser's requests,
	// when Start was asked for Audit.
	AuditLog string
}

// OperatorUser is the user the operator's code runs as in the suites, so
// that the API server's audit log tells its requests from the specs'.
const OperatorUser = "keepalive-operator"

// Root is the repository's top folder.
func Root() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// What Start installs.
const (
	// CRDs installs the operator's CRDs.
	CRDs = 1 << iota
	// Webhooks installs the webhook configuration of config/webhook,
	// pointing at a local port (Environment.WebhookInstallOptions says
	// where).
	Webhooks
	// Audit has the API server log every request of OperatorUser.
	Audit
)

// auditPolicy logs the operator's requests, once each, with no bodies.
const auditPolicy = `apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
  users: [` + OperatorUser + `]
- level: None
`

// Start starts a control plane with what install says installed. tmp holds
// the kubeconfig.
func Start(install int, warnings rest.WarningHandler, tmp string) (*Env, error) {
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		return nil, errors.New("KUBEBUILDER_ASSETS is not set: run `make test`, or export KUBEBUILDER_ASSETS=$(hack/setup-envtest.sh)")
	}
	e := &Env{Environment: &envtest.Environment{}}
	if install&CRDs != 0 {
		e.CRDDirectoryPaths = []string{filepath.Join(Root(), "config", "crd", "bases")}
		e.ErrorIfCRDPathMissing = true
	}
	if install&Webhooks != 0 {
		e.WebhookInstallOptions.Paths = []string{filepath.Join(Root(), "config", "webhook")}
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		// The host too: envtest sets it, and names it in its serving
		// certificate, only when it picks the port itself.
		e.WebhookInstallOptions.LocalServingHost = "127.0.0.1"
		e.WebhookInstallOptions.LocalServingPort = port
	}
	if install&Audit != 0 {
		policy := filepath.Join(tmp, "audit-policy.yaml")
		if err := os.WriteFile(policy, []byte(auditPolicy), 0o600); err != nil {
			return nil, err
		}
		e.AuditLog = filepath.Join(tmp, "audit.log")
		e.ControlPlane.GetAPIServer().Configure().
			Set("audit-policy-file", policy).
			Set("audit-log-path", e.AuditLog).
			Set("audit-log-format", "json").
			Set("audit-log-mode", "blocking")
	}
	cfg, err := e.Start()
	if err != nil {
		return nil, err
	}
	e.Scheme = kruntime.NewScheme()
	if err := errors.Join(clientgoscheme.AddToScheme(e.Scheme), v1alpha1.AddToScheme(e.Scheme)); err != nil {
		return e, err
	}
	withWarnings := rest.CopyConfig(cfg)
	withWarnings.WarningHandler = warnings
	if e.Client, err = client.New(withWarnings, client.Options{Scheme: e.Scheme}); err != nil {
		return e, err
	}
	admin, err := e.AddUser(envtest.User{Name: "admin", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return e, err
	}
	raw, err := admin.KubeConfig()
	if err != nil {
		return e, err
	}
	e.Kubeconfig = filepath.Join(tmp, "kubeconfig")
	return e, os.WriteFile(e.Kubeconfig, raw, 0o600)
}

// operator is OperatorUser, an administrator.
func (e *Env) operator() (*envtest.AuthenticatedUser, error) {
	return e.AddUser(envtest.User{Name: OperatorUser, Groups: []string{"system:masters"}}, nil)
}

// OperatorConfig is a client configuration for OperatorUser.
func (e *Env) OperatorConfig() (*rest.Config, error) {
	u, err := e.operator()
	if err != nil {
		return nil, err
	}
	return u.Config(), nil
}

// OperatorKubeconfig writes a kubeconfig for OperatorUser to path, for the
// operator's binary.
func (e *Env) OperatorKubeconfig(path string) error {
	u, err := e.operator()
	if err != nil {
		return err
	}
	raw, err := u.KubeConfig()
	if err != nil {
		return err
	}
	return os.WriteFile(path, raw, 0o600)
}

// Request is one request of OperatorUser, as the audit log has it.
type Request struct {
	Verb string `json:"verb"`
	// ObjectRef is what it asked for; empty for a non-resource URL.
	ObjectRef struct {
		Resource    string `json:"resource"`
		Subresource string `json:"subresource"`
		Namespace   string `json:"namespace"`
		Name        string `json:"name"`
	} `json:"objectRef"`
	Stage string `json:"stage"`
	User  struct {
		Username string `json:"username"`
	} `json:"user"`
}

// What says what a request did: "patch deployments ns/name",
// "update keepalivepolicies/status ns/name", "list pods".
func (r Request) What() string {
	res := r.ObjectRef.Resource
	if r.ObjectRef.Subresource != "" {
		res += "/" + r.ObjectRef.Subresource
	}
	out := r.Verb + " " + res
	if r.ObjectRef.Name != "" {
		out += " " + strings.TrimPrefix(r.ObjectRef.Namespace+"/"+r.ObjectRef.Name, "/")
	}
	return out
}

// OperatorRequests reads the completed requests of OperatorUser from the
// audit log, oldest first.
func (e *Env) OperatorRequests() ([]Request, error) {
	raw, err := os.ReadFile(e.AuditLog)
	if err != nil {
		return nil, err
	}
	var out []Request
	for _, line := range bytes.Split(raw, []byte("\n")) {
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		var r Request
		if err := json.Unmarshal(line, &r); err != nil {
			return nil, fmt.Errorf("audit log: %w", err)
		}
		if r.Stage == "ResponseComplete" && r.User.Username == OperatorUser {
			out = append(out, r)
		}
	}
	return out, nil
}

// ManagerOptions are the options of a manager for the operator's code on
// this control plane: no metrics or probe listeners, and the webhook server
// where the installed webhook configuration points.
func (e *Env) ManagerOptions() ctrl.Options {
	o := ctrl.Options{
		Scheme:                 e.Scheme,
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
	}
	if wh := e.WebhookInstallOptions; wh.LocalServingPort != 0 {
		o.WebhookServer = webhook.NewServer(webhook.Options{Host: wh.LocalServingHost, Port: wh.LocalServingPort, CertDir: wh.LocalServingCertDir})
	}
	return o
}

// Kubectl runs the kubectl of KUBEBUILDER_ASSETS as an administrator, with
// stdin as input.
func (e *Env) Kubectl(stdin string, args ...string) (stdout, stderr string, err error) {
	cmd := exec.Command(filepath.Join(os.Getenv("KUBEBUILDER_ASSETS"), "kubectl"), append([]string{"--kubeconfig", e.Kubeconfig}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err = cmd.Run()
	return out.String(), errOut.String(), err
}

// WriteServingCert writes a self-signed serving certificate for 127.0.0.1,
// named cn, into dir as tls.key and tls.crt.
func WriteServingCert(dir, cn string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: cn},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "tls.key"), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "tls.crt"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
}
