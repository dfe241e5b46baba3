package controller

import (
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

func deploymentWith(generation int64, status appsv1.DeploymentStatus) *appsv1.Deployment {
	return &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Generation: generation}, Status: status}
}

func TestRolling(t *testing.T) {
	two := int32(2)
	done := appsv1.DeploymentStatus{ObservedGeneration: 3, Replicas: 1, UpdatedReplicas: 1, AvailableReplicas: 1}
	cases := map[string]struct {
		obj  client.Object
		want bool
	}{
		"deployment done":               {deploymentWith(3, done), false},
		"deployment not yet observed":   {deploymentWith(4, done), true},
		"deployment with old replicas":  {deploymentWith(3, appsv1.DeploymentStatus{ObservedGeneration: 3, Replicas: 2, UpdatedReplicas: 1, AvailableReplicas: 1}), true},
		"deployment not yet available":  {deploymentWith(3, appsv1.DeploymentStatus{ObservedGeneration: 3, Replicas: 1, UpdatedReplicas: 1}), true},
		"deployment past its deadline":  {deploymentWith(3, appsv1.DeploymentStatus{ObservedGeneration: 3, Replicas: 1, UpdatedReplicas: 1, Conditions: []appsv1.DeploymentCondition{{Type: appsv1.DeploymentProgressing, Status: corev1.ConditionFalse, Reason: "ProgressDeadlineExceeded"}}}), false},
		"deployment short of replicas":  {&appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Generation: 3}, Spec: appsv1.DeploymentSpec{Replicas: &two}, Status: done}, true},
		"statefulset done":              {&appsv1.StatefulSet{ObjectMeta: metav1.ObjectMeta{Generation: 2}, Status: appsv1.StatefulSetStatus{ObservedGeneration: 2, UpdatedReplicas: 1, CurrentRevision: "r2", UpdateRevision: "r2"}}, false},
		"statefulset between revisions": {&appsv1.StatefulSet{ObjectMeta: metav1.ObjectMeta{Generation: 2}, Status: appsv1.StatefulSetStatus{ObservedGeneration: 2, UpdatedReplicas: 1, CurrentRevision: "r1", UpdateRevision: "r2"}}, true},
		"daemonset done":                {&appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Generation: 5}, Status: appsv1.DaemonSetStatus{ObservedGeneration: 5, DesiredNumberScheduled: 3, UpdatedNumberScheduled: 3, NumberAvailable: 3}}, false},
		"daemonset updating":            {&appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Generation: 5}, Status: appsv1.DaemonSetStatus{ObservedGeneration: 5, DesiredNumberScheduled: 3, UpdatedNumberScheduled: 2, NumberAvailable: 3}}, true},
		"replicaset never rolls":        {&appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{Generation: 9}}, false},
		"cronjob never rolls":           {&batchv1.CronJob{ObjectMeta: metav1.ObjectMeta{Generation: 9}}, false},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			if got := rolling(tc.obj); got != tc.want {
				t.Errorf("rolling() = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestRollouts(t *testing.T) {
	r := NewRollouts(2)
	a, b, c := workloadKey{"Deployment", "ns", "a"}, workloadKey{"Deployment", "ns", "b"}, workloadKey{"Deployment", "ns", "c"}
	if !r.acquire(a) || !r.acquire(b) {
		t.Fatal("two slots of two were refused")
	}
	if r.acquire(c) {
		t.Fatal("a third rollout got a slot")
	}
	if !r.acquire(a) {
		t.Fatal("a workload lost the slot it holds")
	}
	r.started(a, 4)
	// The cache still shows generation 3, done: the change is not seen yet.
	if !r.observe(a, deploymentWith(3, appsv1.DeploymentStatus{ObservedGeneration: 3, Replicas: 1, UpdatedReplicas: 1, AvailableReplicas: 1})) {
		t.Fatal("a stale cache freed the slot")
	}
	if r.observe(a, deploymentWith(4, appsv1.DeploymentStatus{ObservedGeneration: 4, Replicas: 1, UpdatedReplicas: 1, AvailableReplicas: 1})) {
		t.Fatal("a finished rollout still counts as rolling")
	}
	if !r.acquire(c) {
		t.Fatal("the freed slot was not given out")
	}
	r.release(b)
	// A rollout found under way counts even past the limit.
	if !r.observe(workloadKey{"Deployment", "ns", "d"}, deploymentWith(2, appsv1.DeploymentStatus{ObservedGeneration: 1})) {
		t.Fatal("a rollout under way was not counted")
	}
	if r.acquire(b) {
		t.Fatal("a slot was given out while the limit is reached")
	}
}

func TestStripForCache(t *testing.T) {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "ns", Labels: map[string]string{"app": "x"}, Annotations: map[string]string{"big": "x"},
			ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubectl"}}},
		Spec: corev1.PodSpec{NodeName: "n", Containers: []corev1.Container{{Name: "c", Image: "i"}},
			SecurityContext: &corev1.PodSecurityContext{RunAsNonRoot: new(true), Sysctls: []corev1.Sysctl{{Name: "a", Value: "1"}}}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, Conditions: []corev1.PodCondition{{Type: corev1.PodReady}}},
	}
	out, _ := StripForCache(pod)
	p := out.(*corev1.Pod)
	if p.Name != "p" || p.Labels["app"] != "x" || p.Spec.NodeName != "n" || p.Status.Phase != corev1.PodRunning ||
		len(p.Spec.SecurityContext.Sysctls) != 1 {
		t.Errorf("stripped away what is read: %+v", p)
	}
	if p.Annotations != nil || p.ManagedFields != nil || p.Spec.Containers != nil || p.Status.Conditions != nil || p.Spec.SecurityContext.RunAsNonRoot != nil {
		t.Errorf("kept what is never read: %+v", p)
	}

	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "d", Annotations: map[string]string{"keepalive.io/managed-sysctls": "{}", "kubectl.kubernetes.io/last-applied-configuration": "{...}"}},
		Spec:       appsv1.DeploymentSpec{Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c"}}}}},
		Status:     appsv1.DeploymentStatus{ObservedGeneration: 2},
	}
	out, _ = StripForCache(d)
	d = out.(*appsv1.Deployment)
	if len(d.Annotations) != 1 || d.Annotations["keepalive.io/managed-sysctls"] != "{}" || d.Spec.Template.Spec.Containers != nil || d.Status.ObservedGeneration != 2 {
		t.Errorf("deployment stripped wrongly: %+v", d)
	}
}
