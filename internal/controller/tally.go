package controller

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"
	"unique"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/keepalive-operator/keepalive-operator/api/v1alpha1"
	"github.com/keepalive-operator/keepalive-operator/internal/keepalive"
)

// tally keeps, for every policy in force, the counts of the running pods it
// selects. Pod events update it one pod at a time, and a policy, namespace or
// node change recounts only the pods it can affect, so that a status pass
// costs the same whatever the number of pods. It runs on the leader.
//
// Every change is computed from the caches under one lock, so that the
// handlers of different informers, run in any order, leave the counts that
// the caches give.
type tally struct {
	client   client.Reader
	indexes  *indexes
	cluster  func() keepalive.Cluster
	policies *policySet
	// notify is told of each policy whose counts changed.
	notify func(ref string)

	mu     sync.Mutex
	pods   map[podName]podEntry
	counts map[keepalive.Ref]*podTally
	// refs and outcomes number the policies and outcomes that the pods'
	// contributions name: a few of each, and a contribution per pod and
	// policy.
	refs     numbering[keepalive.Ref]
	outcomes numbering[outcome]
	synced   []func() bool
}

// podName is a pod's namespace and name, the cached pod's own strings.
type podName struct{ namespace, name string }

// podEntry is what a pod adds to the counts: one contribution per policy
// that selects it.
type podEntry struct {
	node     unique.Handle[string]
	policies []contribution
}

// contribution is what a pod adds to one policy's counts, in 8 bytes.
type contribution struct {
	policy      uint32 // in refs
	outcome     uint16 // in outcomes
	unpatchable bool
}

type outcome struct {
	state  keepalive.PodState
	reason keepalive.SkipReason
}

// numbering gives each value a small number for the operator's life.
type numbering[T comparable] struct {
	ids    map[T]int
	values []T
}

func (n *numbering[T]) id(v T) int {
	if id, ok := n.ids[v]; ok {
		return id
	}
	if n.ids == nil {
		n.ids = map[T]int{}
	}
	n.ids[v] = len(n.values)
	n.values = append(n.values, v)
	return len(n.values) - 1
}

func newTally(c client.Reader, idx *indexes, cluster func() keepalive.Cluster, policies *policySet, notify func(string)) *tally {
	return &tally{client: c, indexes: idx, cluster: cluster, policies: policies, notify: notify,
		pods: map[podName]podEntry{}, counts: map[keepalive.Ref]*podTally{}}
}

// Start feeds the tally from the informers of pods, policies, namespaces
// and nodes, once the indexes are there. It needs leader election, like the
// reconcilers that read it.
func (t *tally) Start(ctx context.Context) error {
	if err := t.indexes.ensure(ctx); err != nil {
		return err
	}
	feeds := []struct {
		obj      client.Object
		handlers toolscache.ResourceEventHandlerFuncs
	}{
		{&corev1.Pod{}, toolscache.ResourceEventHandlerFuncs{
			AddFunc:    func(o any) { t.podChanged(ctx, o) },
			UpdateFunc: func(old, o any) { t.podUpdated(ctx, old, o) },
			DeleteFunc: func(o any) { t.podChanged(ctx, o) },
		}},
		{&v1alpha1.KeepalivePolicy{}, t.recountOn(ctx)},
		{&v1alpha1.ClusterKeepalivePolicy{}, t.recountOn(ctx)},
		{&corev1.Namespace{}, toolscache.ResourceEventHandlerFuncs{
			UpdateFunc: func(old, o any) { t.namespaceUpdated(ctx, old, o) },
		}},
		{&corev1.Node{}, toolscache.ResourceEventHandlerFuncs{
			UpdateFunc: func(old, o any) { t.nodeUpdated(ctx, old, o) },
		}},
	}
	for _, f := range feeds {
		inf, err := t.indexes.cache.GetInformer(ctx, f.obj)
		if err != nil {
			return fmt.Errorf("get informer for %T: %w", f.obj, err)
		}
		reg, err := inf.AddEventHandler(f.handlers)
		if err != nil {
			return fmt.Errorf("watch %T: %w", f.obj, err)
		}
		t.mu.Lock()
		t.synced = append(t.synced, reg.HasSynced)
		t.mu.Unlock()
	}
	<-ctx.Done()
	return nil
}

// NeedLeaderElection: only the leader reconciles, so only it counts.
func (*tally) NeedLeaderElection() bool { return true }

// get returns the counts of a policy, and false while the tally has not yet
// seen every object that existed when it started: never a short count.
func (t *tally) get(ref keepalive.Ref) (podTally, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, synced := range t.synced {
		if !synced() {
			return podTally{}, false
		}
	}
	if len(t.synced) == 0 {
		return podTally{}, false
	}
	c := t.counts[ref]
	if c == nil {
		return newPodTally(), true
	}
	out := *c
	out.blocked = maps.Clone(c.blocked)
	out.blockedNamespaces = maps.Clone(c.blockedNamespaces)
	out.blockedNodes = maps.Clone(c.blockedNodes)
	out.nodes = maps.Clone(c.nodes)
	return out, true
}

