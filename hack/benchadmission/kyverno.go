package main

// Kyverno's admission controller (cmd/kyverno of Kyverno v1.19.1, which
// hack/setup-kyverno.sh builds) run out of cluster against the bench's API
// server, with one ClusterPolicy that adds the keepalive sysctls to pods.
//
// Kyverno runs as the Helm chart (charts/kyverno of the same module, default
// values, release "kyverno" in namespace "kyverno") runs its admission
// controller: the container's flags and environment variables, and the
// ConfigMaps kyverno and kyverno-metrics, as the chart renders them. These
// differ from the chart's defaults, each for the reason given:
//
//   - --kubeconfig=<an administrator's kubeconfig>: out of cluster there is
//     no service account token. The chart's ServiceAccount, ClusterRoles and
//     bindings are not installed; Kyverno acts as an administrator.
//   - --serverIP=127.0.0.1:<port>: Kyverno then registers its webhooks by URL,
//     https://<serverIP><path>, instead of through the Service kyverno-svc:
//     envtest has no Service routing. The port is part of serverIP because
//     Kyverno puts serverIP verbatim in the URL; --servicePort (443, as in
//     the chart) only goes into Service references, so it is unused. With
//     serverIP set Kyverno also skips its checks of its Deployment (rolling
//     update, scaled down), and it does not delete its webhook
//     configurations when it stops: removeKyvernoWebhooks does.
//   - --webhookServerHost=127.0.0.1 --webhookServerPort=<free port> (chart:
//     every interface, 9443): the host's ports are shared, and the webhook
//     is only called from this machine.
//   - --metricsHost=127.0.0.1 --metricsPort=<free port> (chart: every
//     interface, 8000) and --controllerRuntimeMetricsAddress=127.0.0.1:<free
//     port> (chart: ":8080"): the same, and the metrics stay on so that the
//     work is the chart's.
//   - --disableLogColor=true: the log goes to a file, kyverno.log in the
//     working folder, and is easier to read without ANSI colour codes.
//   - KYVERNO_NAMESPACE=kyverno and KYVERNO_POD_NAME=kyverno-admission-
//     controller-bench: the chart takes them from the downward API.
//   - TUF_ROOT=<dir>/sigstore (chart: /.sigstore, an emptyDir): a folder of
//     the run rather than of the machine. TUF is off (chart default), so
//     nothing is fetched.
//   - GOMEMLIMIT=362387865 (345.6 MiB): in the chart's pod Kyverno's
//     automemlimit sets 0.9 of the container's 384 Mi memory limit; out of
//     a container it would take 0.9 of the machine's memory, which changes
//     how often the garbage collector runs. Nothing enforces the 384 Mi
//     limit itself, nor the CPU request of 100m.
//   - ConfigMap kyverno, key webhooks: the namespaceSelector gets
//     matchLabels = the setup's selector besides the chart's two NotIn
//     expressions (kube-system, and the Kyverno namespace), so that the API
//     server calls Kyverno's resource webhooks only for objects in those
//     namespaces.
//   - Not run: the init container kyvernopre, which deletes policy reports
//     an earlier Kyverno left (a fresh API server has none), and the
//     chart's background, cleanup and reports controllers. The flags
//     --backgroundServiceAccountName and --reportsServiceAccountName still
//     name their service accounts, as the chart passes them. Without the
//     reports controller nobody aggregates or deletes the EphemeralReports
//     Kyverno writes, one for each pod it admits; past
//     --maxAdmissionReports=1000 (the chart's back pressure threshold; its
//     count lags, about 1070 get written) Kyverno stops writing them.
//   - Not installed: the Deployment, Services, PodDisruptionBudget and the
//     other objects of the chart that only Kubernetes' controllers, kubelet
//     or kube-proxy would act on; envtest runs none of them.
//
// The ClusterPolicy is not from the chart. It has the annotation
// pod-policies.kyverno.io/autogen-controllers: none, so that it matches pods
// only, and not also the pod templates of Deployments, Jobs and the like
// (Kyverno's default autogen); the bench creates pods.
//
// What matters if the namespaces change: the setup's selector goes into the
// ConfigMap kyverno (webhooks.namespaceSelector.matchLabels), which scopes
// every resource webhook Kyverno registers, and into the ClusterPolicy's
// match (namespaceSelector), which Kyverno evaluates itself with the
// namespace labels its informer has seen. Kyverno's own namespace is
// kyvernoNamespace (KYVERNO_NAMESPACE, the chart's release namespace): it
// holds the ConfigMaps, the TLS secrets and the leases, and the ConfigMap
// excludes it from the webhooks and from the engine (resourceFilters).

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/yaml"

	"github.com/keepalive-operator/keepalive-operator/internal/testenv"
)

