// Package testenv starts the real kube-apiserver and etcd of envtest for the
// suites, with the operator's CRDs and, when asked, its webhook configuration.
package testenv

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"

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
}

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
)

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
