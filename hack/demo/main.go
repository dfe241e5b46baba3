// Command demo shows the operator at work on a local control plane
// (envtest's kube-apiserver and etcd): it runs the operator in-process,
// applies the sample policies, creates a pod and a Deployment, and prints
// what the operator did. `make demo` runs it; DEMO_KEEP=1 keeps everything
// running for kubectl.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/go-logr/logr"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"github.com/keepalive-operator/keepalive-operator/api/v1alpha1"
	"github.com/keepalive-operator/keepalive-operator/internal/controller"
	"github.com/keepalive-operator/keepalive-operator/internal/keepalive"
	"github.com/keepalive-operator/keepalive-operator/internal/testenv"
	"github.com/keepalive-operator/keepalive-operator/internal/webhook"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func step(format string, args ...any) { fmt.Printf("==> "+format+"\n", args...) }

// warnings prints the admission warnings the API server passes on.
type warnings struct{}

func (warnings) HandleWarningHeader(_ int, _ string, text string) { fmt.Println("    Warning:", text) }

func run() error {
	ctrl.SetLogger(logr.Discard())
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	tmp, err := os.MkdirTemp("", "keepalive-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)

	step("starting a local control plane (kube-apiserver and etcd from %s)", os.Getenv("KUBEBUILDER_ASSETS"))
	env, err := testenv.Start(testenv.CRDs|testenv.Webhooks, warnings{}, tmp)
	if err != nil {
		return fmt.Errorf("start the control plane: %w", err)
	}
	defer func() { _ = env.Stop() }()
	c := env.Client

	step("starting the operator in-process: webhook server, reconcilers")
	mo := env.ManagerOptions()
	mo.Cache = controller.CacheOptions()
	mgr, err := ctrl.NewManager(env.Config, mo)
	if err != nil {
		return err
	}
	admission, err := webhook.Setup(ctx, mgr, webhook.Options{OperatorNamespace: "keepalive-system"})
	if err != nil {
		return err
	}
	if err := controller.Setup(mgr, controller.Options{Cluster: admission.Cluster, MaxConcurrentRollouts: 5}); err != nil {
		return err
	}
	mctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- mgr.Start(mctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			fmt.Fprintln(os.Stderr, "demo: the operator stopped with:", err)
		}
	}()
	if !mgr.GetCache().WaitForCacheSync(ctx) {
		return fmt.Errorf("the operator's cache did not sync")
	}

	for _, ns := range []*corev1.Namespace{
		{ObjectMeta: metav1.ObjectMeta{Name: "shop"}},
		{ObjectMeta: metav1.ObjectMeta{Name: "payments", Labels: map[string]string{"egress": "cloud-nat"}}},
	} {
		if err := c.Create(ctx, ns); err != nil {
			return err
		}
	}

	step("creating Deployment shop/web, running before any policy (its ReplicaSet and pod too: there is no controller-manager)")
	web, err := createDeployment(ctx, c, "shop", "web")
	if err != nil {
		return err
	}

	step("applying the samples of config/samples")
	policies, err := applySamples(ctx, c, "shop")
	if err != nil {
		return err
	}

	step("creating pods shop/api-0 and payments/billing-0 after the policies")
	api := pod("shop", "api-0", map[string]string{"app": "api"})
	billing := pod("payments", "billing-0", map[string]string{"app": "billing"})
	for _, p := range []*corev1.Pod{api, billing} {
		if err := eventually(ctx, func() (bool, error) {
			// The webhook may not have seen the policies yet: try a dry run first.
			dry := p.DeepCopy()
			if err := c.Create(ctx, dry, client.DryRunAll); err != nil {
				return false, err
			}
			return dry.Annotations[keepalive.AnnotationPolicy] != "", nil
		}); err != nil {
			return fmt.Errorf("the webhook never injected %s: %w", p.Name, err)
		}
		if err := c.Create(ctx, p); err != nil {
			return err
		}
	}

	step("waiting for the reconciler to patch shop/web and report")
	if err := eventually(ctx, func() (bool, error) {
		if err := c.Get(ctx, client.ObjectKeyFromObject(web), web); err != nil {
			return false, err
		}
		return web.Annotations[keepalive.AnnotationManagedSysctls] != "", nil
	}); err != nil {
		return fmt.Errorf("shop/web was never patched: %w", err)
	}
	// Play the Deployment controller: replace the pod from the new template
	// and report the rollout done.
	if err := c.DeleteAllOf(ctx, &corev1.Pod{}, client.InNamespace("shop"), client.MatchingLabels{"app": "web"}); err != nil {
		return err
	}
	fresh := pod("shop", "web-2-b8n4q", web.Spec.Template.Labels)
	fresh.Spec.SecurityContext = web.Spec.Template.Spec.SecurityContext.DeepCopy()
	if err := c.Create(ctx, fresh); err != nil {
		return err
	}
	web.Status = appsv1.DeploymentStatus{ObservedGeneration: web.Generation, Replicas: 1, UpdatedReplicas: 1, ReadyReplicas: 1, AvailableReplicas: 1}
	if err := c.Status().Update(ctx, web); err != nil {
		return err
	}
	if err := eventually(ctx, func() (bool, error) {
		for _, p := range policies {
			if err := c.Get(ctx, client.ObjectKeyFromObject(p), p); err != nil {
				return false, err
			}
			s := policyStatus(p)
			ready := meta.FindStatusCondition(s.Conditions, controller.ConditionReady)
			if s.ObservedGeneration != p.GetGeneration() || ready == nil || ready.Reason == controller.ReasonRolloutInProgress ||
				(p.GetName() == "behind-alb" && (s.Pods == nil || s.Pods.Compliant != 1)) {
				return false, nil
			}
		}
		return true, nil
	}); err != nil {
		return fmt.Errorf("the policies never reported: %w", err)
	}

	printReport(policies, []*corev1.Pod{api, billing, fresh}, web)

	if os.Getenv("DEMO_KEEP") == "1" {
		fmt.Printf("\nThe control plane and the operator keep running. In another shell:\n\n  export KUBECONFIG=%s\n  kubectl get kap,ckap -A -o wide\n\nPress Ctrl-C to stop.\n", env.Kubeconfig)
		<-ctx.Done()
	}
	step("cleaning up")
	return nil
}