// kyvernoSetup is what startKyverno needs.
type kyvernoSetup struct {
	cfg        *rest.Config      // an administrator's client configuration
	kubeconfig string            // an administrator's kubeconfig, for the process
	binDir     string            // hack/setup-kyverno.sh's folder
	dir        string            // a working folder of the run: logs, files
	selector   map[string]string // labels of the namespaces whose pods Kyverno may see
	sysctls    []corev1.Sysctl   // what its ClusterPolicy adds to every pod of those namespaces
}

// The names the chart gives, for release "kyverno" in namespace "kyverno".
const (
	kyvernoNamespace         = "kyverno"
	kyvernoAdmissionName     = "kyverno-admission-controller"
	kyvernoServiceName       = "kyverno-svc"
	kyvernoConfigMapName     = "kyverno"
	kyvernoMetricsConfigName = "kyverno-metrics"
	kyvernoPodName           = kyvernoAdmissionName + "-bench"
)

// What Kyverno registers.
const (
	// kyvernoManagedBy is the label, value "kyverno", on every webhook
	// configuration Kyverno registers.
	kyvernoManagedBy          = "webhook.kyverno.io/managed-by"
	kyvernoResourceMutating   = "kyverno-resource-mutating-webhook-cfg"
	kyvernoPolicyMutating     = "kyverno-policy-mutating-webhook-cfg"
	kyvernoPolicyValidating   = "kyverno-policy-validating-webhook-cfg"
	kyvernoClusterPolicyName  = "bench-keepalive-sysctls"
	kyvernoClusterPolicyRule  = "add-keepalive-sysctls"
	kyvernoAdmissionPodMetric = "kyverno_admission_requests_total"
)

// How long startKyverno waits for each step.
const (
	kyvernoCRDTimeout    = 2 * time.Minute
	kyvernoStartTimeout  = 3 * time.Minute
	kyvernoPolicyTimeout = time.Minute
	kyvernoProbeTimeout  = 30 * time.Second
)

// startKyverno installs Kyverno's CRDs and what its admission controller reads, starts it
// and creates one ClusterPolicy; it returns once the policy is ready and Kyverno's
// mutating webhook for pods is registered.
//
// Before it returns it reads every webhook configuration Kyverno registered
// and fails if one of them could be called for a pod created in a namespace
// without the selector's labels (the configurations are also written to
// kyverno-webhooks.yaml in s.dir). verifyKyverno checks the same by creating
// pods, once the caller has namespaces to create them in.
func startKyverno(ctx context.Context, s kyvernoSetup) (*testenv.Process, error) {
	binary := filepath.Join(s.binDir, "kyverno")
	crds := filepath.Join(s.binDir, "crds")
	if st, err := os.Stat(binary); err != nil || st.IsDir() {
		return nil, fmt.Errorf("no Kyverno admission controller at %s: run hack/setup-kyverno.sh and pass the folder it prints", binary)
	}
	if st, err := os.Stat(crds); err != nil || !st.IsDir() {
		return nil, fmt.Errorf("no Kyverno CRDs in %s: run hack/setup-kyverno.sh and pass the folder it prints", crds)
	}
	if len(s.selector) == 0 {
		return nil, errors.New("kyverno: the namespace selector is empty; Kyverno would see the pods of every namespace")
	}
	if _, err := labels.ValidatedSelectorFromSet(s.selector); err != nil {
		return nil, fmt.Errorf("kyverno: namespace selector: %w", err)
	}
	if len(s.sysctls) == 0 {
		return nil, errors.New("kyverno: no sysctls for the ClusterPolicy")
	}
	c, err := client.New(s.cfg, client.Options{Scheme: clientgoscheme.Scheme})
	if err != nil {
		return nil, fmt.Errorf("kyverno: client: %w", err)
	}

	if _, err := envtest.InstallCRDs(s.cfg, envtest.CRDInstallOptions{
		Paths:              []string{crds},
		ErrorIfPathMissing: true,
		MaxTime:            kyvernoCRDTimeout,
	}); err != nil {
		return nil, fmt.Errorf("install Kyverno's CRDs from %s: %w", crds, err)
	}
	if err := kyvernoInstall(ctx, c, s.selector); err != nil {
		return nil, err
	}

	addrs, err := kyvernoFreeAddrs(3)
	if err != nil {
		return nil, err
	}
	webhookAddr, metricsAddr, runtimeMetricsAddr := addrs[0], addrs[1], addrs[2]
	if err := os.MkdirAll(filepath.Join(s.dir, "sigstore"), 0o755); err != nil {
		return nil, err
	}
	cmd := exec.Command(binary, kyvernoArgs(s.kubeconfig, webhookAddr, metricsAddr, runtimeMetricsAddr)...)
	cmd.Dir = s.dir
	cmd.Env = append(os.Environ(), kyvernoEnv(s.dir)...)
	p, err := testenv.StartProcess("kyverno", filepath.Join(s.dir, "kyverno.log"), cmd)
	if err != nil {
		return nil, err
	}
	if err := kyvernoConfigure(ctx, c, p, s, webhookAddr); err != nil {
		// Stopped, Kyverno leaves its webhooks, which fail closed.
		return nil, errors.Join(err, p.Stop(10*time.Second), removeKyvernoWebhooks(context.Background(), s.cfg))
	}
	return p, nil
}

