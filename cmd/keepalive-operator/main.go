// Command keepalive-operator runs the manager: the policy reconciler (leader
// only), the pod admission webhook (every replica), metrics and health probes.
// `keepalive-operator audit` runs the node agent of the connection audit.
package main

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/open-policy-agent/cert-controller/pkg/rotator"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/metrics/filters"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	ctrlwebhook "sigs.k8s.io/controller-runtime/pkg/webhook"

	"github.com/keepalive-operator/keepalive-operator/api/v1alpha1"
	"github.com/keepalive-operator/keepalive-operator/internal/controller"
	"github.com/keepalive-operator/keepalive-operator/internal/keepalive"
	"github.com/keepalive-operator/keepalive-operator/internal/webhook"
)

func main() {
	run := run
	args := os.Args[1:]
	if len(args) > 0 && args[0] == "audit" {
		run, args = runAudit, args[1:]
	}
	if err := run(ctrl.SetupSignalHandler(), args); err != nil {
		fmt.Fprintln(os.Stderr, "keepalive-operator:", err)
		os.Exit(1)
	}
}

// clientFlags are the API client flags of the operator and of the audit
// agent.
type clientFlags struct {
	kubeconfig string
	qps        float64
	burst      int
}

// bind defines the flags; who names the binary's role in their help.
func (c *clientFlags) bind(fs *flag.FlagSet, who string) {
	fs.StringVar(&c.kubeconfig, "kubeconfig", "", "Path to a kubeconfig. Only required out of cluster; KUBECONFIG and in-cluster config are used otherwise.")
	fs.Float64Var(&c.qps, "kube-api-qps", 0, "Requests per second the "+who+" may send to the API server; 0 is no limit of its own: the API server's priority and fairness queues them.")
	fs.IntVar(&c.burst, "kube-api-burst", 0, "With --kube-api-qps: requests the "+who+" may send at once above it; 0 is twice --kube-api-qps.")
}

func (c clientFlags) check() error {
	if c.qps < 0 || c.burst < 0 {
		return fmt.Errorf("--kube-api-qps and --kube-api-burst must be 0 or more, are %g and %d", c.qps, c.burst)
	}
	return nil
}

type options struct {
	clientFlags
	metricsAddr      string
	metricsSecure    bool
	metricsCertPath  string
	probeAddr        string
	pprofAddr        string
	leaderElect      bool
	leaderElectionNS string
	webhookCertPath  string
	webhookPort      int
	webhookReadTime  time.Duration
	shutdownDelay    time.Duration
	enableHTTP2      bool
	unsafeSysctls    bool
	operatorNS       string
	maxRollouts      int
	progressDeadline time.Duration
	excludedNS       string
	namespaceSel     string
	objectSel        string
	certRotation     bool
	webhookSecret    string
	webhookService   string
	webhookConfig    string
	zap              zap.Options
}

