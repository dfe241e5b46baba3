package webhook

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync/atomic"
	"time"

	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/discovery"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/manager"

	"github.com/keepalive-operator/keepalive-operator/internal/keepalive"
)

// Options configure the admission webhook.
type Options struct {
	// UnsafeSysctlsAllowed says every kubelet runs with the keepalive
	// sysctls in --allowed-unsafe-sysctls, which matters before Kubernetes 1.29.
	UnsafeSysctlsAllowed bool
	// OperatorNamespace is never injected.
	OperatorNamespace string
	// ExcludedNamespaces, NamespaceSelector and PodSelector leave
	// namespaces and pods alone (keepalive.Cluster), for the reconcilers too.
	ExcludedNamespaces []string
	NamespaceSelector  labels.Selector
	PodSelector        labels.Selector
	// VersionRefresh is how often the cluster's version is read again, so
	// that an upgrade past 1.29 is noticed. Zero means 10 minutes.
	VersionRefresh time.Duration
}

// Admission reads policies and namespaces from the cache.
// +kubebuilder:rbac:groups=keepalive.io,resources=keepalivepolicies;clusterkeepalivepolicies,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=namespaces;nodes,verbs=get;list;watch

// Setup registers the pod webhook on the manager's webhook server (every
// replica serves it, leader or not) with its store, and a readiness check
// that passes once the server listens and the store has synced. It returns
// the handler, whose Cluster the reconcilers share.
func Setup(ctx context.Context, mgr manager.Manager, opts Options) (*Handler, error) {
	log := ctrl.Log.WithName("webhook")
	dc, err := discovery.NewDiscoveryClientForConfig(mgr.GetConfig())
	if err != nil {
		return nil, fmt.Errorf("discovery client: %w", err)
	}
	minor, err := serverMinor(dc)
	if err != nil {
		return nil, err
	}
	var clusterMinor atomic.Int64
	clusterMinor.Store(int64(minor))
	log.Info("cluster version", "minor", minor, "unsafeSysctlsAllowed", opts.UnsafeSysctlsAllowed)

	store := NewStore(log)
	if err := store.Watch(ctx, mgr.GetCache()); err != nil {
		return nil, err
	}
	h := &Handler{
		Store: store,
		Cluster: func() keepalive.Cluster {
			return keepalive.Cluster{
				Minor:                int(clusterMinor.Load()),
				UnsafeSysctlsAllowed: opts.UnsafeSysctlsAllowed,
				OperatorNamespace:    opts.OperatorNamespace,
				ExcludedNamespaces:   opts.ExcludedNamespaces,
				NamespaceSelector:    opts.NamespaceSelector,
				PodSelector:          opts.PodSelector,
				OldNodes:             store.OldNodes(),
			}
		},
		Namespaces: mgr.GetAPIReader(),
		Log:        log,
	}
	server := mgr.GetWebhookServer()
	server.Register(Path, h)

	started := server.StartedChecker()
	if err := mgr.AddReadyzCheck("webhook", func(req *http.Request) error {
		if !store.HasSynced() {
			return errors.New("policies and namespaces not synced yet")
		}
		return started(req)
	}); err != nil {
		return nil, fmt.Errorf("add webhook readiness check: %w", err)
	}

	refresh := opts.VersionRefresh
	if refresh == 0 {
		refresh = 10 * time.Minute
	}
	return h, mgr.Add(everyReplica(func(ctx context.Context) error {
		t := time.NewTicker(refresh)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-t.C:
				m, err := serverMinor(dc)
				if err != nil {
					log.Error(err, "refresh cluster version")
					continue
				}
				if old := clusterMinor.Swap(int64(m)); old != int64(m) {
					log.Info("cluster version changed", "minor", m, "was", old)
				}
			}
		}
	}))
}

// everyReplica is a runnable that runs on every replica, leader or not.
type everyReplica func(ctx context.Context) error

func (f everyReplica) Start(ctx context.Context) error { return f(ctx) }
func (everyReplica) NeedLeaderElection() bool          { return false }

// serverMinor returns the minor version of a Kubernetes 1.x API server.
// Managed offerings add a "+" to it ("29+").
func serverMinor(dc discovery.ServerVersionInterface) (int, error) {
	v, err := dc.ServerVersion()
	if err != nil {
		return 0, fmt.Errorf("read the API server version: %w", err)
	}
	return keepalive.ServerMinor(v)
}