// kyvernoConfigure waits for the Kyverno of p to register its webhooks,
// creates the ClusterPolicy, waits for it to be served, and checks the
// webhook configurations.
func kyvernoConfigure(ctx context.Context, c client.Client, p *testenv.Process, s kyvernoSetup, webhookAddr string) error {
	// Kyverno validates and defaults policies in its policy webhooks; a
	// policy created before them would be stored as is.
	err := kyvernoPoll(ctx, p, kyvernoStartTimeout, "Kyverno to register its policy webhooks ("+kyvernoPolicyMutating+", "+kyvernoPolicyValidating+")", func() error {
		if err := c.Get(ctx, client.ObjectKey{Name: kyvernoPolicyMutating}, &admissionregistrationv1.MutatingWebhookConfiguration{}); err != nil {
			return err
		}
		return c.Get(ctx, client.ObjectKey{Name: kyvernoPolicyValidating}, &admissionregistrationv1.ValidatingWebhookConfiguration{})
	})
	if err != nil {
		return err
	}
	// The API server may not call the new webhooks yet, or Kyverno's server
	// may not answer yet: try until the policy webhooks let the policy in.
	policy, err := kyvernoClusterPolicy(s.selector, s.sysctls)
	if err != nil {
		return err
	}
	err = kyvernoPoll(ctx, p, kyvernoPolicyTimeout, "the API server to accept ClusterPolicy "+kyvernoClusterPolicyName+" (Kyverno's policy webhooks)", func() error {
		return kyvernoApply(ctx, c, policy.DeepCopy())
	})
	if err != nil {
		return err
	}
	err = kyvernoPoll(ctx, p, kyvernoPolicyTimeout, "ClusterPolicy "+kyvernoClusterPolicyName+" to be Ready and "+kyvernoResourceMutating+" to list pods", func() error {
		if err := kyvernoPolicyReady(ctx, c); err != nil {
			return err
		}
		var mwc admissionregistrationv1.MutatingWebhookConfiguration
		if err := c.Get(ctx, client.ObjectKey{Name: kyvernoResourceMutating}, &mwc); err != nil {
			return err
		}
		for _, wh := range mwc.Webhooks {
			// An earlier Kyverno's configuration points elsewhere.
			if kyvernoMatchesPodCreate(wh.Rules) && wh.ClientConfig.URL != nil && strings.HasPrefix(*wh.ClientConfig.URL, "https://"+webhookAddr+"/") {
				return nil
			}
		}
		return fmt.Errorf("no webhook of %s lists pods at https://%s yet", kyvernoResourceMutating, webhookAddr)
	})
	if err != nil {
		return err
	}
	return kyvernoCheckWebhooks(ctx, c, s, webhookAddr)
}

// kyvernoInstall creates Kyverno's namespace and its ConfigMaps, or brings
// the ConfigMaps up to date.
func kyvernoInstall(ctx context.Context, c client.Client, selector map[string]string) error {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: kyvernoNamespace}}
	if err := c.Create(ctx, ns); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create namespace %s: %w", kyvernoNamespace, err)
	}
	cms, err := kyvernoConfigMaps(selector)
	if err != nil {
		return err
	}
	for _, cm := range cms {
		err := c.Create(ctx, cm)
		if apierrors.IsAlreadyExists(err) {
			var old corev1.ConfigMap
			if err = c.Get(ctx, client.ObjectKeyFromObject(cm), &old); err == nil {
				old.Data = cm.Data
				err = c.Update(ctx, &old)
			}
		}
		if err != nil {
			return fmt.Errorf("write ConfigMap %s/%s: %w", cm.Namespace, cm.Name, err)
		}
	}
	return nil
}