func parseFlags(args []string) (options, error) {
	var o options
	fs := flag.NewFlagSet("keepalive-operator", flag.ContinueOnError)
	o.bind(fs, "operator")
	fs.StringVar(&o.metricsAddr, "metrics-bind-address", ":8443", "Address the metrics endpoint binds to; \"0\" disables it.")
	fs.BoolVar(&o.metricsSecure, "metrics-secure", true, "Serve metrics over HTTPS, allowing only clients authorized to get /metrics.")
	fs.StringVar(&o.metricsCertPath, "metrics-cert-path", "", "Folder with tls.crt and tls.key for the metrics server; a self-signed certificate is generated when empty.")
	fs.StringVar(&o.probeAddr, "health-probe-bind-address", ":8081", "Address the /healthz and /readyz endpoints bind to.")
	fs.StringVar(&o.pprofAddr, "pprof-bind-address", "0", "Address Go's profiles (/debug/pprof/) bind to, over plain HTTP with no authentication: bind it to localhost, for diagnosis only; \"0\" disables them.")
	fs.BoolVar(&o.leaderElect, "leader-elect", false, "Elect a leader to run the reconciler, so that several replicas can run; webhooks serve on every replica.")
	fs.StringVar(&o.leaderElectionNS, "leader-election-namespace", "", "Namespace of the leader election lease; the operator's own namespace when empty.")
	fs.StringVar(&o.webhookCertPath, "webhook-cert-path", filepath.Join(os.TempDir(), "k8s-webhook-server", "serving-certs"), "Folder with tls.crt and tls.key for the webhook server; reloaded when they change. With --cert-rotation, mount the Secret --webhook-secret-name there.")
	fs.IntVar(&o.webhookPort, "webhook-port", ctrlwebhook.DefaultPort, "Port the webhook server listens on.")
	fs.DurationVar(&o.shutdownDelay, "shutdown-delay", 5*time.Second, "How long the operator goes on serving after SIGTERM before it stops: the API server keeps sending reviews to a terminating pod until it sees its endpoint go, and a review the webhook no longer answers admits the pod without the values. Meanwhile each webhook answer closes its connection, so that the next review goes to a replica that stays. Keep it below the pod's terminationGracePeriodSeconds.")
	fs.DurationVar(&o.webhookReadTime, "webhook-read-timeout", 10*time.Second, "How long the webhook server waits for a request's body once its headers are in; a slower client gets an error and its connection is closed. The API server sends a review at once and gives up after the webhook's timeoutSeconds (30 s at most).")
	fs.BoolVar(&o.enableHTTP2, "enable-http2", false, "Offer HTTP/2 on the webhook and metrics servers besides HTTP/1.1. Off by default: HTTP/2's stream handling is where the rapid-reset attacks (CVE-2023-44487, CVE-2023-39325) struck, and one review per request needs none of it.")
	fs.BoolVar(&o.unsafeSysctls, "unsafe-sysctls-allowed", false, "Every kubelet allows the keepalive sysctls (--allowed-unsafe-sysctls): inject them even on clusters older than Kubernetes 1.29.")
	fs.StringVar(&o.operatorNS, "operator-namespace", operatorNamespace(), "The operator's own namespace, never injected (default: POD_NAMESPACE, else the service account's namespace).")
	fs.BoolVar(&o.certRotation, "cert-rotation", false, "Manage the webhook's certificate: a self-signed CA and serving certificate in the Secret --webhook-secret-name of the operator's namespace, rotated before expiry, with the CA injected into the webhook configuration. Off when cert-manager (or another tool) provides the certificate.")
	fs.StringVar(&o.webhookSecret, "webhook-secret-name", "keepalive-operator-webhook-tls", "With --cert-rotation: the Secret, in the operator's namespace, that holds the CA and serving certificate.")
	fs.StringVar(&o.webhookService, "webhook-service-name", "keepalive-operator-webhook", "With --cert-rotation: the Service in front of the webhook; the certificate is valid for its DNS names.")
	fs.StringVar(&o.webhookConfig, "webhook-configuration-name", "keepalive-operator", "With --cert-rotation: the MutatingWebhookConfiguration whose caBundle the operator fills.")
	fs.IntVar(&o.maxRollouts, "max-concurrent-rollouts", 5, "How many workloads may replace their pods for a template change of the operator at once, across the cluster; 0 is no limit.")
	fs.DurationVar(&o.progressDeadline, "rollout-progress-deadline", 10*time.Minute, "How long a StatefulSet or DaemonSet may hold a rollout slot without progress (a Deployment's own progressDeadlineSeconds counts for it).")
	fs.StringVar(&o.excludedNS, "excluded-namespaces", "", "Comma-separated namespaces left alone besides kube-system, kube-public, kube-node-lease and the operator's own: no injection, no template patch, their pods counted as skipped.")
	fs.StringVar(&o.namespaceSel, "namespace-selector", "", "Label selector (kubectl syntax); namespaces it does not match are left alone like excluded ones. Keep it equal to the webhook's namespaceSelector.")
	fs.StringVar(&o.objectSel, "object-selector", "", "Label selector (kubectl syntax); pods and pod templates it does not match are left alone. Keep it equal to the webhook's objectSelector.")
	o.zap.BindFlags(fs)
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if o.certRotation && o.operatorNS == "" {
		return o, errors.New("--cert-rotation needs the operator's namespace: set --operator-namespace or POD_NAMESPACE")
	}
	if o.maxRollouts < 0 {
		return o, fmt.Errorf("--max-concurrent-rollouts must be 0 (no limit) or more, is %d", o.maxRollouts)
	}
	if o.progressDeadline <= 0 {
		return o, fmt.Errorf("--rollout-progress-deadline must be positive, is %s", o.progressDeadline)
	}
	if err := o.check(); err != nil {
		return o, err
	}
	for _, ns := range splitList(o.excludedNS) {
		if errs := validation.IsDNS1123Label(ns); len(errs) > 0 {
			return o, fmt.Errorf("--excluded-namespaces: %q is not a namespace name: %s", ns, strings.Join(errs, "; "))
		}
	}
	for flag, sel := range map[string]string{"--namespace-selector": o.namespaceSel, "--object-selector": o.objectSel} {
		if _, err := keepalive.ParseSelector(sel); err != nil {
			return o, fmt.Errorf("%s: %w", flag, err)
		}
	}
	if o.webhookPort < 1 || o.webhookPort > 65535 {
		return o, fmt.Errorf("--webhook-port must be between 1 and 65535, is %d", o.webhookPort)
	}
	if o.shutdownDelay < 0 {
		return o, fmt.Errorf("--shutdown-delay must be 0 or more, is %s", o.shutdownDelay)
	}
	if o.webhookReadTime <= 0 {
		return o, fmt.Errorf("--webhook-read-timeout must be positive, is %s", o.webhookReadTime)
	}
	return o, nil
}

