package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/spf13/pflag"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/discovery"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/keepalive-operator/keepalive-operator/api/v1alpha1"
	"github.com/keepalive-operator/keepalive-operator/internal/keepalive"
)

// clusterFlags are kubectl's flags for reaching a cluster: --kubeconfig,
// --context, -n and the others of clientcmd.
type clusterFlags struct {
	loading   *clientcmd.ClientConfigLoadingRules
	overrides clientcmd.ConfigOverrides
}

func addClusterFlags(fs *pflag.FlagSet) *clusterFlags {
	f := &clusterFlags{loading: clientcmd.NewDefaultClientConfigLoadingRules()}
	fs.StringVar(&f.loading.ExplicitPath, "kubeconfig", "", "Path to the kubeconfig file.")
	clientcmd.BindOverrideFlags(&f.overrides, fs, clientcmd.RecommendedConfigOverrideFlags(""))
	return f
}

// connect returns a client of the cluster and the namespace the flags name.
func (f *clusterFlags) connect() (client.Client, *discovery.DiscoveryClient, string, error) {
	config := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(f.loading, &f.overrides)
	rest, err := config.ClientConfig()
	if err != nil {
		return nil, nil, "", fmt.Errorf("load the kubeconfig: %w", err)
	}
	namespace, _, err := config.Namespace()
	if err != nil {
		return nil, nil, "", err
	}
	scheme := runtime.NewScheme()
	if err := errors.Join(clientgoscheme.AddToScheme(scheme), v1alpha1.AddToScheme(scheme)); err != nil {
		return nil, nil, "", err
	}
	c, err := client.New(rest, client.Options{Scheme: scheme})
	if err != nil {
		return nil, nil, "", err
	}
	disco, err := discovery.NewDiscoveryClientForConfig(rest)
	return c, disco, namespace, err
}

// explainOptions are the flags of `kubectl keepalive explain`, besides the
// cluster's.
type explainOptions struct {
	operatorFlags
	output string
}

// Explanation is what explain finds out about one pod or workload.
type Explanation struct {
	Object    string            `json:"object"`
	Namespace map[string]string `json:"namespaceLabels"`
	// Policies are the policies in force that select it, the governing one
	// first.
	Policies []PolicyMatch `json:"policies"`
	// Governing is the policy whose values it gets, and Over why it wins
	// over each other one.
	Governing string            `json:"governing,omitempty"`
	Over      map[string]string `json:"over,omitempty"`
	// Skipped is why it is left alone, with Warnings in a person's words.
	Skipped  keepalive.SkipReason `json:"skipped,omitempty"`
	Warnings []string             `json:"warnings,omitempty"`
	// Has and WouldGet are its keepalive sysctls now and as the operator
	// wants them: the pod's at admission, or the workload's template.
	Has      []corev1.Sysctl `json:"has"`
	WouldGet []corev1.Sysctl `json:"wouldGet"`
	// Annotation is a pod's keepalive.io/policy; Record a workload's
	// keepalive.io/managed-sysctls.
	Annotation string             `json:"annotation,omitempty"`
	Record     *keepalive.Managed `json:"record,omitempty"`
	// Connections is a pod's connections as its node's audit last saw them.
	Connections *v1alpha1.PodConnections `json:"connections,omitempty"`
}

// PolicyMatch is one policy that selects the object.
type PolicyMatch struct {
	Policy   string        `json:"policy"`
	Mode     v1alpha1.Mode `json:"mode"`
	Time     int32         `json:"timeSeconds"`
	Interval int32         `json:"intervalSeconds"`
	Probes   int32         `json:"probes"`
	Ready    string        `json:"ready"`
}

func runExplain(ctx context.Context, target string, o explainOptions, f *clusterFlags, out io.Writer) error {
	kindName, name, ok := strings.Cut(target, "/")
	k, known := kindNamed(kindName)
	if !ok || !known || name == "" {
		return fmt.Errorf("explain: %q is not KIND/NAME with a kind of pod, deploy, sts, ds, rs or cronjob", target)
	}
	if err := checkOutput("explain", o.output); err != nil {
		return err
	}
	c, disco, namespace, err := f.connect()
	if err != nil {
		return fmt.Errorf("explain: %w", err)
	}
	e, err := explain(ctx, c, disco, k, namespace, name, o)
	if err != nil {
		return fmt.Errorf("explain: %w", err)
	}
	return write(out, o.output, e, e.text)
}

