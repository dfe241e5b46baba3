package main

import (
	"slices"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/keepalive-operator/keepalive-operator/internal/keepalive"
)

// kind is one of the kinds the plugin reads: a Pod, which gets the
// webhook's decision, or a workload whose template the operator patches
// (keepalive.PodTemplate).
type kind struct {
	name    string
	aliases []string // as kubectl names it, lower case
	// specPath is where its YAML keeps the pod spec.
	specPath []string
	new      func() client.Object
	// list and items list the workloads of the kind; nil for Pod.
	list  func() client.ObjectList
	items func(client.ObjectList) []client.Object
}

// kinds is every kind the plugin reads.
var kinds = []kind{
	{name: "Pod", aliases: []string{"pod", "pods", "po"}, specPath: []string{"spec"},
		new: func() client.Object { return &corev1.Pod{} }},
	{name: "Deployment", aliases: []string{"deployment", "deployments", "deploy"}, specPath: []string{"spec", "template", "spec"},
		new:   func() client.Object { return &appsv1.Deployment{} },
		list:  func() client.ObjectList { return &appsv1.DeploymentList{} },
		items: func(l client.ObjectList) []client.Object { return pointers(l.(*appsv1.DeploymentList).Items) }},
	{name: "StatefulSet", aliases: []string{"statefulset", "statefulsets", "sts"}, specPath: []string{"spec", "template", "spec"},
		new:   func() client.Object { return &appsv1.StatefulSet{} },
		list:  func() client.ObjectList { return &appsv1.StatefulSetList{} },
		items: func(l client.ObjectList) []client.Object { return pointers(l.(*appsv1.StatefulSetList).Items) }},
	{name: "DaemonSet", aliases: []string{"daemonset", "daemonsets", "ds"}, specPath: []string{"spec", "template", "spec"},
		new:   func() client.Object { return &appsv1.DaemonSet{} },
		list:  func() client.ObjectList { return &appsv1.DaemonSetList{} },
		items: func(l client.ObjectList) []client.Object { return pointers(l.(*appsv1.DaemonSetList).Items) }},
	{name: "ReplicaSet", aliases: []string{"replicaset", "replicasets", "rs"}, specPath: []string{"spec", "template", "spec"},
		new:   func() client.Object { return &appsv1.ReplicaSet{} },
		list:  func() client.ObjectList { return &appsv1.ReplicaSetList{} },
		items: func(l client.ObjectList) []client.Object { return pointers(l.(*appsv1.ReplicaSetList).Items) }},
	{name: "CronJob", aliases: []string{"cronjob", "cronjobs", "cj"}, specPath: []string{"spec", "jobTemplate", "spec", "template", "spec"},
		new:   func() client.Object { return &batchv1.CronJob{} },
		list:  func() client.ObjectList { return &batchv1.CronJobList{} },
		items: func(l client.ObjectList) []client.Object { return pointers(l.(*batchv1.CronJobList).Items) }},
}

// kindNamed returns the kind of a name (Deployment) or an alias (deploy).
func kindNamed(name string) (kind, bool) {
	i := slices.IndexFunc(kinds, func(k kind) bool { return k.name == name || slices.Contains(k.aliases, strings.ToLower(name)) })
	if i < 0 {
		return kind{}, false
	}
	return kinds[i], true
}

// podSpec returns the pod spec of an object of a kind.
func podSpec(obj client.Object) *corev1.PodSpec {
	if pod, ok := obj.(*corev1.Pod); ok {
		return &pod.Spec
	}
	return &keepalive.PodTemplate(obj).Spec
}

// pointers returns pointers to the items of a list.
func pointers[T any, PT interface {
	*T
	client.Object
}](items []T) []client.Object {
	out := make([]client.Object, len(items))
	for i := range items {
		out[i] = PT(&items[i])
	}
	return out
}