// limitClient sets the client's rate limit from the flags, whatever the
// kubeconfig says: client-go's default is 5 requests per second. With none,
// as in controller-runtime, the API server's priority and fairness queues
// the requests; the operator's own are few per workload and policy change.
func limitClient(cfg *rest.Config, qps float64, burst int) {
	if qps == 0 {
		cfg.QPS, cfg.Burst = -1, 0 // a negative QPS is no rate limiter
		return
	}
	if burst == 0 {
		burst = max(1, int(2*qps))
	}
	cfg.QPS, cfg.Burst = float32(qps), burst
}

// splitList reads a comma-separated flag, ignoring blanks.
func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// selector parses a label selector flag already validated; nil when empty.
// selector is a selector that parseOptions checked.
func selector(s string) labels.Selector {
	sel, _ := keepalive.ParseSelector(s)
	return sel
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
	terminating := ctx.Done() // SIGTERM; the manager's context ends the delay later
	ctx = afterDelay(ctx, o.shutdownDelay)

	cfg, err := restConfig(o.kubeconfig)
	if err != nil {
		return fmt.Errorf("load kubeconfig: %w", err)
	}
	limitClient(cfg, o.qps, o.burst)
	scheme, err := newScheme()
	if err != nil {
		return fmt.Errorf("build scheme: %w", err)
	}

	tlsOpts := []func(*tls.Config){serverTLS(o.enableHTTP2)}
	metricsOpts := metricsserver.Options{
		BindAddress:   o.metricsAddr,
		SecureServing: o.metricsSecure,
		CertDir:       o.metricsCertPath,
		TLSOpts:       tlsOpts,
	}
	if o.metricsSecure {
		metricsOpts.FilterProvider = filters.WithAuthenticationAndAuthorization
	}

	certsReady := make(chan struct{})
	whServer := webhookServer{
		Server:      ctrlwebhook.NewServer(ctrlwebhook.Options{CertDir: o.webhookCertPath, Port: o.webhookPort, TLSOpts: tlsOpts}),
		readTimeout: o.webhookReadTime,
		terminating: terminating,
	}
	if o.certRotation {
		// The server starts once the rotator has written its certificate.
		whServer.certsReady = certsReady
	}
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme: scheme,
		// The cache keeps only what the webhook and reconcilers read.
		Cache:                   controller.CacheOptions(),
		Metrics:                 metricsOpts,
		HealthProbeBindAddress:  o.probeAddr,
		PprofBindAddress:        o.pprofAddr,
		LeaderElection:          o.leaderElect,
		LeaderElectionID:        "keepalive-operator.keepalive.io",
		LeaderElectionNamespace: cmp.Or(o.leaderElectionNS, o.operatorNS),
		// The reconciler stops at once when it loses the lease; a new leader
		// picks up from the API server's state.
		LeaderElectionReleaseOnCancel: true,
		WebhookServer:                 whServer,
	})
	if err != nil {
		return fmt.Errorf("create manager: %w", err)
	}
	if o.certRotation {
		// The rotator caches the one Secret and webhook configuration it
		// works with, which are all that RBAC grants it.
		narrow := rotatorManager{Manager: mgr, config: byName(mgr.GetConfig(), map[string]string{
			"/api/v1/namespaces/" + o.operatorNS + "/secrets":                     o.webhookSecret,
			"/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations": o.webhookConfig,
		})}
		if err := rotator.AddRotator(caHandover{narrow}, &rotator.CertRotator{
			SecretKey:      types.NamespacedName{Namespace: o.operatorNS, Name: o.webhookSecret},
			CertDir:        o.webhookCertPath,
			CAName:         "keepalive-operator-ca",
			CAOrganization: "keepalive-operator",
			DNSName:        fmt.Sprintf("%s.%s.svc", o.webhookService, o.operatorNS),
			ExtraDNSNames: []string{
				fmt.Sprintf("%s.%s", o.webhookService, o.operatorNS),
				fmt.Sprintf("%s.%s.svc.cluster.local", o.webhookService, o.operatorNS),
			},
			IsReady:  certsReady,
			Webhooks: []rotator.WebhookInfo{{Name: o.webhookConfig, Type: rotator.Mutating}},
			// Every replica serves the webhook, so every replica keeps its
			// certificate files current.
			RequireLeaderElection: false,
		}); err != nil {
			return fmt.Errorf("set up certificate rotation: %w", err)
		}
	}
	admission, err := webhook.Setup(ctx, mgr, webhook.Options{
		UnsafeSysctlsAllowed: o.unsafeSysctls,
		OperatorNamespace:    o.operatorNS,
		ExcludedNamespaces:   splitList(o.excludedNS),
		NamespaceSelector:    selector(o.namespaceSel),
		PodSelector:          selector(o.objectSel),
	})
	if err != nil {
		return fmt.Errorf("set up the pod webhook: %w", err)
	}
	if err := controller.Setup(mgr, controller.Options{
		Cluster:               admission.Cluster,
		OnOldNodes:            admission.Store.OnOldNodes,
		MaxConcurrentRollouts: o.maxRollouts,
		ProgressDeadline:      o.progressDeadline,
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

// serverTLS is the TLS configuration of the webhook and metrics servers: TLS
// 1.2 at least, and HTTP/1.1 alone unless http2.
func serverTLS(http2 bool) func(*tls.Config) {
	return func(c *tls.Config) {
		c.MinVersion = tls.VersionTLS12
		c.NextProtos = []string{"http/1.1"}
		if http2 {
			c.NextProtos = []string{"h2", "http/1.1"}
		}
	}
}

// webhookServer is controller-runtime's webhook server with a deadline for
// reading each request's body, answers that close their connection once
// terminating is closed, and, when certsReady is set, started once the
// certificate rotator has written its certificate.
//
// controller-runtime's server exposes no http.Server setting: its
// ReadHeaderTimeout (32 s), IdleTimeout (90 s) and MaxHeaderBytes (1 MiB)
// are fixed and there is no ReadTimeout. The body's deadline is therefore set
// per request, through http.ResponseController, on the handlers registered
// here; the pod handler bounds the body's size itself (4 MiB).
type webhookServer struct {
	ctrlwebhook.Server
	readTimeout time.Duration
	terminating <-chan struct{}
	certsReady  <-chan struct{}
}

func (s webhookServer) Register(path string, hook http.Handler) {
	s.Server.Register(path, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := http.NewResponseController(w).SetReadDeadline(time.Now().Add(s.readTimeout)); err != nil {
			ctrl.Log.WithName("webhook").Error(err, "no read deadline for the request", "path", path)
		}
		select {
		case <-s.terminating:
			// The API server would go on sending reviews down this kept-alive
			// connection until the server closes it at the end of the
			// shutdown delay, failing the review in flight. Closed after this
			// answer (a GOAWAY on HTTP/2), it dials again for the next review
			// and reaches a replica that stays.
			w.Header().Set("Connection", "close")
		default:
		}
		hook.ServeHTTP(w, r)
	}))
}

