package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"github.com/keepalive-operator/keepalive-operator/api/v1alpha1"
	"github.com/keepalive-operator/keepalive-operator/internal/testenv"
)

const (
	// operatorNamespace is the operator's own namespace, which it never
	// injects.
	operatorNamespace = "keepalive-system"
	// configLabel names, on a namespace, the configuration whose pods it
	// holds; the webhooks and policies select on it.
	configLabel = "bench.keepalive.io/config"
	// operatorLabel is on the namespaces of both operator configurations:
	// the one ClusterKeepalivePolicy selects it.
	operatorLabel = "bench.keepalive.io/operator"
	// scaleLabel is on the policies that only the large configuration has.
	scaleLabel = "bench.keepalive.io/scale"
	// workers is how many objects the program writes at once while it sets
	// the cluster up.
	workers = 24
)

// wantSysctls is what every configuration that injects adds: the values of
// the aws-nlb preset (350 s idle timeout: time 175, interval 30, 9 probes),
// as DESIGN.md computes them.
var wantSysctls = []corev1.Sysctl{
	{Name: "net.ipv4.tcp_keepalive_time", Value: "175"},
	{Name: "net.ipv4.tcp_keepalive_intvl", Value: "30"},
	{Name: "net.ipv4.tcp_keepalive_probes", Value: "9"},
}

// plane is the running kube-apiserver and etcd, and what the program started
// beside them.
type plane struct {
	env *testenv.Env
	// c and cs are an administrator's clients, fast enough to set the
	// cluster up in seconds; cs speaks protobuf for the pods.
	c  client.Client
	cs kubernetes.Interface
	// procs are the measured processes, the API server and etcd first.
	procs []proc
}

// proc is a measured process.
type proc struct {
	name string
	pid  int
	// alive returns an error once the process has exited; nil for the
	// control plane, which envtest watches.
	alive func() error
}

func startPlane(dir string) (*plane, error) {
	env, err := testenv.Start(testenv.CRDs, nil, dir)
	if err != nil {
		return nil, fmt.Errorf("start kube-apiserver and etcd: %w", err)
	}
	p := &plane{env: env}
	cfg := rest.CopyConfig(env.Config)
	cfg.QPS, cfg.Burst = 5000, 10000
	if p.c, err = client.New(cfg, client.Options{Scheme: env.Scheme}); err != nil {
		return p, fmt.Errorf("create the admin client: %w", err)
	}
	pb := rest.CopyConfig(cfg)
	pb.ContentType = "application/vnd.kubernetes.protobuf"
	pb.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	if p.cs, err = kubernetes.NewForConfig(pb); err != nil {
		return p, fmt.Errorf("create the admin clientset: %w", err)
	}
	for _, name := range []string{"kube-apiserver", "etcd"} {
		pid, err := childProcess(filepath.Join(os.Getenv("KUBEBUILDER_ASSETS"), name))
		if err != nil {
			return p, err
		}
		p.procs = append(p.procs, proc{name: name, pid: pid, alive: func() error { return nil }})
	}
	return p, nil
}

func (p *plane) stop() error {
	if err := p.env.Stop(); err != nil {
		return fmt.Errorf("stop the control plane: %w", err)
	}
	return nil
}

func (p *plane) measure(name string, pr *testenv.Process) {
	p.procs = append(p.procs, proc{name: name, pid: pr.PID(), alive: pr.Alive})
}

// childProcess finds the process of this program's that runs the binary
// exe: envtest starts kube-apiserver and etcd as its children.
func childProcess(exe string) (int, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0, err
	}
	me := os.Getpid()
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if target, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); err != nil || target != exe {
			continue
		}
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		s := string(stat)
		fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(fields) > 1 && fields[1] == strconv.Itoa(me) {
			return pid, nil
		}
	}
	return 0, fmt.Errorf("no process of %s among this program's children", exe)
}

// createNamespaces creates the operator's namespace, one namespace for the
// pods of each configuration, and n more of a large cluster, labelled by
// team (t-0 to t-999) and every tenth one tier=gold.
func (p *plane) createNamespaces(ctx context.Context, configs []*config, n int) error {
	fixed := []*corev1.Namespace{{ObjectMeta: metav1.ObjectMeta{Name: operatorNamespace}}}
	for _, c := range configs {
		labels := map[string]string{configLabel: c.name}
		if c.operator {
			labels[operatorLabel] = "true"
		}
		fixed = append(fixed, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: c.namespace, Labels: labels}})
	}
	for _, ns := range fixed {
		if err := p.c.Create(ctx, ns); err != nil {
			return fmt.Errorf("create namespace %s: %w", ns.Name, err)
		}
	}
	return testenv.Parallel(ctx, n, workers, func(ctx context.Context, i int) error {
		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: clusterNamespace(i), Labels: namespaceLabels(i)}}
		if err := p.c.Create(ctx, ns); err != nil {
			return fmt.Errorf("create namespace %s: %w", ns.Name, err)
		}
		return nil
	})
}

