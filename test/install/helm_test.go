// Package install tests the two ways to install the operator, the Helm chart
// and config/default, against a real API server.
package install

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	sigsyaml "sigs.k8s.io/yaml"

	"github.com/keepalive-operator/keepalive-operator/internal/testenv"
)

var (
	ctx   = context.Background()
	env   *testenv.Env
	chart = filepath.Join(testenv.Root(), "charts", "keepalive-operator")
)

func TestInstall(t *testing.T) {
	RegisterFailHandler(Fail)
	RunSpecs(t, "install suite")
}

var _ = BeforeSuite(func() {
	Expect(os.Getenv("HELM")).NotTo(BeEmpty(), "HELM is not set: run `make test`, which installs Helm when missing")
	var err error
	// No CRDs: the chart installs its own.
	env, err = testenv.Start(0, nil, GinkgoT().TempDir())
	Expect(err).NotTo(HaveOccurred())
	Expect(apiextensionsv1.AddToScheme(env.Scheme)).To(Succeed())
	env.Client, err = client.New(env.Config, client.Options{Scheme: env.Scheme})
	Expect(err).NotTo(HaveOccurred())
})

var _ = AfterSuite(func() {
	if env != nil {
		Expect(env.Stop()).To(Succeed())
	}
})

func helm(args ...string) (stdout, stderr string, err error) {
	cmd := exec.Command(os.Getenv("HELM"), args...)
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+GinkgoT().TempDir(), "HELM_CONFIG_HOME="+GinkgoT().TempDir(), "HELM_DATA_HOME="+GinkgoT().TempDir())
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err = cmd.Run()
	return out.String(), errOut.String(), err
}

// render returns the objects of `helm template` by kind/name.
func render(args ...string) map[string]*unstructured.Unstructured {
	return renderAs("t", "keepalive-system", args...)
}

var _ = It("passes helm lint", func() {
	out, stderr, err := helm("lint", "--strict", chart)
	Expect(err).NotTo(HaveOccurred(), out+stderr)
	Expect(out).To(ContainSubstring("1 chart(s) linted, 0 chart(s) failed"))
})

var _ = It("renders with the operator managing its certificate by default", func() {
	objs := render()
	Expect(objs).To(HaveKey("Secret/t-keepalive-operator-webhook-tls"))
	Expect(objs).NotTo(HaveKey("Certificate/t-keepalive-operator-webhook"))
	deploy := &appsv1.Deployment{}
	Expect(runtimeConvert(objs["Deployment/t-keepalive-operator"], deploy)).To(Succeed())
	Expect(deploy.Spec.Template.Spec.Containers[0].Args).To(ContainElements(
		"--cert-rotation", "--webhook-secret-name=t-keepalive-operator-webhook-tls",
		"--webhook-service-name=t-keepalive-operator-webhook", "--webhook-configuration-name=t-keepalive-operator", "--leader-elect"))
})

var _ = It("renders with cert-manager issuing the certificate", func() {
	objs := render("--set", "certManager.enabled=true")
	Expect(objs).To(HaveKey("Certificate/t-keepalive-operator-webhook"))
	Expect(objs).To(HaveKey("Issuer/t-keepalive-operator-selfsigned"))
	Expect(objs).NotTo(HaveKey("Secret/t-keepalive-operator-webhook-tls"))
	Expect(objs["MutatingWebhookConfiguration/t-keepalive-operator"].GetAnnotations()).To(HaveKeyWithValue(
		"cert-manager.io/inject-ca-from", "keepalive-system/t-keepalive-operator-webhook"))
	deploy := &appsv1.Deployment{}
	Expect(runtimeConvert(objs["Deployment/t-keepalive-operator"], deploy)).To(Succeed())
	Expect(deploy.Spec.Template.Spec.Containers[0].Args).NotTo(ContainElement("--cert-rotation"))
})

