package main

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/discovery"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/keepalive-operator/keepalive-operator/internal/keepalive"
)

// planOptions are the flags of `kubectl keepalive plan`, besides the
// cluster's.
type planOptions struct {
	operatorFlags
	file        string
	output      string
	maxRollouts int
	chunkSize   int64
}

// Plan is what applying policies would do to the cluster as it is.
type Plan struct {
	Policies []PlannedPolicy `json:"policies"`
	// Pods counts the running pods that the planned policies select.
	Pods PodCounts `json:"pods"`
	// Blocked are the pods a planned policy would govern that cannot take
	// the values, by reason.
	Blocked map[keepalive.SkipReason][]string `json:"blocked,omitempty"`
	// Rollouts are the workloads whose template the operator would change,
	// and so roll, in Waves of at most MaxConcurrentRollouts at once.
	Rollouts              []string `json:"rollouts"`
	Waves                 int      `json:"waves"`
	MaxConcurrentRollouts int      `json:"maxConcurrentRollouts"`
}

// PlannedPolicy is one policy of the file, computed.
type PlannedPolicy struct {
	Policy    string `json:"policy"`
	Live      string `json:"live"` // new, changes the live one, or the same spec as the live one
	Mode      string `json:"mode"`
	Rollout   string `json:"rollout"`
	Time      int32  `json:"timeSeconds"`
	Interval  int32  `json:"intervalSeconds"`
	Probes    int32  `json:"probes"`
	Detection int32  `json:"detectionSeconds"`
	Governing string `json:"governingTimeout"`
	L7        string `json:"l7ProxyInPath,omitempty"`
}

// PodCounts are the running pods the planned policies select.
type PodCounts struct {
	Selected int `json:"selected"`
	// Governed are those a planned policy would govern; of them Compliant
	// carry its values already, NewValues would get them when they are
	// next created, AuditOnly are under an Audit policy, and Blocked cannot
	// take them.
	Governed  int `json:"governed"`
	Compliant int `json:"compliant"`
	NewValues int `json:"newValues"`
	AuditOnly int `json:"auditOnly"`
	Blocked   int `json:"blocked"`
}

func runPlan(ctx context.Context, o planOptions, f *clusterFlags, out io.Writer) error {
	if o.file == "" {
		return fmt.Errorf("plan: -f is required (a file of KeepalivePolicies and ClusterKeepalivePolicies)")
	}
	if o.maxRollouts < 1 {
		return fmt.Errorf("plan: --max-concurrent-rollouts must be at least 1, is %d", o.maxRollouts)
	}
	if o.chunkSize < 1 {
		return fmt.Errorf("plan: --chunk-size must be at least 1, is %d", o.chunkSize)
	}
	if err := checkOutput("plan", o.output); err != nil {
		return err
	}
	raw, err := os.ReadFile(o.file)
	if err != nil {
		return fmt.Errorf("plan: %w", err)
	}
	c, disco, namespace, err := f.connect()
	if err != nil {
		return fmt.Errorf("plan: %w", err)
	}
	// A plan takes the live namespaces' labels, not the file's.
	planned, err := readPolicyFile(o.file, raw, namespace, nil)
	if err != nil {
		return fmt.Errorf("plan: %w", err)
	}
	p, err := plan(ctx, c, disco, planned, o)
	if err != nil {
		return fmt.Errorf("plan: %w", err)
	}
	return write(out, o.output, p, p.text)
}