func clusterNamespace(i int) string { return fmt.Sprintf("team-%05d", i) }

func namespaceLabels(i int) map[string]string {
	l := map[string]string{"team": fmt.Sprintf("t-%d", i%1000)}
	if i%10 == 0 {
		l["tier"] = "gold"
	}
	return l
}

// basePolicy is the one ClusterKeepalivePolicy of both operator
// configurations: it selects their namespaces.
func basePolicy() *v1alpha1.ClusterKeepalivePolicy {
	return &v1alpha1.ClusterKeepalivePolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "bench"},
		Spec: v1alpha1.ClusterKeepalivePolicySpec{
			NamespaceSelector:   &v1alpha1.LabelSelector{MatchLabels: map[string]v1alpha1.LabelValue{operatorLabel: "true"}},
			KeepalivePolicySpec: v1alpha1.KeepalivePolicySpec{IdleTimeouts: []v1alpha1.Hop{{Preset: v1alpha1.PresetAWSNLB}}},
		},
	}
}

// scalePolicies are the policies the large configuration adds to the base
// one: namespaced policies in the first namespaces of the cluster, and
// cluster policies selecting teams' namespaces, none of them the
// benchmark's pods.
func (b *bench) scalePolicies() []client.Object {
	presets := []v1alpha1.Preset{v1alpha1.PresetAWSNLB, v1alpha1.PresetAzureLB, v1alpha1.PresetGCPCloudNAT, v1alpha1.PresetAWSNATGateway}
	labels := map[string]string{scaleLabel: "true"}
	var out []client.Object
	for i := range b.namespaced {
		out = append(out, &v1alpha1.KeepalivePolicy{
			ObjectMeta: metav1.ObjectMeta{Name: "db", Namespace: clusterNamespace(i), Labels: labels},
			Spec: v1alpha1.KeepalivePolicySpec{
				PodSelector:  &v1alpha1.LabelSelector{MatchLabels: map[string]v1alpha1.LabelValue{"app": "db"}},
				IdleTimeouts: []v1alpha1.Hop{{Preset: presets[i%len(presets)]}},
			},
		})
	}
	for i := 1; i < b.cluster; i++ {
		sel := &v1alpha1.LabelSelector{MatchLabels: map[string]v1alpha1.LabelValue{"team": v1alpha1.LabelValue(fmt.Sprintf("t-%d", i%1000))}}
		if i%10 == 0 {
			sel.MatchExpressions = []v1alpha1.LabelSelectorRequirement{{Key: "tier", Operator: v1alpha1.LabelSelectorOpIn, Values: []v1alpha1.LabelValue{"gold", "silver"}}}
		}
		out = append(out, &v1alpha1.ClusterKeepalivePolicy{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("team-%d", i), Labels: labels},
			Spec: v1alpha1.ClusterKeepalivePolicySpec{
				NamespaceSelector:   sel,
				KeepalivePolicySpec: v1alpha1.KeepalivePolicySpec{IdleTimeouts: []v1alpha1.Hop{{Seconds: ptr.To(int32(300 + i))}}},
			},
		})
	}
	return out
}

// addScalePolicies creates the large configuration's policies and waits
// until the operator has reconciled every one.
func (p *plane) addScalePolicies(ctx context.Context, objs []client.Object) error {
	if err := testenv.Parallel(ctx, len(objs), workers, func(ctx context.Context, i int) error {
		if err := p.c.Create(ctx, objs[i].DeepCopyObject().(client.Object)); err != nil {
			return fmt.Errorf("create %s %s: %w", objs[i].GetObjectKind().GroupVersionKind().Kind, client.ObjectKeyFromObject(objs[i]), err)
		}
		return nil
	}); err != nil {
		return err
	}
	return testenv.WaitFor(ctx, 5*time.Minute, func() (bool, error) {
		reconciled, err := p.reconciledScalePolicies(ctx)
		return reconciled == len(objs), err
	})
}

