// Package audit is the node agent: it reads the TCP sockets of the pods on
// its node that a policy selects and writes the node's KeepaliveNodeReport.
package audit

import (
	"cmp"
	"context"
	"fmt"
	"net/http"
	"slices"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/keepalive-operator/keepalive-operator/api/v1alpha1"
	"github.com/keepalive-operator/keepalive-operator/internal/keepalive"
)

// renewEvery is how many intervals an unchanged report is left before it
// is written again, to show that the agent still runs.
const renewEvery = 10

// CacheOptions are the agent's cache options: only its node's pods, the
// namespaces' metadata (cluster policies select by namespace labels) and
// the policies.
func CacheOptions(node string) cache.Options {
	return cache.Options{
		DefaultTransform: cache.TransformStripManagedFields(),
		ByObject: map[client.Object]cache.ByObject{
			&corev1.Pod{}: {Field: fields.OneTermEqualSelector("spec.nodeName", node)},
		},
	}
}

// Agent reads the sockets every Interval and writes the report of Node
// when it changed, or after renewEvery intervals.
type Agent struct {
	// Client reads pods, namespaces and policies from the cache; Reports
	// reads the node's report from the API server.
	Client  client.Client
	Reports client.Reader
	Node    string
	// Proc is the host's /proc.
	Proc     string
	Interval time.Duration

	// seen carries the furthest-off keepalive timer of each socket, by pod
	// UID, from one read to the next.
	seen map[string]map[keepalive.SocketKey]int64
	// written is the status last written, and when; report is the object
	// the API server returned, whose resourceVersion the next write names.
	written     *v1alpha1.KeepaliveNodeReportStatus
	writtenAt   time.Time
	report      *v1alpha1.KeepaliveNodeReport
	lastSuccess atomic.Int64
}

// NeedLeaderElection is false: every node's agent runs.
func (*Agent) NeedLeaderElection() bool { return false }