// explain gathers what the decision reads and decides as the operator does.
func explain(ctx context.Context, c client.Client, disco discovery.ServerVersionInterface, k kind, namespace, name string, o explainOptions) (*Explanation, error) {
	obj := k.new()
	if err := c.Get(ctx, client.ObjectKey{Namespace: namespace, Name: name}, obj); err != nil {
		return nil, err
	}
	var ns corev1.Namespace
	if err := c.Get(ctx, client.ObjectKey{Name: namespace}, &ns); err != nil {
		return nil, err
	}
	cluster, _, err := clusterOf(ctx, c, disco, o.operatorFlags)
	if err != nil {
		return nil, err
	}
	namespaced, clusterPolicies, ready, err := policiesInForce(ctx, c, namespace)
	if err != nil {
		return nil, err
	}

	e := &Explanation{Object: k.name + " " + namespace + "/" + name, Namespace: ns.Labels}
	nsView := keepalive.Namespace{Name: ns.Name, Labels: ns.Labels}
	var view keepalive.PodView
	var governing *keepalive.Policy
	if pod, isPod := obj.(*corev1.Pod); isPod {
		view = keepalive.SpecView(pod.Labels, pod.Annotations, &pod.Spec)
		d := keepalive.Decide(view, nsView, cluster, namespaced, clusterPolicies)
		governing, e.Skipped, e.Warnings = d.Policy, d.Skip, d.Warnings
		e.WouldGet = keepalive.SysctlsOf(d.SysctlsAfter(view.Sysctls))
		e.Annotation = pod.Annotations[keepalive.AnnotationPolicy]
		if e.Connections, err = connectionsOf(ctx, c, pod); err != nil {
			return nil, err
		}
	} else {
		view = keepalive.TemplateView(obj)
		rec, hasRecord, err := keepalive.ParseManaged(obj.GetAnnotations())
		if err != nil {
			return nil, fmt.Errorf("the record of %s: %w", e.Object, err)
		}
		if hasRecord {
			e.Record = &rec
		}
		t := keepalive.DesiredTemplate(view, e.Record, nsView, cluster, namespaced, clusterPolicies)
		governing, e.Skipped, e.WouldGet = t.Policy, t.Skip, keepalive.SysctlsOf(t.Sysctls)
	}
	e.Has = keepalive.SysctlsOf(view.Sysctls)

	target := keepalive.Target{Namespace: namespace, Labels: view.Labels, NamespaceLabels: ns.Labels}
	var selecting []keepalive.Policy
	for _, p := range slices.Concat(namespaced, clusterPolicies) {
		if p.Applies(target) {
			selecting = append(selecting, p)
		}
	}
	if governing != nil {
		e.Governing = governing.Ref.String()
		// The governing policy first, then the order of Select.
		slices.SortStableFunc(selecting, func(a, b keepalive.Policy) int {
			switch {
			case a.Ref == governing.Ref:
				return -1
			case b.Ref == governing.Ref:
				return 1
			}
			return strings.Compare(a.Ref.String(), b.Ref.String())
		})
		for i := range selecting {
			if selecting[i].Ref != governing.Ref {
				if e.Over == nil {
					e.Over = map[string]string{}
				}
				e.Over[selecting[i].Ref.String()] = keepalive.Precedence(governing, &selecting[i])
			}
		}
	}
	for _, p := range selecting {
		v := p.Result.Values
		e.Policies = append(e.Policies, PolicyMatch{Policy: p.Ref.String(), Mode: p.Mode, Time: v.TimeSeconds,
			Interval: v.IntervalSeconds, Probes: v.Probes, Ready: ready[p.Ref]})
	}
	return e, nil
}

// clusterOf is the cluster as the operator's decisions read it, and its
// nodes.
func clusterOf(ctx context.Context, c client.Client, disco discovery.ServerVersionInterface, o operatorFlags) (keepalive.Cluster, []corev1.Node, error) {
	info, err := disco.ServerVersion()
	if err != nil {
		return keepalive.Cluster{}, nil, fmt.Errorf("read the server's version: %w", err)
	}
	minor, err := keepalive.ServerMinor(info)
	if err != nil {
		return keepalive.Cluster{}, nil, err
	}
	cluster, err := o.cluster(minor)
	if err != nil {
		return keepalive.Cluster{}, nil, err
	}
	var nodes corev1.NodeList
	if err := c.List(ctx, &nodes); err != nil {
		return keepalive.Cluster{}, nil, fmt.Errorf("list nodes: %w", err)
	}
	for i := range nodes.Items {
		if node := keepalive.NodeOf(&nodes.Items[i]); node.Old() {
			cluster.OldNodes = append(cluster.OldNodes, node)
		}
	}
	return cluster, nodes.Items, nil
}