// kyvernoArgs are the chart's arguments of the admission controller's
// container, then those for out of cluster.
func kyvernoArgs(kubeconfig, webhookAddr, metricsAddr, runtimeMetricsAddr string) []string {
	_, webhookPort, _ := net.SplitHostPort(webhookAddr)
	metricsHost, metricsPort, _ := net.SplitHostPort(metricsAddr)
	webhookHost, _, _ := net.SplitHostPort(webhookAddr)
	sa := func(name string) string { return "system:serviceaccount:" + kyvernoNamespace + ":" + name }
	return []string{
		// templates/admission-controller/deployment.yaml
		"--caSecretName=" + kyvernoServiceName + "." + kyvernoNamespace + ".svc.kyverno-tls-ca",
		"--tlsSecretName=" + kyvernoServiceName + "." + kyvernoNamespace + ".svc.kyverno-tls-pair",
		"--tlsKeyAlgorithm=RSA",
		"--backgroundServiceAccountName=" + sa("kyverno-background-controller"),
		"--reportsServiceAccountName=" + sa("kyverno-reports-controller"),
		"--servicePort=443",
		"--webhookServerPort=" + webhookPort, // chart: 9443
		"--resyncPeriod=15m",
		"--crdWatcher=false",
		"--disableMetrics=false",
		"--otelConfig=prometheus",
		"--metricsPort=" + metricsPort, // chart: 8000
		// kyverno.features.flags of values.yaml's features, with
		// admissionController.featuresOverride
		"--admissionReports=true",
		"--maxAdmissionReports=1000",
		"--autoUpdateWebhooks=true",
		"--excludeBootstrapResources=false",
		"--enableConfigMapCaching=true",
		"--controllerRuntimeMetricsAddress=" + runtimeMetricsAddr, // chart: :8080
		"--enableDeferredLoading=true",
		"--dumpPayload=false",
		"--forceFailurePolicyIgnore=false",
		"--generateValidatingAdmissionPolicy=true",
		"--generateMutatingAdmissionPolicy=false",
		"--dumpPatches=false",
		"--maxAPICallResponseLength=2000000",
		"--apiCallTimeout=30s",
		"--maxGlobalContextEntries=0",
		"--loggingFormat=text",
		"--v=2",
		"--omitEvents=PolicyApplied,PolicySkipped",
		"--enablePolicyException=false",
		"--protectManagedResources=false",
		"--allowInsecureRegistry=false",
		"--registryCredentialHelpers=default,google,amazon,azure,github",
		"--enableReporting=validate,mutate,mutateExisting,imageVerify,generate",
		// Out of cluster.
		"--kubeconfig=" + kubeconfig,
		"--serverIP=" + webhookAddr,
		"--webhookServerHost=" + webhookHost,
		"--metricsHost=" + metricsHost,
		"--disableLogColor=true",
	}
}

// kyvernoEnv is the environment the chart gives the container, with the
// downward API's values and a folder of the run for TUF_ROOT.
func kyvernoEnv(dir string) []string {
	return []string{
		"INIT_CONFIG=" + kyvernoConfigMapName,
		"METRICS_CONFIG=" + kyvernoMetricsConfigName,
		"KYVERNO_NAMESPACE=" + kyvernoNamespace,
		"KYVERNO_POD_NAME=" + kyvernoPodName,
		"KYVERNO_SERVICEACCOUNT_NAME=" + kyvernoAdmissionName,
		"KYVERNO_ROLE_NAME=kyverno:admission-controller",
		"KYVERNO_SVC=" + kyvernoServiceName,
		"TUF_ROOT=" + filepath.Join(dir, "sigstore"),
		"KYVERNO_DEPLOYMENT=" + kyvernoAdmissionName,
		// 0.9 of the chart's memory limit, 384 Mi, as automemlimit would
		// set it in the chart's container.
		"GOMEMLIMIT=" + strconv.FormatInt((384<<20)*9/10, 10),
	}
}

// kyvernoResourceFilters is the chart's config.resourceFilters, rendered,
// with the Kyverno namespace first (config.excludeKyvernoNamespace).
func kyvernoResourceFilters() string {
	filters := []string{
		"[*/*,$ns,*]",
		"[Event,*,*]",
		"[*/*,kube-system,*]",
		"[*/*,kube-public,*]",
		"[*/*,kube-node-lease,*]",
		"[Node,*,*]",
		"[Node/?*,*,*]",
		"[APIService,*,*]",
		"[APIService/?*,*,*]",
		"[TokenReview,*,*]",
		"[SubjectAccessReview,*,*]",
		"[SelfSubjectAccessReview,*,*]",
		"[Binding,*,*]",
		"[Pod/binding,*,*]",
		"[ReplicaSet,*,*]",
		"[ReplicaSet/?*,*,*]",
		"[EphemeralReport,*,*]",
		"[ClusterEphemeralReport,*,*]",
	}
	controllers := []string{"admission", "background", "cleanup", "reports"}
	each := func(patterns ...string) {
		for _, ctl := range controllers {
			for _, p := range patterns {
				filters = append(filters, strings.NewReplacer(
					"$role", "kyverno:"+ctl+"-controller",
					"$name", "kyverno-"+ctl+"-controller",
				).Replace(p))
			}
		}
	}
	each("[ClusterRole,*,$role]", "[ClusterRole,*,$role:core]", "[ClusterRole,*,$role:additional]")
	each("[ClusterRoleBinding,*,$role]")
	each("[ServiceAccount,$ns,$name]", "[ServiceAccount/?*,$ns,$name]")
	each("[Role,$ns,$role]")
	each("[RoleBinding,$ns,$role]")
	filters = append(filters, "[ConfigMap,$ns,"+kyvernoConfigMapName+"]", "[ConfigMap,$ns,"+kyvernoMetricsConfigName+"]")
	each("[Deployment,$ns,$name]", "[Deployment/?*,$ns,$name]")
	each("[Pod,$ns,$name-*]", "[Pod/?*,$ns,$name-*]")
	filters = append(filters, "[Job,$ns,kyverno-hook-pre-delete]", "[Job/?*,$ns,kyverno-hook-pre-delete]")
	each("[NetworkPolicy,$ns,$name]", "[NetworkPolicy/?*,$ns,$name]")
	each("[PodDisruptionBudget,$ns,$name]", "[PodDisruptionBudget/?*,$ns,$name]")
	for _, svc := range []string{
		kyvernoServiceName, kyvernoServiceName + "-metrics",
		"kyverno-background-controller-metrics",
		"kyverno-cleanup-controller", "kyverno-cleanup-controller-metrics",
		"kyverno-reports-controller-metrics",
	} {
		filters = append(filters, "[Service,$ns,"+svc+"]", "[Service/?*,$ns,"+svc+"]")
	}
	each("[ServiceMonitor,$ns,$name]")
	filters = append(filters,
		"[Secret,$ns,"+kyvernoServiceName+".$ns.svc.*]",
		"[Secret,$ns,kyverno-cleanup-controller.$ns.svc.*]")
	// The chart folds one filter a line (>-) into one line.
	return strings.ReplaceAll(strings.Join(filters, " "), "$ns", kyvernoNamespace)
}