// Start audits at once, then every Interval.
func (a *Agent) Start(ctx context.Context) error {
	log := logf.FromContext(ctx).WithValues("node", a.Node)
	a.lastSuccess.Store(time.Now().UnixNano())
	tick := time.NewTicker(a.Interval)
	defer tick.Stop()
	for {
		if err := a.Pass(ctx); err != nil {
			log.Error(err, "audit the node's connections")
		} else {
			a.lastSuccess.Store(time.Now().UnixNano())
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// Healthy fails once no pass succeeded for three intervals.
func (a *Agent) Healthy(*http.Request) error {
	if since := time.Since(time.Unix(0, a.lastSuccess.Load())); since > 3*a.Interval {
		return fmt.Errorf("no successful audit for %s", since.Round(time.Second))
	}
	return nil
}

// Pass reads the node's sockets once and writes the report if it changed.
func (a *Agent) Pass(ctx context.Context) error {
	status, err := a.read(ctx)
	if err != nil {
		return err
	}
	if a.written != nil && equality.Semantic.DeepEqual(*a.written, *status) && time.Since(a.writtenAt) < renewEvery*a.Interval {
		return nil
	}
	now := metav1.Now()
	status.AuditTime = now
	if err := a.write(ctx, status); err != nil {
		return err
	}
	status.AuditTime = metav1.Time{}
	a.written, a.writtenAt = status, now.Time
	return nil
}

// read audits every running pod of the node that a policy selects. Its
// AuditTime is left zero. The lists are the cache's own objects: read only.
func (a *Agent) read(ctx context.Context) (*v1alpha1.KeepaliveNodeReportStatus, error) {
	namespaced, clusterWide, err := a.policies(ctx)
	if err != nil {
		return nil, err
	}
	var pods corev1.PodList
	if err := a.Client.List(ctx, &pods, client.UnsafeDisableDeepCopy); err != nil {
		return nil, fmt.Errorf("list the node's pods: %w", err)
	}
	var nsList metav1.PartialObjectMetadataList
	nsList.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("NamespaceList"))
	if err := a.Client.List(ctx, &nsList, client.UnsafeDisableDeepCopy); err != nil {
		return nil, fmt.Errorf("list namespaces: %w", err)
	}
	nsLabels := make(map[string]map[string]string, len(nsList.Items))
	for _, ns := range nsList.Items {
		nsLabels[ns.Name] = ns.Labels
	}
	var procs map[string]int // read once a pod needs it
	status := &v1alpha1.KeepaliveNodeReportStatus{
		IntervalSeconds: int32(a.Interval / time.Second),
		ValidSeconds:    int32((renewEvery + 2) * a.Interval / time.Second),
	}
	seen := map[string]map[keepalive.SocketKey]int64{}
	for i := range pods.Items {
		pod := &pods.Items[i]
		if pod.Status.Phase != corev1.PodRunning || pod.DeletionTimestamp != nil ||
			!keepalive.Audited(keepalive.PodView{HostNetwork: pod.Spec.HostNetwork}) {
			continue
		}
		labels, ok := nsLabels[pod.Namespace]
		if !ok {
			continue
		}
		t := keepalive.Target{Namespace: pod.Namespace, Labels: pod.Labels, NamespaceLabels: labels}
		entry := v1alpha1.PodConnections{Namespace: pod.Namespace, Name: pod.Name}
		if _, selected := keepalive.Select(t, namespaced, clusterWide); !selected {
			continue
		}
		if procs == nil {
			if procs, err = PodProcesses(a.Proc); err != nil {
				return nil, err
			}
		}
		conns, err := a.connections(string(pod.UID), procs, seen)
		if err != nil {
			entry.Policies, entry.Error = nil, err.Error()
		} else {
			entry.Policies = keepalive.AuditPod(t, conns, namespaced, clusterWide)
			for _, c := range conns {
				keepalive.Count(&status.Total, c.State(entry.Policies[0].TimeSeconds))
			}
		}
		status.Pods = append(status.Pods, entry)
	}
	a.seen = seen
	slices.SortFunc(status.Pods, func(x, y v1alpha1.PodConnections) int {
		return cmp.Or(cmp.Compare(x.Namespace, y.Namespace), cmp.Compare(x.Name, y.Name))
	})
	if len(status.Pods) > 1000 {
		status.Pods = status.Pods[:1000] // the API's bound; a node holds far fewer
	}
	status.PodCount = int32(len(status.Pods))
	return status, nil
}

// connections reads a pod's established connections, carrying over the
// timers seen in the last pass.
func (a *Agent) connections(uid string, procs map[string]int, seen map[string]map[keepalive.SocketKey]int64) ([]keepalive.Connection, error) {
	pid, ok := procs[uid]
	if !ok {
		return nil, fmt.Errorf("no process of the pod found under the host's /proc (is hostPID set?)")
	}
	socks, err := ReadSockets(a.Proc, pid)
	if err != nil {
		return nil, err
	}
	conns, next := keepalive.Connections(socks, a.seen[uid])
	seen[uid] = next
	return conns, nil
}

// policies compiles the policies in force; one that does not compute is
// left out, as the operator leaves it out.
func (a *Agent) policies(ctx context.Context) (namespaced, clusterWide []keepalive.Policy, err error) {
	var kaps v1alpha1.KeepalivePolicyList
	if err := a.Client.List(ctx, &kaps, client.UnsafeDisableDeepCopy); err != nil {
		return nil, nil, fmt.Errorf("list KeepalivePolicies: %w", err)
	}
	for i := range kaps.Items {
		if kaps.Items[i].DeletionTimestamp != nil {
			continue
		}
		if p, err := keepalive.NewPolicy(&kaps.Items[i]); err == nil {
			namespaced = append(namespaced, p)
		}
	}
	var ckaps v1alpha1.ClusterKeepalivePolicyList
	if err := a.Client.List(ctx, &ckaps, client.UnsafeDisableDeepCopy); err != nil {
		return nil, nil, fmt.Errorf("list ClusterKeepalivePolicies: %w", err)
	}
	for i := range ckaps.Items {
		if ckaps.Items[i].DeletionTimestamp != nil {
			continue
		}
		if p, err := keepalive.NewClusterPolicy(&ckaps.Items[i]); err == nil {
			clusterWide = append(clusterWide, p)
		}
	}
	return namespaced, clusterWide, nil
}

// write replaces the node's report, or creates it; the agent is its only
// writer, so only a restart (or someone deleting the report) costs a read.
func (a *Agent) write(ctx context.Context, status *v1alpha1.KeepaliveNodeReportStatus) error {
	if a.report != nil {
		r := a.report.DeepCopy()
		r.Status = *status
		err := a.Client.Update(ctx, r)
		if err == nil {
			a.report = r
			return nil
		}
		if !apierrors.IsConflict(err) && !apierrors.IsNotFound(err) {
			return fmt.Errorf("update KeepaliveNodeReport %s: %w", a.Node, err)
		}
	}
	a.report = nil
	var r v1alpha1.KeepaliveNodeReport
	err := a.Reports.Get(ctx, client.ObjectKey{Name: a.Node}, &r)
	switch {
	case apierrors.IsNotFound(err):
		// Owned by the node, so that the garbage collector removes the
		// report of a node that is gone.
		var node corev1.Node
		if err := a.Reports.Get(ctx, client.ObjectKey{Name: a.Node}, &node); err != nil {
			return fmt.Errorf("get node %s: %w", a.Node, err)
		}
		owner := metav1.OwnerReference{APIVersion: "v1", Kind: "Node", Name: node.Name, UID: node.UID}
		r = v1alpha1.KeepaliveNodeReport{ObjectMeta: metav1.ObjectMeta{Name: a.Node, OwnerReferences: []metav1.OwnerReference{owner}}, Status: *status}
		if err := a.Client.Create(ctx, &r); err != nil {
			return fmt.Errorf("create KeepaliveNodeReport %s: %w", a.Node, err)
		}
	case err != nil:
		return fmt.Errorf("get KeepaliveNodeReport %s: %w", a.Node, err)
	default:
		r.Status = *status
		if err := a.Client.Update(ctx, &r); err != nil {
			return fmt.Errorf("update KeepaliveNodeReport %s: %w", a.Node, err)
		}
	}
	a.report = &r
	return nil
}