func policyStatus(obj client.Object) *v1alpha1.KeepalivePolicyStatus {
	return obj.(interface {
		PolicyStatus() *v1alpha1.KeepalivePolicyStatus
	}).PolicyStatus()
}

// eventually polls cond for up to 30 seconds.
func eventually(ctx context.Context, cond func() (bool, error)) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		ok, err := cond()
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			if err == nil {
				err = fmt.Errorf("timed out")
			}
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func pod(ns, name string, labels map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "app:1"}}},
	}
}

func createDeployment(ctx context.Context, c client.Client, ns, name string) (*appsv1.Deployment, error) {
	labels := map[string]string{"app": name}
	template := corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{Labels: labels},
		Spec: corev1.PodSpec{
			SecurityContext: &corev1.PodSecurityContext{Sysctls: []corev1.Sysctl{{Name: "net.ipv4.ip_local_port_range", Value: "1024 65535"}}},
			Containers:      []corev1.Container{{Name: "app", Image: "app:1"}},
		},
	}
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       appsv1.DeploymentSpec{Selector: &metav1.LabelSelector{MatchLabels: labels}, Template: template},
	}
	if err := c.Create(ctx, d); err != nil {
		return nil, err
	}
	rs := &appsv1.ReplicaSet{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name + "-1",
			OwnerReferences: []metav1.OwnerReference{*metav1.NewControllerRef(d, appsv1.SchemeGroupVersion.WithKind("Deployment"))}},
		Spec: appsv1.ReplicaSetSpec{Selector: &metav1.LabelSelector{MatchLabels: labels}, Template: template},
	}
	if err := c.Create(ctx, rs); err != nil {
		return nil, err
	}
	p := pod(ns, name+"-1-x7k2p", labels)
	p.Spec.SecurityContext = template.Spec.SecurityContext.DeepCopy()
	p.OwnerReferences = []metav1.OwnerReference{*metav1.NewControllerRef(rs, appsv1.SchemeGroupVersion.WithKind("ReplicaSet"))}
	return d, c.Create(ctx, p)
}