// kyvernoConfigMaps are the chart's ConfigMaps kyverno and kyverno-metrics,
// the first with selector in its webhooks' namespaceSelector.
func kyvernoConfigMaps(selector map[string]string) ([]*corev1.ConfigMap, error) {
	notIn := func(ns string) metav1.LabelSelectorRequirement {
		return metav1.LabelSelectorRequirement{Key: corev1.LabelMetadataName, Operator: metav1.LabelSelectorOpNotIn, Values: []string{ns}}
	}
	webhooks, err := json.Marshal(map[string]any{"namespaceSelector": metav1.LabelSelector{
		MatchLabels: selector, // the one deviation: the chart has none
		MatchExpressions: []metav1.LabelSelectorRequirement{
			notIn("kube-system"),    // config.webhooks
			notIn(kyvernoNamespace), // config.excludeKyvernoNamespace
		},
	}})
	if err != nil {
		return nil, err
	}
	webhookAnnotations, err := json.Marshal(map[string]string{"admissions.enforcer/disabled": "true"})
	if err != nil {
		return nil, err
	}
	dims := func(d ...string) map[string][]string { return map[string][]string{"disabledLabelDimensions": d} }
	ns, nsOp, nsPol := "resource_namespace", "resource_request_operation", "policy_namespace"
	exposure, err := json.Marshal(map[string]map[string][]string{
		"kyverno_policy_execution_duration_seconds":                  dims(ns, nsOp),
		"kyverno_validating_policy_execution_duration_seconds":       dims(ns, nsOp),
		"kyverno_image_validating_policy_execution_duration_seconds": dims(ns, nsOp),
		"kyverno_mutating_policy_execution_duration_seconds":         dims(ns, nsOp),
		"kyverno_generating_policy_execution_duration_seconds":       dims(ns, nsOp),
		"kyverno_admission_review_duration_seconds":                  dims(ns),
		"kyverno_policy_rule_info_total":                             dims(ns, nsPol),
		"kyverno_policy_results_total":                               dims(ns, nsPol),
		"kyverno_admission_requests_total":                           dims(ns),
		"kyverno_cleanup_controller_deletedobjects_total":            dims(ns, nsPol),
		"kyverno_validating_policy_results_total":                    dims(ns, nsPol),
		"kyverno_mutating_policy_results_total":                      dims(ns, nsPol),
		"kyverno_generating_policy_results_total":                    dims(ns, nsPol),
		"kyverno_image_validating_policy_results_total":              dims(ns, nsPol),
	})
	if err != nil {
		return nil, err
	}
	meta := func(name string) metav1.ObjectMeta {
		return metav1.ObjectMeta{Name: name, Namespace: kyvernoNamespace, Labels: map[string]string{
			"app.kubernetes.io/component": "config",
			"app.kubernetes.io/instance":  "kyverno",
			"app.kubernetes.io/part-of":   "kyverno",
		}}
	}
	return []*corev1.ConfigMap{{
		ObjectMeta: meta(kyvernoConfigMapName),
		Data: map[string]string{
			"enableDefaultRegistryMutation": "true",
			"defaultRegistry":               "docker.io",
			"generateSuccessEvents":         "false",
			"excludeGroups":                 "system:nodes",
			"resourceFilters":               kyvernoResourceFilters(),
			"updateRequestThreshold":        "1000",
			"webhooks":                      string(webhooks),
			"webhookAnnotations":            string(webhookAnnotations),
		},
	}, {
		ObjectMeta: meta(kyvernoMetricsConfigName),
		Data: map[string]string{
			"namespaces":       `{"exclude":[],"include":[]}`,
			"metricsExposure":  string(exposure),
			"bucketBoundaries": "0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 20, 25, 30",
		},
	}}, nil
}

