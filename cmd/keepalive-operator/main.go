// Command keepalive-operator runs the manager: the policy reconciler (leader
// only), the pod admission webhook (every replica), metrics and health probes.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"

	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	"sigs.k8s.io/controller-runtime/pkg/metrics/filters"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	ctrlwebhook "sigs.k8s.io/controller-runtime/pkg/webhook"

	"github.com/keepalive-operator/keepalive-operator/api/v1alpha1"
	"github.com/keepalive-operator/keepalive-operator/internal/controller"
	"github.com/keepalive-operator/keepalive-operator/internal/webhook"
)

func main() {
	if err := run(ctrl.SetupSignalHandler(), os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "keepalive-operator:", err)
		os.Exit(1)
	}
}

type options struct {
	kubeconfig       string
	metricsAddr      string
	metricsSecure    bool
	metricsCertPath  string
	probeAddr        string
	leaderElect      bool
	leaderElectionNS string
	webhookCertPath  string
	webhookPort      int
	unsafeSysctls    bool
	operatorNS       string
	maxRollouts      int
	zap              zap.Options
}

func parseFlags(args []string) (options, error) {
	var o options
	fs := flag.NewFlagSet("keepalive-operator", flag.ContinueOnError)
	fs.StringVar(&o.kubeconfig, "kubeconfig", "", "Path to a kubeconfig. Only required out of cluster; KUBECONFIG and in-cluster config are used otherwise.")
	fs.StringVar(&o.metricsAddr, "metrics-bind-address", ":8443", "Address the metrics endpoint binds to; \"0\" disables it.")
	fs.BoolVar(&o.metricsSecure, "metrics-secure", true, "Serve metrics over HTTPS, allowing only clients authorized to get /metrics.")
	fs.StringVar(&o.metricsCertPath, "metrics-cert-path", "", "Folder with tls.crt and tls.key for the metrics server; a self-signed certificate is generated when empty.")
	fs.StringVar(&o.probeAddr, "health-probe-bind-address", ":8081", "Address the /healthz and /readyz endpoints bind to.")
	fs.BoolVar(&o.leaderElect, "leader-elect", false, "Elect a leader to run the reconciler, so that several replicas can run; webhooks serve on every replica.")
	fs.StringVar(&o.leaderElectionNS, "leader-election-namespace", "", "Namespace of the leader election lease; the operator's own namespace when empty.")
	fs.StringVar(&o.webhookCertPath, "webhook-cert-path", "", "Folder with tls.crt and tls.key for the webhook server (default: the system temp folder's k8s-webhook-server/serving-certs).")
	fs.IntVar(&o.webhookPort, "webhook-port", ctrlwebhook.DefaultPort, "Port the webhook server listens on.")
	fs.BoolVar(&o.unsafeSysctls, "unsafe-sysctls-allowed", false, "Every kubelet allows the keepalive sysctls (--allowed-unsafe-sysctls): inject them even on clusters older than Kubernetes 1.29.")
	fs.StringVar(&o.operatorNS, "operator-namespace", operatorNamespace(), "The operator's own namespace, never injected (default: POD_NAMESPACE, else the service account's namespace).")
	fs.IntVar(&o.maxRollouts, "max-concurrent-rollouts", 5, "How many workloads may roll out a template change of the operator at once, across the cluster.")
	o.zap.BindFlags(fs)
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if o.maxRollouts < 1 {
		return o, fmt.Errorf("--max-concurrent-rollouts must be at least 1, is %d", o.maxRollouts)
	}
	if o.webhookPort < 1 || o.webhookPort > 65535 {
		return o, fmt.Errorf("--webhook-port must be between 1 and 65535, is %d", o.webhookPort)
	}
	return o, nil
}

func newScheme() (*runtime.Scheme, error) {
	s := runtime.NewScheme()
	return s, errors.Join(clientgoscheme.AddToScheme(s), v1alpha1.AddToScheme(s))
}

func run(ctx context.Context, args []string) error {
	o, err := parseFlags(args)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&o.zap)))
	log := ctrl.Log.WithName("setup")

	cfg, err := restConfig(o.kubeconfig)
	if err != nil {
		return fmt.Errorf("load kubeconfig: %w", err)
	}
	scheme, err := newScheme()
	if err != nil {
		return fmt.Errorf("build scheme: %w", err)
	}

	metricsOpts := metricsserver.Options{
		BindAddress:   o.metricsAddr,
		SecureServing: o.metricsSecure,
		CertDir:       o.metricsCertPath,
	}
	if o.metricsSecure {
		metricsOpts.FilterProvider = filters.WithAuthenticationAndAuthorization
	}

	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme: scheme,
		// The cache keeps only what the webhook and reconcilers read.
		Cache:                   cache.Options{DefaultTransform: controller.StripForCache},
		Metrics:                 metricsOpts,
		HealthProbeBindAddress:  o.probeAddr,
		LeaderElection:          o.leaderElect,
		LeaderElectionID:        "keepalive-operator.keepalive.io",
		LeaderElectionNamespace: o.leaderElectionNS,
		// The reconciler stops at once when it loses the lease; a new leader
		// picks up from the API server's state.
		LeaderElectionReleaseOnCancel: true,
		WebhookServer: ctrlwebhook.NewServer(ctrlwebhook.Options{
			CertDir: o.webhookCertPath,
			Port:    o.webhookPort,
		}),
	})
	if err != nil {
		return fmt.Errorf("create manager: %w", err)
	}
	admission, err := webhook.Setup(ctx, mgr, webhook.Options{
		UnsafeSysctlsAllowed: o.unsafeSysctls,
		OperatorNamespace:    o.operatorNS,
	})
	if err != nil {
		return fmt.Errorf("set up the pod webhook: %w", err)
	}
	if err := controller.Setup(mgr, controller.Options{
		Cluster:               admission.Cluster,
		MaxConcurrentRollouts: o.maxRollouts,
	}); err != nil {
		return fmt.Errorf("set up the reconcilers: %w", err)
	}
	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		return fmt.Errorf("add health check: %w", err)
	}

	log.Info("starting manager", "metrics", o.metricsAddr, "probes", o.probeAddr, "leaderElection", o.leaderElect)
	if err := mgr.Start(ctx); err != nil {
		return fmt.Errorf("run manager: %w", err)
	}
	return nil
}

func restConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig != "" {
		return clientcmd.BuildConfigFromFlags("", kubeconfig)
	}
	return ctrl.GetConfig()
}

// operatorNamespace is the namespace the operator runs in, when it can tell.
func operatorNamespace() string {
	if ns := os.Getenv("POD_NAMESPACE"); ns != "" {
		return ns
	}
	if raw, err := os.ReadFile("/var/run/secrets/kubernetes.io/serviceaccount/namespace"); err == nil {
		return strings.TrimSpace(string(raw))
	}
	return ""
}