var _ = It("gives the operator the webhook's exclusions as flags, selecting what the webhook's selectors select", func() {
	values := filepath.Join(GinkgoT().TempDir(), "values.yaml")
	Expect(os.WriteFile(values, []byte(`webhook:
  excludedNamespaces: [batch, legacy]
  namespaceSelectorExpressions:
  - {key: team, operator: In, values: [web, shop]}
  - {key: sandbox, operator: DoesNotExist}
  objectSelectorExpressions:
  - {key: tier, operator: NotIn, values: [batch]}
  - {key: app, operator: Exists}
`), 0o600)).To(Succeed())
	objs := render("-f", values)
	deploy := &appsv1.Deployment{}
	Expect(runtimeConvert(objs["Deployment/t-keepalive-operator"], deploy)).To(Succeed())
	flags := map[string]string{}
	for _, a := range deploy.Spec.Template.Spec.Containers[0].Args {
		if k, v, ok := strings.Cut(a, "="); ok {
			flags[k] = v
		}
	}
	Expect(flags).To(HaveKeyWithValue("--excluded-namespaces", "batch,legacy"))
	wh := &admissionregistrationv1.MutatingWebhookConfiguration{}
	Expect(runtimeConvert(objs["MutatingWebhookConfiguration/t-keepalive-operator"], wh)).To(Succeed())
	Expect(wh.Webhooks[0].NamespaceSelector.MatchExpressions[0].Values).To(ContainElements("batch", "legacy"))
	// The flags select exactly what the webhook's extra expressions select.
	for flag, sel := range map[string]*metav1.LabelSelector{
		"--namespace-selector": {MatchExpressions: wh.Webhooks[0].NamespaceSelector.MatchExpressions[2:]},
		"--object-selector":    {MatchExpressions: wh.Webhooks[0].ObjectSelector.MatchExpressions[1:]},
	} {
		fromFlag, err := labels.Parse(flags[flag])
		Expect(err).NotTo(HaveOccurred(), flag)
		fromWebhook, err := metav1.LabelSelectorAsSelector(sel)
		Expect(err).NotTo(HaveOccurred())
		Expect(fromFlag.String()).To(Equal(fromWebhook.String()), flag)
	}
	Expect(flags["--namespace-selector"]).To(Equal("team in (web,shop),!sandbox"))

	By("leaving the flags out when the values are empty")
	deploy = &appsv1.Deployment{}
	Expect(runtimeConvert(render()["Deployment/t-keepalive-operator"], deploy)).To(Succeed())
	for _, a := range deploy.Spec.Template.Spec.Containers[0].Args {
		Expect(a).NotTo(Or(HavePrefix("--excluded-namespaces"), HavePrefix("--namespace-selector"), HavePrefix("--object-selector")))
	}
})

var _ = It("refuses values outside the schema", func() {
	_, stderr, err := helm("template", "t", chart, "--set", "webhook.failurePolicy=Deny")
	Expect(err).To(HaveOccurred())
	Expect(stderr).To(ContainSubstring("failurePolicy"))
	_, stderr, err = helm("template", "t", chart, "--set", "webhook.objectSelectorExpressions[0].key=tier", "--set", "webhook.objectSelectorExpressions[0].operator=Gt")
	Expect(err).To(HaveOccurred())
	Expect(stderr).To(ContainSubstring("operator"))
})

var _ = Describe("helm install into a real API server", Ordered, func() {
	const ns = "keepalive-system"
	var stdout, stderr string

	BeforeAll(func() {
		ensureNamespace(ns)
		var err error
		stdout, stderr, err = helm("install", "ka", chart, "--namespace", ns, "--kubeconfig", env.Kubeconfig,
			"--set", "webhook.timeoutSeconds=5", "--set", "webhook.matchConditions=false",
			"--set", "defaultPolicy.enabled=true")
		Expect(err).NotTo(HaveOccurred(), stdout+stderr)
	})

	It("is accepted whole, under Pod Security restricted", func() {
		Expect(stdout).To(ContainSubstring("STATUS: deployed"))
		Expect(stderr).NotTo(ContainSubstring("PodSecurity"), "the pod template breaks the restricted profile")
		for _, obj := range []client.Object{
			&apiextensionsv1.CustomResourceDefinition{ObjectMeta: metav1.ObjectMeta{Name: "keepalivepolicies.keepalive.io"}},
			&apiextensionsv1.CustomResourceDefinition{ObjectMeta: metav1.ObjectMeta{Name: "clusterkeepalivepolicies.keepalive.io"}},
			&apiextensionsv1.CustomResourceDefinition{ObjectMeta: metav1.ObjectMeta{Name: "keepalivenodereports.keepalive.io"}},
			&appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "ka-keepalive-operator"}},
			&corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "ka-keepalive-operator-webhook"}},
			&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "ka-keepalive-operator-webhook-tls"}},
			&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "ka-keepalive-operator"}},
		} {
			Expect(env.Client.Get(ctx, client.ObjectKeyFromObject(obj), obj)).To(Succeed(), "%T %s", obj, obj.GetName())
		}
		policy := &unstructured.Unstructured{}
		policy.SetAPIVersion("keepalive.io/v1alpha1")
		policy.SetKind("ClusterKeepalivePolicy")
		Expect(env.Client.Get(ctx, client.ObjectKey{Name: "default"}, policy)).To(Succeed())
	})

	It("has the webhook settings of the values", func() {
		wh := &admissionregistrationv1.MutatingWebhookConfiguration{}
		Expect(env.Client.Get(ctx, client.ObjectKey{Name: "ka-keepalive-operator"}, wh)).To(Succeed())
		w := wh.Webhooks[0]
		Expect(*w.FailurePolicy).To(Equal(admissionregistrationv1.Ignore))
		Expect(*w.TimeoutSeconds).To(Equal(int32(5)))
		Expect(*w.SideEffects).To(Equal(admissionregistrationv1.SideEffectClassNone))
		Expect(*w.ReinvocationPolicy).To(Equal(admissionregistrationv1.NeverReinvocationPolicy))
		Expect(w.Rules[0].Operations).To(Equal([]admissionregistrationv1.OperationType{admissionregistrationv1.Create}))
		Expect(w.MatchConditions).To(BeEmpty())
		Expect(w.NamespaceSelector.MatchExpressions[0].Values).To(ContainElements("kube-system", "kube-public", "kube-node-lease", ns))
		Expect(w.ObjectSelector.MatchExpressions).To(ContainElement(HaveField("Key", "keepalive.io/inject")))
		Expect(w.ClientConfig.Service.Name).To(Equal("ka-keepalive-operator-webhook"))
	})

	It("grants no Secrets outside its namespace and no write on pods", func() {
		roles := &rbacv1.ClusterRoleList{}
		Expect(env.Client.List(ctx, roles, client.MatchingLabels{"app.kubernetes.io/instance": "ka"})).To(Succeed())
		Expect(roles.Items).NotTo(BeEmpty())
		for _, role := range roles.Items {
			for _, rule := range role.Rules {
				Expect(rule.Resources).NotTo(ContainElement("secrets"), "ClusterRole %s", role.Name)
				Expect(rule.Resources).NotTo(ContainElement("*"), "ClusterRole %s", role.Name)
				if slicesContain(rule.APIGroups, "") && slicesContain(rule.Resources, "pods") {
					Expect(rule.Verbs).To(ConsistOf("get", "list", "watch"), "ClusterRole %s", role.Name)
				}
			}
		}
		role := &rbacv1.Role{}
		Expect(env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: "ka-keepalive-operator"}, role)).To(Succeed())
		Expect(role.Rules).To(ContainElement(HaveField("Resources", ContainElement("secrets"))))
	})
})