// kyvernoClusterPolicy is the ClusterPolicy: on CREATE of a pod in a
// namespace with selector's labels, set spec.securityContext.sysctls to
// sysctls (a strategic merge patch replaces the list: it has no merge key).
func kyvernoClusterPolicy(selector map[string]string, sysctls []corev1.Sysctl) (*unstructured.Unstructured, error) {
	raw, err := json.Marshal(map[string]any{
		"apiVersion": "kyverno.io/v1",
		"kind":       "ClusterPolicy",
		"metadata": map[string]any{
			"name": kyvernoClusterPolicyName,
			// Pods only: no rules generated for pod controllers.
			"annotations": map[string]string{"pod-policies.kyverno.io/autogen-controllers": "none"},
		},
		"spec": map[string]any{
			"rules": []any{map[string]any{
				"name": kyvernoClusterPolicyRule,
				"match": map[string]any{"any": []any{map[string]any{"resources": map[string]any{
					"kinds":             []string{"Pod"},
					"operations":        []string{"CREATE"},
					"namespaceSelector": metav1.LabelSelector{MatchLabels: selector},
				}}}},
				"mutate": map[string]any{"patchStrategicMerge": map[string]any{
					"spec": map[string]any{"securityContext": map[string]any{"sysctls": sysctls}},
				}},
			}},
		},
	})
	if err != nil {
		return nil, err
	}
	u := &unstructured.Unstructured{}
	if err := u.UnmarshalJSON(raw); err != nil {
		return nil, err
	}
	return u, nil
}

// kyvernoApply creates policy, or replaces the spec of the one there.
func kyvernoApply(ctx context.Context, c client.Client, policy *unstructured.Unstructured) error {
	err := c.Create(ctx, policy)
	if !apierrors.IsAlreadyExists(err) {
		return err
	}
	old := &unstructured.Unstructured{}
	old.SetGroupVersionKind(policy.GroupVersionKind())
	if err := c.Get(ctx, client.ObjectKeyFromObject(policy), old); err != nil {
		return err
	}
	old.SetAnnotations(policy.GetAnnotations())
	old.Object["spec"] = policy.Object["spec"]
	return c.Update(ctx, old)
}

// kyvernoPolicyReady returns nil once the ClusterPolicy's Ready condition
// is True.
func kyvernoPolicyReady(ctx context.Context, c client.Client) error {
	policy := &unstructured.Unstructured{}
	policy.SetAPIVersion("kyverno.io/v1")
	policy.SetKind("ClusterPolicy")
	if err := c.Get(ctx, client.ObjectKey{Name: kyvernoClusterPolicyName}, policy); err != nil {
		return err
	}
	conditions, _, _ := unstructured.NestedSlice(policy.Object, "status", "conditions")
	for _, cond := range conditions {
		m, _ := cond.(map[string]any)
		if m["type"] == "Ready" {
			if m["status"] == "True" {
				return nil
			}
			return fmt.Errorf("ClusterPolicy %s is not ready: %v", kyvernoClusterPolicyName, m["message"])
		}
	}
	return fmt.Errorf("ClusterPolicy %s has no Ready condition yet", kyvernoClusterPolicyName)
}

// kyvernoMatchesPodCreate says whether a webhook with rules would be called
// for the creation of a pod.
func kyvernoMatchesPodCreate(rules []admissionregistrationv1.RuleWithOperations) bool {
	for _, r := range rules {
		if (slices.Contains(r.Operations, admissionregistrationv1.Create) || slices.Contains(r.Operations, admissionregistrationv1.OperationAll)) &&
			(slices.Contains(r.APIGroups, "") || slices.Contains(r.APIGroups, "*")) &&
			(slices.Contains(r.APIVersions, "v1") || slices.Contains(r.APIVersions, "*")) &&
			(slices.Contains(r.Resources, "pods") || slices.Contains(r.Resources, "*") || slices.Contains(r.Resources, "*/*")) {
			return true
		}
	}
	return false
}

// kyvernoWebhook is one webhook of a configuration Kyverno registered.
type kyvernoWebhook struct {
	Config            string // "MutatingWebhookConfiguration name"
	Name              string
	URL               string
	Rules             []admissionregistrationv1.RuleWithOperations
	NamespaceSelector *metav1.LabelSelector
	FailurePolicy     string
}

