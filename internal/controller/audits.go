package controller

import (
	"context"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/keepalive-operator/keepalive-operator/api/v1alpha1"
	"github.com/keepalive-operator/keepalive-operator/internal/keepalive"
)

// audits sums the audit agents' node reports by policy, so that a status
// pass costs the nodes of the policy's pods, not every report. It runs on
// the leader and wakes the policies whose sums change, and those of a
// report that turns stale.
type audits struct {
	cache  cache.Cache
	notify func(ref string)
	now    func() time.Time

	mu sync.Mutex
	// nodes holds each reported node's expiry and what it adds, by policy.
	nodes map[string]nodeAudit
	// byPolicy indexes the same sums by policy, then node.
	byPolicy map[string]map[string]*policyOnNode
	synced   func() bool
	// wake tells the expiry loop that a report came or changed.
	wake chan struct{}
}

type nodeAudit struct {
	expires  time.Time
	policies map[string]*policyOnNode
	// staleTold is set once the policies were woken for its expiry.
	staleTold bool
}

// policyOnNode is what the pods one policy selects on one node hold.
type policyOnNode struct {
	pods   int32
	counts v1alpha1.ConnectionCounts
	// lacking are the pods with connections that are not armed or armed
	// late, the most of them first, five at most.
	lacking []lackingPod
}

// lackingPod names a pod and its connections that lack keepalive.
type lackingPod struct {
	name                string // namespace/name
	notArmed, armedLate int32
}

func (p lackingPod) total() int32 { return p.notArmed + p.armedLate }

// maxLacking is how many pods the KeepaliveNotEnabled condition names.
const maxLacking = 5

func newAudits(c cache.Cache, notify func(string)) *audits {
	return &audits{cache: c, notify: notify, now: time.Now, nodes: map[string]nodeAudit{},
		byPolicy: map[string]map[string]*policyOnNode{}, wake: make(chan struct{}, 1)}
}

// NeedLeaderElection: only the leader writes status.
func (*audits) NeedLeaderElection() bool { return true }

// Start follows the reports and wakes the policies of each report that
// turns stale.
func (a *audits) Start(ctx context.Context) error {
	inf, err := a.cache.GetInformer(ctx, &v1alpha1.KeepaliveNodeReport{})
	if meta.IsNoMatchError(err) {
		// An upgrade that did not apply the new CRD: the operator runs on,
		// and its policies say nothing of connections.
		logf.FromContext(ctx).Info("the KeepaliveNodeReport CRD is not installed: policies show no connection audit until it is applied")
		a.mu.Lock()
		a.synced = func() bool { return true }
		a.mu.Unlock()
		<-ctx.Done()
		return nil
	}
	if err != nil {
		return fmt.Errorf("get informer for KeepaliveNodeReports: %w", err)
	}
	reg, err := inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { a.set(o, false) },
		UpdateFunc: func(_, o any) { a.set(o, false) },
		DeleteFunc: func(o any) { a.set(o, true) },
	})
	if err != nil {
		return fmt.Errorf("watch KeepaliveNodeReports: %w", err)
	}
	a.mu.Lock()
	a.synced = reg.HasSynced
	a.mu.Unlock()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		a.mu.Lock()
		now := a.now()
		next := now.Add(time.Hour)
		var stale []string
		for name, n := range a.nodes {
			switch {
			case !n.expires.After(now) && !n.staleTold:
				stale = append(stale, slices.Collect(maps.Keys(n.policies))...)
				n.staleTold = true
				a.nodes[name] = n
			case n.expires.After(now) && n.expires.Before(next):
				next = n.expires
			}
		}
		a.mu.Unlock()
		for _, ref := range stale {
			a.notify(ref)
		}
		timer.Reset(next.Sub(now) + 10*time.Millisecond)
		select {
		case <-ctx.Done():
			return nil
		case <-a.wake:
		case <-timer.C:
		}
	}
}

