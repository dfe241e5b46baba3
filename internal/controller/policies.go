package controller

import (
	"context"
	"fmt"
	"sync"

	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/keepalive-operator/keepalive-operator/api/v1alpha1"
	"github.com/keepalive-operator/keepalive-operator/internal/keepalive"
)

// policySet reads the policies in force from the cache, each parsed and
// computed once per generation. A policy being deleted is in force no more:
// its finalizer waits for the templates to leave it.
type policySet struct {
	reader client.Reader

	mu       sync.Mutex
	compiled map[keepalive.Ref]compiled
}

type compiled struct {
	uid        types.UID
	generation int64
	pol        keepalive.Policy
	err        error
}

func newPolicySet(reader client.Reader) *policySet {
	return &policySet{reader: reader, compiled: map[keepalive.Ref]compiled{}}
}

// inScope returns the policies in force that may apply in a namespace: its
// KeepalivePolicies and every ClusterKeepalivePolicy.
func (s *policySet) inScope(ctx context.Context, namespace string) (namespaced, cluster []keepalive.Policy, err error) {
	var kaps v1alpha1.KeepalivePolicyList
	if err := s.reader.List(ctx, &kaps, client.InNamespace(namespace), client.UnsafeDisableDeepCopy); err != nil {
		return nil, nil, fmt.Errorf("list KeepalivePolicies: %w", err)
	}
	var ckaps v1alpha1.ClusterKeepalivePolicyList
	if err := s.reader.List(ctx, &ckaps, client.UnsafeDisableDeepCopy); err != nil {
		return nil, nil, fmt.Errorf("list ClusterKeepalivePolicies: %w", err)
	}
	for i := range kaps.Items {
		if p, ok := s.inForce(&kaps.Items[i]); ok {
			namespaced = append(namespaced, p)
		}
	}
	for i := range ckaps.Items {
		if p, ok := s.inForce(&ckaps.Items[i]); ok {
			cluster = append(cluster, p)
		}
	}
	return namespaced, cluster, nil
}

// inForce compiles a policy that is not being deleted and whose spec
// computes.
func (s *policySet) inForce(obj policyObject) (keepalive.Policy, bool) {
	if obj.GetDeletionTimestamp() != nil {
		return keepalive.Policy{}, false
	}
	pol, err := s.compile(obj)
	return pol, err == nil
}

// compile parses and computes a policy, once per generation.
func (s *policySet) compile(obj policyObject) (keepalive.Policy, error) {
	ref := refOf(obj)
	s.mu.Lock()
	defer s.mu.Unlock()
	if c, ok := s.compiled[ref]; ok && c.uid == obj.GetUID() && c.generation == obj.GetGeneration() {
		return c.pol, c.err
	}
	pol, err := compile(obj)
	s.compiled[ref] = compiled{uid: obj.GetUID(), generation: obj.GetGeneration(), pol: pol, err: err}
	return pol, err
}

// compile parses and computes a policy object as it is; the mappers call
// it without the memo, for an older generation.
func compile(obj policyObject) (keepalive.Policy, error) {
	switch o := obj.(type) {
	case *v1alpha1.KeepalivePolicy:
		return keepalive.NewPolicy(o)
	case *v1alpha1.ClusterKeepalivePolicy:
		return keepalive.NewClusterPolicy(o)
	}
	return keepalive.Policy{}, fmt.Errorf("not a policy: %T", obj)
}

func (s *policySet) forget(ref keepalive.Ref) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.compiled, ref)
}

// refOf names a policy object.
func refOf(obj policyObject) keepalive.Ref {
	if _, ok := obj.(*v1alpha1.ClusterKeepalivePolicy); ok {
		return keepalive.Ref{Kind: keepalive.KindClusterKeepalivePolicy, Name: obj.GetName()}
	}
	return keepalive.Ref{Kind: keepalive.KindKeepalivePolicy, Namespace: obj.GetNamespace(), Name: obj.GetName()}
}