// applySamples creates every sample policy, the namespaced ones in ns.
func applySamples(ctx context.Context, c client.Client, ns string) ([]client.Object, error) {
	files, err := filepath.Glob(filepath.Join(testenv.Root(), "config", "samples", "keepalive_*.yaml"))
	if err != nil {
		return nil, err
	}
	var out []client.Object
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		var obj client.Object = &v1alpha1.KeepalivePolicy{}
		if strings.Contains(string(raw), "kind: ClusterKeepalivePolicy") {
			obj = &v1alpha1.ClusterKeepalivePolicy{}
		}
		if err := yaml.UnmarshalStrict(raw, obj); err != nil {
			return nil, fmt.Errorf("%s: %w", f, err)
		}
		if _, ok := obj.(*v1alpha1.KeepalivePolicy); ok {
			obj.SetNamespace(ns)
		}
		if err := c.Create(ctx, obj); err != nil {
			return nil, fmt.Errorf("%s: %w", f, err)
		}
		fmt.Printf("    %s %s\n", kindOf(obj), obj.GetName())
		out = append(out, obj)
	}
	return out, nil
}

func kindOf(obj client.Object) string {
	if _, ok := obj.(*v1alpha1.ClusterKeepalivePolicy); ok {
		return "ClusterKeepalivePolicy"
	}
	return "KeepalivePolicy"
}

func printReport(policies []client.Object, pods []*corev1.Pod, web *appsv1.Deployment) {
	fmt.Println()
	fmt.Println("POLICIES")
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "KIND\tNAME\tTIME\tINTERVAL\tPROBES\tDETECTION\tGOVERNING\tMATCHED\tCOMPLIANT\tREADY\tL7-PROXY")
	for _, p := range policies {
		s := policyStatus(p)
		name := p.GetName()
		if p.GetNamespace() != "" {
			name = p.GetNamespace() + "/" + name
		}
		var k v1alpha1.KeepaliveValues
		if s.Keepalive != nil {
			k = *s.Keepalive
		}
		var g v1alpha1.GoverningTimeout
		if s.GoverningTimeout != nil {
			g = *s.GoverningTimeout
		}
		var pc v1alpha1.PodCounts
		if s.Pods != nil {
			pc = *s.Pods
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\t%s (%d s)\t%d\t%d\t%s\t%s\n", kindOf(p), name, k.TimeSeconds, k.IntervalSeconds, k.Probes,
			k.DetectionSeconds, g.Name, g.Seconds, pc.Matched, pc.Compliant, conditionSummary(s, controller.ConditionReady), conditionSummary(s, controller.ConditionL7ProxyInPath))
	}
	_ = tw.Flush()

	fmt.Println()
	fmt.Println("PODS AS ADMITTED")
	tw = tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "POD\tSYSCTLS\tkeepalive.io/policy")
	for _, p := range pods {
		var sysctls []corev1.Sysctl
		if p.Spec.SecurityContext != nil {
			sysctls = p.Spec.SecurityContext.Sysctls
		}
		fmt.Fprintf(tw, "%s/%s\t%s\t%s\n", p.Namespace, p.Name, keepalive.Describe(sysctls), p.Annotations[keepalive.AnnotationPolicy])
	}
	_ = tw.Flush()

	fmt.Println()
	fmt.Println("DEPLOYMENT shop/web, RUNNING BEFORE THE POLICIES, ITS TEMPLATE PATCHED BY THE RECONCILER")
	fmt.Printf("  template sysctls: %s\n", keepalive.Describe(web.Spec.Template.Spec.SecurityContext.Sysctls))
	fmt.Printf("  %s: %s\n", keepalive.AnnotationManagedSysctls, web.Annotations[keepalive.AnnotationManagedSysctls])
	fmt.Println()
}

func conditionSummary(s *v1alpha1.KeepalivePolicyStatus, t string) string {
	c := meta.FindStatusCondition(s.Conditions, t)
	if c == nil {
		return "-"
	}
	return string(c.Status) + " (" + c.Reason + ")"
}