func nameOf(pod *cachedPod) podName { return podName{pod.GetNamespace(), pod.Name} }

// podUpdated recounts a pod when something its counts depend on changed;
// the many status updates of running pods change nothing.
func (t *tally) podUpdated(ctx context.Context, old, o any) {
	before, ok1 := asCachedPod(old)
	after, ok2 := asCachedPod(o)
	if ok1 && ok2 && running(before) == running(after) && before.Node() == after.Node() &&
		equality.Semantic.DeepEqual(before.Labels(), after.Labels()) {
		return
	}
	t.podChanged(ctx, o)
}

// podChanged counts a pod as the caches have it now, or drops it when it
// is gone.
func (t *tally) podChanged(ctx context.Context, o any) {
	pod, ok := asCachedPod(o)
	if !ok {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	changed := map[keepalive.Ref]bool{}
	current, _ := t.indexes.pods.get(pod.GetNamespace(), pod.Name) // nil once deleted
	t.set(nameOf(pod), t.entry(ctx, current, nil), changed)
	t.tell(changed)
}

// entry computes what a pod adds to the counts: for every policy in force
// that selects it, or for only (when not nil) one of them. A pod that is
// gone or not running adds nothing.
func (t *tally) entry(ctx context.Context, pod *cachedPod, only *keepalive.Policy) podEntry {
	if pod == nil || !running(pod) {
		return podEntry{}
	}
	var (
		ns   keepalive.Namespace
		pols [2][]keepalive.Policy // the namespace's own and the cluster's, shared: read only
		ok   bool
	)
	if only != nil {
		pols[0] = []keepalive.Policy{*only}
		ns, ok = namespaceOf(ctx, t.client, pod.GetNamespace())
	} else {
		var err error
		ns, pols[0], pols[1], ok, err = t.policies.forNamespace(ctx, pod.GetNamespace())
		if err != nil {
			logf.FromContext(ctx).Error(err, "count a pod")
			return podEntry{}
		}
	}
	if !ok || len(pols[0])+len(pols[1]) == 0 {
		return podEntry{} // a namespace event recounts its pods once it is cached
	}
	target := keepalive.Target{Namespace: pod.GetNamespace(), Labels: pod.Labels(), NamespaceLabels: ns.Labels}
	e := podEntry{node: pod.node}
	var (
		node *keepalive.NodeInfo
		view keepalive.PodView
		read bool // node and view, once a policy applies
	)
	cluster := t.cluster()
	for _, list := range pols {
		for i := range list {
			p := &list[i]
			if !p.Applies(target) {
				continue
			}
			if !read {
				node, _ = nodeInfo(ctx, t.client, pod.Node())
				view, read = podView(pod), true
			}
			var o outcome
			o.state, o.reason = keepalive.Classify(view, ns, cluster, p, node)
			c := contribution{policy: uint32(t.refs.id(p.Ref)), outcome: uint16(t.outcomes.id(o))}
			if o.state == keepalive.PodStale {
				_, patchable, err := owner(ctx, t.client, pod)
				c.unpatchable = err == nil && !patchable
			}
			e.policies = append(e.policies, c)
		}
	}
	return e
}

// set replaces what a pod adds to the counts, noting the policies whose
// counts change.
func (t *tally) set(key podName, e podEntry, changed map[keepalive.Ref]bool) {
	old := t.pods[key]
	for _, c := range old.policies {
		if !slices.Contains(e.policies, c) || old.node != e.node {
			changed[t.add(c, valueOf(old.node), key.namespace, -1)] = true
		}
	}
	for _, c := range e.policies {
		if !slices.Contains(old.policies, c) || old.node != e.node {
			changed[t.add(c, valueOf(e.node), key.namespace, 1)] = true
		}
	}
	if len(e.policies) == 0 {
		delete(t.pods, key)
	} else {
		t.pods[key] = e
	}
}

// add adds (n = 1) or removes (n = -1) one contribution of a pod on a node
// in a namespace, and returns its policy.
func (t *tally) add(c contribution, node, namespace string, n int32) keepalive.Ref {
	ref, o := t.refs.values[c.policy], t.outcomes.values[c.outcome]
	pt := t.counts[ref]
	if pt == nil {
		fresh := newPodTally()
		pt = &fresh
		t.counts[ref] = pt
	}
	pt.counts.Matched += n
	if node != "" {
		bump(pt.nodes, node, n)
	}
	switch o.state {
	case keepalive.PodCompliant:
		pt.counts.Compliant += n
	case keepalive.PodStale:
		pt.counts.Stale += n
		if c.unpatchable {
			pt.unpatchable += n
		}
	case keepalive.PodSkipped:
		pt.counts.Skipped += n
		if o.reason.Blocks() {
			bump(pt.blocked, o.reason, n)
		}
		switch o.reason {
		case keepalive.SkipPodSecurityVersion:
			bump(pt.blockedNamespaces, namespace, n)
		case keepalive.SkipNodeKubelet, keepalive.SkipNodeKernel:
			bump(pt.blockedNodes, node, n)
		}
	}
	return ref
}

func bump[K comparable](m map[K]int32, k K, n int32) {
	if m[k] += n; m[k] <= 0 {
		delete(m, k)
	}
}

func (t *tally) tell(changed map[keepalive.Ref]bool) {
	for ref := range changed {
		t.notify(ref.String())
	}
}

// recountOn recounts a policy's pods when it comes, changes its spec or
// goes.
func (t *tally) recountOn(ctx context.Context) toolscache.ResourceEventHandlerFuncs {
	recount := func(o any) {
		if tomb, ok := o.(toolscache.DeletedFinalStateUnknown); ok {
			o = tomb.Obj
		}
		if obj, ok := o.(policyObject); ok {
			t.recountPolicy(ctx, obj)
		}
	}
	return toolscache.ResourceEventHandlerFuncs{
		AddFunc: recount,
		UpdateFunc: func(old, o any) {
			before, ok1 := old.(policyObject)
			after, ok2 := o.(policyObject)
			if !ok1 || !ok2 || keepalive.PolicyChanged(before, after) {
				recount(o)
			}
		},
		DeleteFunc: recount,
	}
}

// recountPolicy drops a policy's contributions and, while it is in force,
// counts the pods in its scope again.
func (t *tally) recountPolicy(ctx context.Context, obj policyObject) {
	ref := refOf(obj)
	t.mu.Lock()
	defer t.mu.Unlock()
	if ref.Kind == keepalive.KindClusterKeepalivePolicy {
		// Before any pod is counted again: the policy set's own handler
		// may run after this one, and a pod event counted meanwhile with
		// the namespace's selection from before the change would undo the
		// recount for that pod.
		t.policies.clusterChanged()
	}
	id := uint32(t.refs.id(ref))
	for key, e := range t.pods {
		if i := slices.IndexFunc(e.policies, func(c contribution) bool { return c.policy == id }); i >= 0 {
			e.policies = slices.Delete(slices.Clone(e.policies), i, i+1)
			if len(e.policies) == 0 {
				delete(t.pods, key)
			} else {
				t.pods[key] = e
			}
		}
	}
	delete(t.counts, ref)
	defer t.notify(ref.String())
	current := obj.DeepCopyObject().(policyObject)
	if err := t.client.Get(ctx, client.ObjectKeyFromObject(obj), current); err != nil {
		return // gone
	}
	pol, ok := t.policies.inForce(current)
	if !ok {
		return
	}
	pods, err := t.indexes.pods.inNamespace(ref.Namespace) // every namespace for a cluster policy
	if err != nil {
		logf.FromContext(ctx).Error(err, "recount a policy's pods", "policy", ref.String())
		return
	}
	for _, pod := range pods {
		c := t.entry(ctx, pod, &pol)
		if len(c.policies) == 0 {
			continue
		}
		key := nameOf(pod)
		e := t.pods[key]
		e.node = c.node
		e.policies = append(slices.Clone(e.policies), c.policies[0])
		t.add(c.policies[0], valueOf(e.node), key.namespace, 1)
		t.pods[key] = e
	}
}

// namespaceUpdated recounts the pods of a namespace whose label change can
// change what the policies do there.
func (t *tally) namespaceUpdated(ctx context.Context, old, o any) {
	before, ok1 := old.(*corev1.Namespace)
	after, ok2 := o.(*corev1.Namespace)
	if !ok1 || !ok2 || equality.Semantic.DeepEqual(before.Labels, after.Labels) {
		return
	}
	namespaced, cluster, err := t.policies.inScope(ctx, after.Name)
	if err != nil || !keepalive.NamespaceMatters(keepalive.Namespace{Name: before.Name, Labels: before.Labels},
		keepalive.Namespace{Name: after.Name, Labels: after.Labels}, t.cluster(), append(namespaced, cluster...)) {
		return
	}
	t.recountPods(ctx, after.Name, func(*cachedPod) bool { return true })
}

// nodeUpdated recounts the pods of a node whose kubelet or kernel changed.
func (t *tally) nodeUpdated(ctx context.Context, old, o any) {
	before, ok1 := old.(*corev1.Node)
	after, ok2 := o.(*corev1.Node)
	if !ok1 || !ok2 || before.Status.NodeInfo.KubeletVersion == after.Status.NodeInfo.KubeletVersion &&
		before.Status.NodeInfo.KernelVersion == after.Status.NodeInfo.KernelVersion {
		return
	}
	// Rare enough (an upgrade) to look at every pod.
	t.recountPods(ctx, "", func(p *cachedPod) bool { return p.Node() == after.Name })
}

// recountPods recounts the pods of a namespace ("" for all) that match.
func (t *tally) recountPods(ctx context.Context, namespace string, match func(*cachedPod) bool) {
	pods, err := t.indexes.pods.inNamespace(namespace)
	if err != nil {
		logf.FromContext(ctx).Error(err, "recount pods")
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	changed := map[keepalive.Ref]bool{}
	for _, pod := range pods {
		if match(pod) {
			t.set(nameOf(pod), t.entry(ctx, pod, nil), changed)
		}
	}
	t.tell(changed)
}