// policiesInForce lists the policies that may apply in a namespace ("" for
// every namespace) and are in force (not being deleted, their spec
// computes), and the status of each one's Ready condition.
func policiesInForce(ctx context.Context, c client.Client, namespace string) (namespaced, cluster []keepalive.Policy, ready map[keepalive.Ref]string, err error) {
	ready = map[keepalive.Ref]string{}
	var kaps v1alpha1.KeepalivePolicyList
	if err := c.List(ctx, &kaps, client.InNamespace(namespace)); err != nil {
		return nil, nil, nil, fmt.Errorf("list KeepalivePolicies: %w", err)
	}
	var ckaps v1alpha1.ClusterKeepalivePolicyList
	if err := c.List(ctx, &ckaps); err != nil {
		return nil, nil, nil, fmt.Errorf("list ClusterKeepalivePolicies: %w", err)
	}
	readyOf := func(conditions []metav1.Condition) string {
		if cond := meta.FindStatusCondition(conditions, "Ready"); cond != nil {
			return string(cond.Status) + " (" + cond.Reason + ")"
		}
		return "Unknown"
	}
	for i := range kaps.Items {
		p := &kaps.Items[i]
		if p.DeletionTimestamp != nil {
			continue
		}
		if pol, err := keepalive.NewPolicy(p); err == nil {
			namespaced = append(namespaced, pol)
			ready[pol.Ref] = readyOf(p.Status.Conditions)
		}
	}
	for i := range ckaps.Items {
		p := &ckaps.Items[i]
		if p.DeletionTimestamp != nil {
			continue
		}
		if pol, err := keepalive.NewClusterPolicy(p); err == nil {
			cluster = append(cluster, pol)
			ready[pol.Ref] = readyOf(p.Status.Conditions)
		}
	}
	return namespaced, cluster, ready, nil
}

// connectionsOf is what the audit of a pod's node last reported of it;
// nil where the audit does not run or has not seen it.
func connectionsOf(ctx context.Context, c client.Client, pod *corev1.Pod) (*v1alpha1.PodConnections, error) {
	if pod.Spec.NodeName == "" {
		return nil, nil
	}
	var report v1alpha1.KeepaliveNodeReport
	if err := c.Get(ctx, client.ObjectKey{Name: pod.Spec.NodeName}, &report); err != nil {
		return nil, client.IgnoreNotFound(err)
	}
	for i := range report.Status.Pods {
		if p := &report.Status.Pods[i]; p.Namespace == pod.Namespace && p.Name == pod.Name {
			return p, nil
		}
	}
	return nil, nil
}

// text writes an explanation for a person.
func (e *Explanation) text() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s\n", e.Object)
	if len(e.Policies) == 0 {
		b.WriteString("  policies: none in force selects it\n")
	} else {
		b.WriteString("  policies that select it:\n")
		for _, p := range e.Policies {
			fmt.Fprintf(&b, "    %s  %s  %d/%d/%d  Ready: %s\n", p.Policy, p.Mode, p.Time, p.Interval, p.Probes, p.Ready)
		}
	}
	if e.Governing != "" {
		fmt.Fprintf(&b, "  governs: %s\n", e.Governing)
		over := make([]string, 0, len(e.Over))
		for ref := range e.Over {
			over = append(over, ref)
		}
		slices.Sort(over)
		for _, ref := range over {
			fmt.Fprintf(&b, "    over %s: %s\n", ref, e.Over[ref])
		}
	}
	if e.Skipped != "" {
		fmt.Fprintf(&b, "  skipped: %s\n", e.Skipped)
	}
	for _, w := range e.Warnings {
		fmt.Fprintf(&b, "    %s\n", w)
	}
	fmt.Fprintf(&b, "  has: %s\n", keepalive.Describe(e.Has))
	fmt.Fprintf(&b, "  would get: %s\n", keepalive.Describe(e.WouldGet))
	switch {
	case strings.HasPrefix(e.Object, "Pod "):
		fmt.Fprintf(&b, "  annotation %s: %s\n", keepalive.AnnotationPolicy, cmp.Or(e.Annotation, "none"))
		if e.Connections == nil {
			b.WriteString("  connections: no audit report of its node names it\n")
		} else {
			for _, p := range e.Connections.Policies {
				fmt.Fprintf(&b, "  connections (%s, %d s): armed %d, armed late %d, not armed %d, unknown %d\n",
					p.Policy, p.TimeSeconds, p.Armed, p.ArmedLate, p.NotArmed, p.Unknown)
			}
			if e.Connections.Error != "" {
				fmt.Fprintf(&b, "  connections: %s\n", e.Connections.Error)
			}
		}
	case e.Record == nil:
		fmt.Fprintf(&b, "  record %s: none (the template carries no values of the operator's)\n", keepalive.AnnotationManagedSysctls)
	default:
		fmt.Fprintf(&b, "  record %s: set by %s: %s; the template's own before: %s\n", keepalive.AnnotationManagedSysctls,
			e.Record.Policy, keepalive.Describe(e.Record.Set), keepalive.Describe(e.Record.Original))
	}
	return b.String()
}