// reconciledScalePolicies counts the large configuration's policies whose
// status is of their generation.
func (p *plane) reconciledScalePolicies(ctx context.Context) (int, error) {
	sel := client.MatchingLabels{scaleLabel: "true"}
	var nsd v1alpha1.KeepalivePolicyList
	var cl v1alpha1.ClusterKeepalivePolicyList
	if err := p.c.List(ctx, &nsd, sel); err != nil {
		return 0, err
	}
	if err := p.c.List(ctx, &cl, sel); err != nil {
		return 0, err
	}
	n := 0
	for _, pol := range nsd.Items {
		if pol.Status.ObservedGeneration == pol.Generation {
			n++
		}
	}
	for _, pol := range cl.Items {
		if pol.Status.ObservedGeneration == pol.Generation {
			n++
		}
	}
	return n, nil
}

// removeScalePolicies deletes them and waits until the operator has let
// them go (its finalizer).
func (p *plane) removeScalePolicies(ctx context.Context, objs []client.Object) error {
	if err := testenv.Parallel(ctx, len(objs), workers, func(ctx context.Context, i int) error {
		if err := p.c.Delete(ctx, objs[i].DeepCopyObject().(client.Object)); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("delete %s: %w", client.ObjectKeyFromObject(objs[i]), err)
		}
		return nil
	}); err != nil {
		return err
	}
	return testenv.WaitFor(ctx, 5*time.Minute, func() (bool, error) {
		sel := client.MatchingLabels{scaleLabel: "true"}
		var nsd v1alpha1.KeepalivePolicyList
		var cl v1alpha1.ClusterKeepalivePolicyList
		if err := p.c.List(ctx, &nsd, sel); err != nil {
			return false, err
		}
		if err := p.c.List(ctx, &cl, sel); err != nil {
			return false, err
		}
		return len(nsd.Items)+len(cl.Items) == 0, nil
	})
}

// webhookEndpoint is a webhook server of the run: its address and the
// certificate it serves, which the API server trusts as its own CA.
type webhookEndpoint struct {
	addr, certDir string
	ca            []byte
}

func newEndpoint(dir string) (webhookEndpoint, error) {
	e := webhookEndpoint{certDir: dir}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return e, err
	}
	if err := testenv.WriteServingCert(dir, "keepalive-bench"); err != nil {
		return e, fmt.Errorf("write a serving certificate: %w", err)
	}
	var err error
	if e.ca, err = os.ReadFile(filepath.Join(dir, "tls.crt")); err != nil {
		return e, err
	}
	e.addr, err = testenv.FreeAddr()
	return e, err
}

func (e webhookEndpoint) port() string {
	_, port, _ := net.SplitHostPort(e.addr)
	return port
}

// startOperator runs the operator's binary out of cluster, as its own user,
// its webhook server on e.
// With pprof, it serves Go's profiles there.
func (b *bench) startOperator(ctx context.Context, p *plane, e webhookEndpoint, pprof string) (*testenv.Process, error) {
	binary, err := testenv.BuildOperator(b.tmp)
	if err != nil {
		return nil, err
	}
	kubeconfig := filepath.Join(b.tmp, "operator.kubeconfig")
	if err := p.env.OperatorKubeconfig(kubeconfig); err != nil {
		return nil, fmt.Errorf("kubeconfig of %s: %w", testenv.OperatorUser, err)
	}
	return testenv.StartOperator(ctx, binary, kubeconfig, filepath.Join(b.tmp, "operator.log"), operatorNamespace,
		"--webhook-port", e.port(),
		"--webhook-cert-path", e.certDir,
		"--pprof-bind-address", cmp.Or(pprof, "0"),
	)
}

// startNoop runs the no-op webhook, this program in its other role, and
// returns once it accepts connections; when it does not, it stops it.
func (b *bench) startNoop(ctx context.Context, e webhookEndpoint) (*testenv.Process, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	noop, err := testenv.StartProcess("the no-op webhook", filepath.Join(b.tmp, "noop.log"),
		exec.Command(self, noopCommand, "-addr", e.addr, "-cert-dir", e.certDir))
	if err != nil {
		return nil, err
	}
	err = testenv.WaitFor(ctx, 30*time.Second, func() (bool, error) {
		if err := noop.Alive(); err != nil {
			return false, err
		}
		c, err := net.DialTimeout("tcp", e.addr, time.Second)
		if err != nil {
			return false, nil
		}
		_ = c.Close()
		return true, nil
	})
	if err != nil {
		return nil, errors.Join(fmt.Errorf("the no-op webhook did not accept connections (log: %s): %w", noop.Log, err), noop.Stop(10*time.Second))
	}
	return noop, nil
}