// ensureNamespace creates the namespace under the restricted Pod Security
// profile, enforced and warned about, unless another spec did.
func ensureNamespace(name string) {
	err := env.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{
		"pod-security.kubernetes.io/enforce": "restricted",
		"pod-security.kubernetes.io/warn":    "restricted",
	}}})
	Expect(client.IgnoreAlreadyExists(err)).To(Succeed())
}

func runtimeConvert(u *unstructured.Unstructured, into any) error {
	return runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, into)
}

func slicesContain(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

var _ = It("renders the alerts and the dashboard only when asked, from the chart's files as they are", func() {
	Expect(render()).NotTo(Or(HaveKey("ServiceMonitor/t-keepalive-operator"), HaveKey("PrometheusRule/t-keepalive-operator"),
		HaveKey("ConfigMap/t-keepalive-operator-dashboard")), "rendered by default")
	objs := render("--set", "metrics.serviceMonitor.enabled=true", "--set", "metrics.prometheusRule.enabled=true",
		"--set", "metrics.prometheusRule.labels.release=kps", "--set", "metrics.dashboard.enabled=true",
		"--set", "metrics.dashboard.namespace=monitoring", "--set", "metrics.dashboard.annotations.grafana_folder=Platform")
	Expect(objs).To(HaveKey("ServiceMonitor/t-keepalive-operator"))

	rule := objs["PrometheusRule/t-keepalive-operator"]
	Expect(rule).NotTo(BeNil())
	Expect(rule.GetLabels()).To(HaveKeyWithValue("release", "kps"))
	raw, err := os.ReadFile(filepath.Join(chart, "files", "prometheus-rules.yaml"))
	Expect(err).NotTo(HaveOccurred())
	var file map[string]any
	Expect(sigsyaml.Unmarshal(raw, &file)).To(Succeed())
	Expect(rule.Object["spec"]).To(Equal(file), "the PrometheusRule's spec is the rule file that promtool tests")

	dashboard := objs["ConfigMap/t-keepalive-operator-dashboard"]
	Expect(dashboard).NotTo(BeNil())
	Expect(dashboard.GetNamespace()).To(Equal("monitoring"))
	Expect(dashboard.GetLabels()).To(HaveKeyWithValue("grafana_dashboard", "1"))
	Expect(dashboard.GetAnnotations()).To(HaveKeyWithValue("grafana_folder", "Platform"))
	raw, err = os.ReadFile(filepath.Join(chart, "files", "grafana-dashboard.json"))
	Expect(err).NotTo(HaveOccurred())
	data, _, _ := unstructured.NestedStringMap(dashboard.Object, "data")
	Expect(data).To(HaveLen(1))
	Expect(data["keepalive-operator.json"]).To(MatchJSON(raw))

	By("without the sidecar's label, for a Grafana that finds dashboards otherwise")
	objs = render("--set", "metrics.dashboard.enabled=true", "--set", "metrics.dashboard.labels=null")
	Expect(objs["ConfigMap/t-keepalive-operator-dashboard"].GetLabels()).NotTo(HaveKey("grafana_dashboard"))
})