func (s webhookServer) Start(ctx context.Context) error {
	if s.certsReady == nil {
		return s.Server.Start(ctx)
	}
	select {
	case <-s.certsReady:
		return s.Server.Start(ctx)
	case <-ctx.Done():
		return nil
	}
}

// rotatorManager is the manager as the certificate rotator sees it: its own
// cache, which it builds from GetConfig with no option to narrow it, uses
// config.
type rotatorManager struct {
	manager.Manager
	config *rest.Config
}

func (m rotatorManager) GetConfig() *rest.Config { return m.config }

// byName is cfg whose list and watch requests of the given collection paths
// select, by metadata.name, the one object named for the path: RBAC allows
// a list or watch restricted to resourceNames only with that field selector.
func byName(cfg *rest.Config, names map[string]string) *rest.Config {
	cfg = rest.CopyConfig(cfg)
	cfg.Wrap(func(rt http.RoundTripper) http.RoundTripper {
		return roundTripper(func(req *http.Request) (*http.Response, error) {
			for path, name := range names {
				// The kubeconfig's server may have a path of its own.
				if req.Method == http.MethodGet && strings.HasSuffix(req.URL.Path, path) {
					req = req.Clone(req.Context())
					q := req.URL.Query()
					q.Set("fieldSelector", fields.OneTermEqualSelector("metadata.name", name).String())
					req.URL.RawQuery = q.Encode()
					break
				}
			}
			return rt.RoundTrip(req)
		})
	})
	return cfg
}