// webhookConfigurations are the operator's webhook, as config/webhook
// installs it but called by URL and only for the operator configurations'
// namespaces, and the no-op and constant-patch webhooks with the same
// rules, selectors and match conditions, each for its configuration's
// namespace.
func webhookConfigurations(operator, noop webhookEndpoint) (*admissionregistrationv1.MutatingWebhookConfiguration, error) {
	raw, err := os.ReadFile(filepath.Join(testenv.Root(), "config", "webhook", "manifests.yaml"))
	if err != nil {
		return nil, err
	}
	var wc admissionregistrationv1.MutatingWebhookConfiguration
	if err := yaml.UnmarshalStrict(raw, &wc); err != nil {
		return nil, fmt.Errorf("config/webhook/manifests.yaml: %w", err)
	}
	if len(wc.Webhooks) != 1 || wc.Webhooks[0].ClientConfig.Service == nil {
		return nil, fmt.Errorf("config/webhook/manifests.yaml: want one webhook with a service, have %d", len(wc.Webhooks))
	}
	wc.Name = "keepalive-bench"
	base := wc.Webhooks[0]
	hook := func(name, url string, ca []byte, configs ...string) admissionregistrationv1.MutatingWebhook {
		h := *base.DeepCopy()
		h.Name = name
		h.ClientConfig = admissionregistrationv1.WebhookClientConfig{URL: ptr.To(url), CABundle: ca}
		h.NamespaceSelector.MatchExpressions = append(h.NamespaceSelector.MatchExpressions, metav1.LabelSelectorRequirement{
			Key: configLabel, Operator: metav1.LabelSelectorOpIn, Values: configs})
		return h
	}
	wc.Webhooks = []admissionregistrationv1.MutatingWebhook{
		hook(base.Name, "https://"+operator.addr+ptr.Deref(base.ClientConfig.Service.Path, "/"), operator.ca, configOperator, configScale),
		hook("noop.bench.keepalive.io", "https://"+noop.addr+noopPath, noop.ca, configNoop),
		hook("patch.bench.keepalive.io", "https://"+noop.addr+patchPath, noop.ca, configPatch),
	}
	return &wc, nil
}

// mapPatch is the MutatingAdmissionPolicy's mutation: a JSON patch whose
// value is a list of plain map literals (a list of typed
// Object.spec.securityContext.sysctls values makes kube-apiserver 1.36.3
// fail the request with an HTTP/2 INTERNAL_ERROR; an ApplyConfiguration
// cannot set the atomic sysctls list). The API server defaults
// spec.securityContext before admission, so the path exists.
func mapPatch() string {
	var items []string
	for _, s := range wantSysctls {
		items = append(items, fmt.Sprintf("{%q: %q, %q: %q}", "name", s.Name, "value", s.Value))
	}
	return `[JSONPatch{op: "add", path: "/spec/securityContext/sysctls", value: [` + strings.Join(items, ", ") + `]}]`
}

// mutatingAdmissionPolicy adds the same sysctls in the API server itself,
// to pods of the namespaces of config.
func mutatingAdmissionPolicy(config string) (*admissionregistrationv1.MutatingAdmissionPolicy, *admissionregistrationv1.MutatingAdmissionPolicyBinding) {
	pol := &admissionregistrationv1.MutatingAdmissionPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "keepalive-bench"},
		Spec: admissionregistrationv1.MutatingAdmissionPolicySpec{
			MatchConstraints: &admissionregistrationv1.MatchResources{
				ResourceRules: []admissionregistrationv1.NamedRuleWithOperations{{RuleWithOperations: admissionregistrationv1.RuleWithOperations{
					Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create},
					Rule:       admissionregistrationv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods"}},
				}}},
			},
			FailurePolicy:      ptr.To(admissionregistrationv1.Ignore),
			ReinvocationPolicy: admissionregistrationv1.NeverReinvocationPolicy,
			Mutations: []admissionregistrationv1.Mutation{{
				PatchType: admissionregistrationv1.PatchTypeJSONPatch,
				JSONPatch: &admissionregistrationv1.JSONPatch{Expression: mapPatch()},
			}},
		},
	}
	binding := &admissionregistrationv1.MutatingAdmissionPolicyBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "keepalive-bench"},
		Spec: admissionregistrationv1.MutatingAdmissionPolicyBindingSpec{
			PolicyName: pol.Name,
			MatchResources: &admissionregistrationv1.MatchResources{
				NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{configLabel: config}},
			},
		},
	}
	return pol, binding
}