// plan decides, for every running pod and workload in the planned
// policies' scope, as the operator would with them applied.
func plan(ctx context.Context, c client.Client, disco discovery.ServerVersionInterface, planned filePolicies, o planOptions) (*Plan, error) {
	cluster, _, err := clusterOf(ctx, c, disco, o.operatorFlags)
	if err != nil {
		return nil, err
	}
	var namespaces corev1.NamespaceList
	if err := c.List(ctx, &namespaces); err != nil {
		return nil, fmt.Errorf("list namespaces: %w", err)
	}
	plannedRefs := map[keepalive.Ref]bool{}
	all := slices.Concat(planned.namespaced, planned.cluster)
	for _, p := range all {
		plannedRefs[p.Ref] = true
	}
	res := &Plan{MaxConcurrentRollouts: o.maxRollouts, Blocked: map[keepalive.SkipReason][]string{}}
	liveNamespaced, liveCluster, _, err := policiesInForce(ctx, c, "")
	if err != nil {
		return nil, err
	}
	live := map[keepalive.Ref]keepalive.Policy{}
	for _, p := range slices.Concat(liveNamespaced, liveCluster) {
		live[p.Ref] = p
	}
	// The planned policies in place of the live ones of the same name.
	isPlanned := func(p keepalive.Policy) bool { return plannedRefs[p.Ref] }
	liveNamespaced = slices.DeleteFunc(liveNamespaced, isPlanned)
	liveCluster = slices.DeleteFunc(liveCluster, isPlanned)

	inScope := map[string]keepalive.Namespace{}
	for _, ns := range namespaces.Items {
		if slices.ContainsFunc(all, func(p keepalive.Policy) bool { return p.SelectsNamespace(ns.Name, ns.Labels) }) {
			inScope[ns.Name] = keepalive.Namespace{Name: ns.Name, Labels: ns.Labels}
		}
	}
	// The decisions take each policy that applies to a pod: a
	// KeepalivePolicy only in its namespace.
	lists := [][]keepalive.Policy{liveNamespaced, liveCluster, planned.namespaced, planned.cluster}

	// Only the namespaces of the planned policies, unless one is a
	// ClusterKeepalivePolicy: on a large cluster, a page at a time.
	scopes := []string{""}
	if len(planned.cluster) == 0 {
		scopes = slices.Sorted(maps.Keys(inScope))
	}
	for _, scope := range scopes {
		var pods corev1.PodList
		err := eachPage(ctx, c, &pods, scope, o.chunkSize, func() {
			for i := range pods.Items {
				if ns, ok := inScope[pods.Items[i].Namespace]; ok {
					planPod(res, &pods.Items[i], ns, cluster, lists, all, plannedRefs)
				}
			}
		})
		if err != nil {
			return nil, fmt.Errorf("list pods: %w", err)
		}
		for _, k := range kinds {
			if k.list == nil {
				continue // Pods were counted above
			}
			list := k.list()
			err := eachPage(ctx, c, list, scope, o.chunkSize, func() {
				for _, obj := range k.items(list) {
					if ns, ok := inScope[obj.GetNamespace()]; ok && metav1.GetControllerOf(obj) == nil { // a Deployment's ReplicaSet rolls with it
						planWorkload(res, k.name, obj, ns, cluster, lists, plannedRefs)
					}
				}
			})
			if err != nil {
				return nil, fmt.Errorf("list %ss: %w", k.name, err)
			}
		}
	}
	slices.Sort(res.Rollouts)
	res.Waves = (len(res.Rollouts) + o.maxRollouts - 1) / o.maxRollouts

	for _, p := range all {
		v := p.Result.Values
		pp := PlannedPolicy{Policy: p.Ref.String(), Live: "new", Mode: cmp.Or(string(p.Mode), "Enforce"),
			Rollout: cmp.Or(string(p.Rollout), "PatchTemplates"), Time: v.TimeSeconds, Interval: v.IntervalSeconds,
			Probes: v.Probes, Detection: v.DetectionSeconds(),
			Governing: fmt.Sprintf("%s (%d s)", p.Result.Governing.Name, p.Result.Governing.Seconds)}
		if old, ok := live[p.Ref]; ok {
			pp.Live = "changes the live one"
			// The API server defaults mode and rollout; a file may leave them out.
			if old.Result.Values == v && cmp.Or(string(old.Mode), "Enforce") == pp.Mode && cmp.Or(string(old.Rollout), "PatchTemplates") == pp.Rollout {
				pp.Live = "the same values as the live one"
			}
		}
		var l7 []string
		for _, h := range p.Result.L7Hops {
			l7 = append(l7, fmt.Sprintf("%s (%d s)", h.Name, h.Seconds))
		}
		pp.L7 = strings.Join(l7, ", ")
		res.Policies = append(res.Policies, pp)
	}
	return res, nil
}

// eachPage lists into list from namespace ("" for all) a page of chunk
// objects at a time, calling page after each.
func eachPage(ctx context.Context, c client.Client, list client.ObjectList, namespace string, chunk int64, page func()) error {
	opts := []client.ListOption{client.Limit(chunk)}
	if namespace != "" {
		opts = append(opts, client.InNamespace(namespace))
	}
	for cont := ""; ; {
		if err := c.List(ctx, list, append(opts, client.Continue(cont))...); err != nil {
			return err
		}
		page()
		if cont = list.GetContinue(); cont == "" {
			return nil
		}
	}
}