// set replaces what a node's report adds, and wakes the policies whose sums
// changed.
func (a *audits) set(o any, deleted bool) {
	if tomb, ok := o.(toolscache.DeletedFinalStateUnknown); ok {
		o, deleted = tomb.Obj, true
	}
	r, ok := o.(*v1alpha1.KeepaliveNodeReport)
	if !ok {
		return
	}
	var n nodeAudit
	if !deleted {
		n = summarize(r)
	}
	a.mu.Lock()
	old := a.nodes[r.Name]
	changed := map[string]bool{}
	// A renewal of the same report changes nothing, unless the report had
	// turned stale.
	for ref, p := range old.policies {
		if q := n.policies[ref]; q == nil || !reflect.DeepEqual(p, q) || old.staleTold {
			changed[ref] = true
		}
		delete(a.byPolicy[ref], r.Name)
		if len(a.byPolicy[ref]) == 0 {
			delete(a.byPolicy, ref)
		}
	}
	for ref, p := range n.policies {
		if q := old.policies[ref]; q == nil || !reflect.DeepEqual(p, q) {
			changed[ref] = true
		}
		if a.byPolicy[ref] == nil {
			a.byPolicy[ref] = map[string]*policyOnNode{}
		}
		a.byPolicy[ref][r.Name] = p
	}
	if deleted {
		delete(a.nodes, r.Name)
	} else {
		a.nodes[r.Name] = n
	}
	a.mu.Unlock()
	select {
	case a.wake <- struct{}{}:
	default:
	}
	for ref := range changed {
		a.notify(ref)
	}
}

// summarize sums a report by policy.
func summarize(r *v1alpha1.KeepaliveNodeReport) nodeAudit {
	n := nodeAudit{expires: r.Status.AuditTime.Add(time.Duration(r.Status.ValidSeconds) * time.Second), policies: map[string]*policyOnNode{}}
	for _, pod := range r.Status.Pods {
		for _, pc := range pod.Policies {
			p := n.policies[pc.Policy]
			if p == nil {
				p = &policyOnNode{}
				n.policies[pc.Policy] = p
			}
			p.pods++
			keepalive.AddCounts(&p.counts, pc.ConnectionCounts)
			if l := (lackingPod{pod.Namespace + "/" + pod.Name, pc.NotArmed, pc.ArmedLate}); l.total() > 0 {
				p.lacking = mostLacking(append(p.lacking, l))
			}
		}
	}
	return n
}

// mostLacking keeps the maxLacking pods with the most connections lacking
// keepalive, then by name.
func mostLacking(pods []lackingPod) []lackingPod {
	slices.SortFunc(pods, func(a, b lackingPod) int {
		if a.total() != b.total() {
			return int(b.total() - a.total())
		}
		if a.name < b.name {
			return -1
		}
		return 1
	})
	return pods[:min(len(pods), maxLacking)]
}

// connectionAudit is what the reports say of one policy's pods.
type connectionAudit struct {
	status v1alpha1.ConnectionAudit
	// lacking names the pods with the most connections lacking keepalive.
	lacking []lackingPod
	// unaudited are the nodes with selected pods and no fresh report, each
	// with "no report" or "stale".
	unaudited map[string]string
}

// auditState says whether a policy's connectionAudit can be told.
type auditState int

const (
	auditUnsynced auditState = iota // the reports are not all cached yet
	auditAbsent                     // no agent reports: the audit does not run
	auditPresent
)

// get sums the fresh reports of a policy's nodes. nodes counts the policy's
// running pods per node.
func (a *audits) get(ref string, nodes map[string]int32) (connectionAudit, auditState) {
	a.mu.Lock()
	defer a.mu.Unlock()
	switch {
	case a.synced == nil || !a.synced():
		return connectionAudit{}, auditUnsynced
	case len(a.nodes) == 0:
		return connectionAudit{}, auditAbsent
	}
	now := a.now()
	out := connectionAudit{unaudited: map[string]string{}}
	for node, p := range a.byPolicy[ref] {
		if !a.nodes[node].expires.After(now) {
			continue
		}
		out.status.PodsReported += p.pods
		keepalive.AddCounts(&out.status.ConnectionCounts, p.counts)
		out.lacking = append(out.lacking, p.lacking...)
	}
	out.lacking = mostLacking(out.lacking)
	for node, pods := range nodes {
		switch n, ok := a.nodes[node]; {
		case !ok:
			out.unaudited[node] = "no report"
		case !n.expires.After(now):
			out.unaudited[node] = "stale"
		default:
			continue
		}
		out.status.PodsUnaudited += pods
	}
	return out, auditPresent
}