// kyvernoWebhooks lists the webhooks of every webhook configuration with
// Kyverno's label or with a URL at addr, Kyverno's webhook server.
func kyvernoWebhooks(ctx context.Context, c client.Client, addr string) ([]kyvernoWebhook, error) {
	var mwcs admissionregistrationv1.MutatingWebhookConfigurationList
	var vwcs admissionregistrationv1.ValidatingWebhookConfigurationList
	if err := c.List(ctx, &mwcs); err != nil {
		return nil, err
	}
	if err := c.List(ctx, &vwcs); err != nil {
		return nil, err
	}
	var out []kyvernoWebhook
	ours := func(meta metav1.ObjectMeta, cc admissionregistrationv1.WebhookClientConfig) bool {
		return meta.Labels[kyvernoManagedBy] == "kyverno" || (cc.URL != nil && strings.HasPrefix(*cc.URL, "https://"+addr+"/"))
	}
	url := func(cc admissionregistrationv1.WebhookClientConfig) string {
		if cc.URL != nil {
			return *cc.URL
		}
		if cc.Service != nil {
			return "service " + cc.Service.Namespace + "/" + cc.Service.Name
		}
		return ""
	}
	policy := func(p *admissionregistrationv1.FailurePolicyType) string {
		if p == nil {
			return ""
		}
		return string(*p)
	}
	for _, cfg := range mwcs.Items {
		for _, wh := range cfg.Webhooks {
			if ours(cfg.ObjectMeta, wh.ClientConfig) {
				out = append(out, kyvernoWebhook{"MutatingWebhookConfiguration " + cfg.Name, wh.Name, url(wh.ClientConfig), wh.Rules, wh.NamespaceSelector, policy(wh.FailurePolicy)})
			}
		}
	}
	for _, cfg := range vwcs.Items {
		for _, wh := range cfg.Webhooks {
			if ours(cfg.ObjectMeta, wh.ClientConfig) {
				out = append(out, kyvernoWebhook{"ValidatingWebhookConfiguration " + cfg.Name, wh.Name, url(wh.ClientConfig), wh.Rules, wh.NamespaceSelector, policy(wh.FailurePolicy)})
			}
		}
	}
	return out, nil
}

// kyvernoCheckWebhooks fails if a webhook Kyverno registered could be called
// for a pod created in a namespace without s.selector's labels, or if none
// would be for a namespace with them; it writes the webhooks to
// kyverno-webhooks.yaml in s.dir.
func kyvernoCheckWebhooks(ctx context.Context, c client.Client, s kyvernoSetup, addr string) error {
	webhooks, err := kyvernoWebhooks(ctx, c, addr)
	if err != nil {
		return fmt.Errorf("list Kyverno's webhook configurations: %w", err)
	}
	if raw, err := yaml.Marshal(webhooks); err == nil {
		_ = os.WriteFile(filepath.Join(s.dir, "kyverno-webhooks.yaml"), raw, 0o644)
	}
	// A namespace has at least its name as a label.
	const probe = "kyverno-probe"
	unlabelled := labels.Set{corev1.LabelMetadataName: probe}
	labelled := labels.Set{corev1.LabelMetadataName: probe}
	for k, v := range s.selector {
		labelled[k] = v
	}
	var leaks []string
	pods := 0
	for _, wh := range webhooks {
		if !kyvernoMatchesPodCreate(wh.Rules) {
			continue
		}
		sel := labels.Everything()
		if wh.NamespaceSelector != nil {
			if sel, err = metav1.LabelSelectorAsSelector(wh.NamespaceSelector); err != nil {
				return fmt.Errorf("%s, webhook %s: namespaceSelector: %w", wh.Config, wh.Name, err)
			}
		}
		if sel.Matches(unlabelled) {
			leaks = append(leaks, fmt.Sprintf("%s, webhook %s (namespaceSelector %q)", wh.Config, wh.Name, sel.String()))
		}
		if sel.Matches(labelled) {
			pods++
		}
	}
	if len(leaks) > 0 {
		return fmt.Errorf("kyverno's webhooks for pods would be called in namespaces without the labels %v: %s", s.selector, strings.Join(leaks, "; "))
	}
	if pods == 0 {
		return fmt.Errorf("no webhook of Kyverno is called for pods in namespaces with the labels %v (see %s)", s.selector, filepath.Join(s.dir, "kyverno-webhooks.yaml"))
	}
	return nil
}