// planPod counts a pod in the planned policies' scope.
func planPod(res *Plan, pod *corev1.Pod, ns keepalive.Namespace, cluster keepalive.Cluster,
	lists [][]keepalive.Policy, planned []keepalive.Policy, plannedRefs map[keepalive.Ref]bool) {
	if pod.DeletionTimestamp != nil || pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		return
	}
	view := keepalive.SpecView(pod.Labels, pod.Annotations, &pod.Spec)
	target := keepalive.Target{Namespace: ns.Name, Labels: view.Labels, NamespaceLabels: ns.Labels}
	if !slices.ContainsFunc(planned, func(p keepalive.Policy) bool { return p.Applies(target) }) {
		return
	}
	res.Pods.Selected++
	d := keepalive.Decide(view, ns, cluster, lists...)
	if d.Policy == nil || !plannedRefs[d.Policy.Ref] {
		return
	}
	res.Pods.Governed++
	switch {
	case d.Skip.Blocks():
		res.Pods.Blocked++
		res.Blocked[d.Skip] = append(res.Blocked[d.Skip], ns.Name+"/"+pod.Name)
	case d.Skip == keepalive.SkipAudit:
		res.Pods.AuditOnly++
	case d.Skip != "":
	case d.Sysctls != nil:
		res.Pods.NewValues++
	default:
		res.Pods.Compliant++
	}
}

// planWorkload adds a workload whose template the operator would change
// under a planned policy to the rollouts.
func planWorkload(res *Plan, kind string, obj client.Object, ns keepalive.Namespace, cluster keepalive.Cluster,
	lists [][]keepalive.Policy, plannedRefs map[keepalive.Ref]bool) {
	var prev *keepalive.Managed
	if rec, ok, err := keepalive.ParseManaged(obj.GetAnnotations()); err == nil && ok {
		prev = &rec
	}
	t := keepalive.DesiredTemplate(keepalive.TemplateView(obj), prev, ns, cluster, lists...)
	if t.Policy != nil && plannedRefs[t.Policy.Ref] && t.SysctlsChanged {
		res.Rollouts = append(res.Rollouts, kind+" "+ns.Name+"/"+obj.GetName())
	}
}

// text writes a plan for a person.
func (p *Plan) text() string {
	var b strings.Builder
	for _, pp := range p.Policies {
		fmt.Fprintf(&b, "%s (%s): %s, rollout %s\n", pp.Policy, pp.Live, pp.Mode, pp.Rollout)
		fmt.Fprintf(&b, "  computes: time %d s, interval %d s, probes %d (a dead peer found within %d s), from %s\n",
			pp.Time, pp.Interval, pp.Probes, pp.Detection, pp.Governing)
		if pp.L7 != "" {
			fmt.Fprintf(&b, "  L7 proxies in the path, whose idle timers keepalive does not reset: %s\n", pp.L7)
		}
	}
	c := p.Pods
	fmt.Fprintf(&b, "pods: %d running selected, %d it would govern: %d compliant already, %d would get the values when next created, %d audit only, %d blocked\n",
		c.Selected, c.Governed, c.Compliant, c.NewValues, c.AuditOnly, c.Blocked)
	reasons := make([]string, 0, len(p.Blocked))
	for r := range p.Blocked {
		reasons = append(reasons, string(r))
	}
	slices.Sort(reasons)
	for _, r := range reasons {
		pods := p.Blocked[keepalive.SkipReason(r)]
		fmt.Fprintf(&b, "  blocked, %s: %s\n", r, strings.Join(pods, ", "))
	}
	if len(p.Rollouts) == 0 {
		b.WriteString("rollouts: none\n")
	} else {
		fmt.Fprintf(&b, "rollouts: %s, in %s of at most %d at once:\n", count(len(p.Rollouts), "workload", "workloads"), count(p.Waves, "wave", "waves"), p.MaxConcurrentRollouts)
		for _, w := range p.Rollouts {
			fmt.Fprintf(&b, "  %s\n", w)
		}
	}
	return b.String()
}

// count writes n things: one, or many.
func count(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}