type roundTripper func(*http.Request) (*http.Response, error)

func (f roundTripper) RoundTrip(req *http.Request) (*http.Response, error) { return f(req) }

// afterDelay is a context that ends delay after parent does. On SIGTERM
// the pod is terminating and its endpoint about to go, but until the API
// server has seen that, it still sends reviews here: the webhook must answer
// them meanwhile. A second signal still ends the process at once.
func afterDelay(parent context.Context, delay time.Duration) context.Context {
	if delay == 0 {
		return parent
	}
	ctx, cancel := context.WithCancel(context.WithoutCancel(parent))
	go func() {
		<-parent.Done()
		ctrl.Log.WithName("setup").Info("stopping", "after", delay.String())
		time.Sleep(delay)
		cancel()
	}()
	return ctx
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

// Certificate rotation reads and updates its Secret in the operator's own
// namespace (a Role, bound there) and the caBundle of its webhook
// configuration, by name only: with cert-manager the chart leaves both rules
// out. The names are config/default's; the chart puts its own in.
// +kubebuilder:rbac:groups="",namespace=keepalive-system,resources=secrets,resourceNames=keepalive-operator-webhook-tls,verbs=get;list;watch;update
// +kubebuilder:rbac:groups=admissionregistration.k8s.io,resources=mutatingwebhookconfigurations,resourceNames=keepalive-operator-webhook-configuration,verbs=get;list;watch;update
// Leader election holds a Lease in the operator's namespace.
// +kubebuilder:rbac:groups=coordination.k8s.io,namespace=keepalive-system,resources=leases,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups="",namespace=keepalive-system,resources=events,verbs=create;patch