// verifyKyverno checks by creating pods (dry run) that the Kyverno of p,
// started by startKyverno(s), adds exactly s.sysctls to a pod of namespace
// labelled (which has s.selector's labels), and that a pod of namespace
// other (which has not) gets no sysctls and never reaches Kyverno: Kyverno's
// count of admission requests for pods (kyverno_admission_requests_total,
// from its metrics) does not move. It assumes nothing else adds sysctls to
// the pods of other. The first pods of a new namespace may pass unmutated
// until Kyverno's namespace informer has seen the namespace, so it tries
// labelled for a while: it also serves as the barrier before a measurement.
func verifyKyverno(ctx context.Context, s kyvernoSetup, p *testenv.Process, labelled, other string) error {
	c, err := client.New(s.cfg, client.Options{Scheme: clientgoscheme.Scheme})
	if err != nil {
		return err
	}
	metricsURL, err := kyvernoMetricsURL(p)
	if err != nil {
		return err
	}
	create := func(ns string) (*corev1.Pod, error) {
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{GenerateName: "kyverno-probe-", Namespace: ns},
			Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "registry.k8s.io/pause:3.10"}}},
		}
		if err := c.Create(ctx, pod, client.DryRunAll); err != nil {
			return nil, fmt.Errorf("create a pod in namespace %s (dry run): %w", ns, err)
		}
		return pod, nil
	}
	before, err := kyvernoPodRequests(ctx, metricsURL)
	if err != nil {
		return err
	}
	pod, err := create(other)
	if err != nil {
		return err
	}
	if got := sysctlsOf(pod); len(got) > 0 {
		return fmt.Errorf("a pod of namespace %s, which lacks the labels %v, got the sysctls %v", other, s.selector, got)
	}
	after, err := kyvernoPodRequests(ctx, metricsURL)
	if err != nil {
		return err
	}
	if after != before {
		return fmt.Errorf("kyverno saw the pod of namespace %s, which lacks the labels %v: its admission requests for pods went from %v to %v", other, s.selector, before, after)
	}
	err = kyvernoPoll(ctx, p, kyvernoProbeTimeout, "Kyverno to add the sysctls to a pod of namespace "+labelled, func() error {
		pod, err := create(labelled)
		if err != nil {
			return err
		}
		if got := sysctlsOf(pod); !sameSysctls(got, s.sysctls) {
			return fmt.Errorf("a pod of namespace %s got the sysctls %v, not %v", labelled, got, s.sysctls)
		}
		return nil
	})
	if err != nil {
		return err
	}
	// Without this the unchanged count above would prove nothing.
	final, err := kyvernoPodRequests(ctx, metricsURL)
	if err != nil {
		return err
	}
	if final <= after {
		return fmt.Errorf("kyverno's metrics at %s did not count the pods of namespace %s it mutated (%v before, %v after)", metricsURL, labelled, after, final)
	}
	return nil
}

// removeKyvernoWebhooks deletes the webhook configurations Kyverno
// registered. Run out of cluster, Kyverno leaves them when it stops, and
// its webhook for pods fails closed: without it, pods of the selected
// namespaces cannot be created once Kyverno is gone.
func removeKyvernoWebhooks(ctx context.Context, cfg *rest.Config) error {
	c, err := client.New(cfg, client.Options{Scheme: clientgoscheme.Scheme})
	if err != nil {
		return err
	}
	has := client.HasLabels{kyvernoManagedBy}
	return errors.Join(
		c.DeleteAllOf(ctx, &admissionregistrationv1.MutatingWebhookConfiguration{}, has),
		c.DeleteAllOf(ctx, &admissionregistrationv1.ValidatingWebhookConfiguration{}, has),
	)
}

// kyvernoMetricsURL is where the Kyverno of p serves its metrics, from its
// arguments.
func kyvernoMetricsURL(p *testenv.Process) (string, error) {
	var host, port string
	for _, a := range p.Cmd.Args {
		if v, ok := strings.CutPrefix(a, "--metricsHost="); ok {
			host = v
		}
		if v, ok := strings.CutPrefix(a, "--metricsPort="); ok {
			port = v
		}
	}
	if host == "" || port == "" {
		return "", errors.New("kyverno: the process has no --metricsHost and --metricsPort")
	}
	return "http://" + net.JoinHostPort(host, port) + "/metrics", nil
}

// kyvernoPodRequests sums Kyverno's count of admission requests for pods,
// over all its labels.
func kyvernoPodRequests(ctx context.Context, url string) (float64, error) {
	raw, err := download(ctx, url, 10*time.Second)
	if err != nil {
		return 0, fmt.Errorf("read Kyverno's metrics: %w", err)
	}
	families, err := parseMetrics(bytes.NewReader(raw))
	if err != nil {
		return 0, fmt.Errorf("read Kyverno's metrics at %s: %w", url, err)
	}
	var sum float64
	for _, m := range families[kyvernoAdmissionPodMetric].GetMetric() {
		if label(m, "resource_kind") == "Pod" {
			sum += m.GetCounter().GetValue()
		}
	}
	return sum, nil
}

// kyvernoFreeAddrs returns n distinct loopback addresses with ports nobody
// listens on.
func kyvernoFreeAddrs(n int) ([]string, error) {
	var out []string
	for len(out) < n {
		addr, err := testenv.FreeAddr()
		if err != nil {
			return nil, err
		}
		if !slices.Contains(out, addr) {
			out = append(out, addr)
		}
	}
	return out, nil
}

// kyvernoPoll calls f until it returns nil, failing when the process exits,
// when ctx ends, or after timeout, with what it waited for and f's last
// error.
func kyvernoPoll(ctx context.Context, p *testenv.Process, timeout time.Duration, what string, f func() error) error {
	var last error
	err := testenv.WaitFor(ctx, timeout, func() (bool, error) {
		if last = f(); last == nil {
			return true, nil
		}
		return false, p.Alive()
	})
	switch {
	case err == nil:
		return nil
	case errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil:
		return fmt.Errorf("timed out after %s waiting for %s (Kyverno's log is %s): %w", timeout, what, p.Log, last)
	default:
		return fmt.Errorf("waiting for %s: %w", what, err)
	}
}
