package controller

import (
	"fmt"
	"slices"
	"testing"
	"time"
	"unsafe"

	"github.com/google/go-cmp/cmp"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/keepalive-operator/keepalive-operator/internal/keepalive"
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

func TestRollsPods(t *testing.T) {
	zero, three, two := int32(0), int32(3), int32(2)
	cases := map[string]struct {
		obj  client.Object
		want bool
	}{
		"deployment":                  {&appsv1.Deployment{}, true},
		"paused deployment":           {&appsv1.Deployment{Spec: appsv1.DeploymentSpec{Paused: true}}, false},
		"deployment scaled to zero":   {&appsv1.Deployment{Spec: appsv1.DeploymentSpec{Replicas: &zero}}, false},
		"statefulset":                 {&appsv1.StatefulSet{Spec: appsv1.StatefulSetSpec{Replicas: &three}}, true},
		"statefulset OnDelete":        {&appsv1.StatefulSet{Spec: appsv1.StatefulSetSpec{UpdateStrategy: appsv1.StatefulSetUpdateStrategy{Type: appsv1.OnDeleteStatefulSetStrategyType}}}, false},
		"partition below replicas":    {&appsv1.StatefulSet{Spec: appsv1.StatefulSetSpec{Replicas: &three, UpdateStrategy: appsv1.StatefulSetUpdateStrategy{RollingUpdate: &appsv1.RollingUpdateStatefulSetStrategy{Partition: &two}}}}, true},
		"partition at replicas":       {&appsv1.StatefulSet{Spec: appsv1.StatefulSetSpec{Replicas: &two, UpdateStrategy: appsv1.StatefulSetUpdateStrategy{RollingUpdate: &appsv1.RollingUpdateStatefulSetStrategy{Partition: &two}}}}, false},
		"daemonset":                   {&appsv1.DaemonSet{}, true},
		"daemonset OnDelete":          {&appsv1.DaemonSet{Spec: appsv1.DaemonSetSpec{UpdateStrategy: appsv1.DaemonSetUpdateStrategy{Type: appsv1.OnDeleteDaemonSetStrategyType}}}, false},
		"replicaset replaces nothing": {&appsv1.ReplicaSet{}, false},
		"cronjob replaces nothing":    {&batchv1.CronJob{}, false},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			if got := rollsPods(tc.obj); got != tc.want {
				t.Errorf("rollsPods() = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestSlots(t *testing.T) {
	now := time.Unix(1000, 0)
	s := newSlots(2, time.Minute)
	a, b, c, d := workloadKey{"Deployment", "ns", "a"}, workloadKey{"Deployment", "ns", "b"}, workloadKey{"StatefulSet", "ns", "c"}, workloadKey{"Deployment", "ns", "d"}
	if ok, _ := s.acquire(a, "P", now); !ok {
		t.Fatal("first slot refused")
	}
	if ok, _ := s.acquire(b, "P", now); !ok {
		t.Fatal("second slot refused")
	}
	if ok, joined := s.acquire(c, "Q", now); ok || !joined {
		t.Fatalf("a third rollout: ok=%v joined=%v, want a place in the queue", ok, joined)
	}
	if ok, joined := s.acquire(d, "Q", now); ok || !joined {
		t.Fatal("a fourth rollout did not queue")
	}
	if _, joined := s.acquire(c, "Q", now); joined {
		t.Fatal("a workload joined the queue twice")
	}
	if rolling, pending := s.count("Q"); rolling != 0 || pending != 2 {
		t.Fatalf("count(Q) = %d rolling, %d pending; want 0, 2", rolling, pending)
	}
	if ok, _ := s.acquire(a, "P", now); !ok {
		t.Fatal("a workload lost the slot it holds")
	}
	s.started(a, 4, 0)
	// The cache still shows generation 3, done: the change is not seen yet.
	if p, _, _ := s.observe(a, deploymentWith(3, appsv1.DeploymentStatus{ObservedGeneration: 3, Replicas: 1, UpdatedReplicas: 1, AvailableReplicas: 1}), now); p != stillRolling {
		t.Fatal("a stale cache freed the slot")
	}
	if p, _, _ := s.observe(a, deploymentWith(4, appsv1.DeploymentStatus{ObservedGeneration: 4, Replicas: 1, UpdatedReplicas: 1, AvailableReplicas: 1}), now); p != finished {
		t.Fatal("a finished rollout still holds its slot")
	}
	// One slot is free: only the first in the queue is woken.
	if diff := cmp.Diff([]workloadKey{c}, s.wake()); diff != "" {
		t.Fatalf("woken (-want +got):\n%s", diff)
	}
	if ok, _ := s.acquire(c, "Q", now); !ok {
		t.Fatal("the freed slot was not given to the first waiting")
	}
	// A StatefulSet without progress frees its slot at the deadline.
	three := int32(3)
	sts := &appsv1.StatefulSet{ObjectMeta: metav1.ObjectMeta{Generation: 2}, Spec: appsv1.StatefulSetSpec{Replicas: &three},
		Status: appsv1.StatefulSetStatus{ObservedGeneration: 2, UpdatedReplicas: 1}}
	s.started(c, 2, 0)
	// One more pod updated at 30 s: the deadline counts from then.
	if p, _, retry := s.observe(c, sts, now.Add(30*time.Second)); p != stillRolling || retry != 61*time.Second {
		t.Fatalf("progress: %v, retry in %s", p, retry)
	}
	if p, _, _ := s.observe(c, sts, now.Add(80*time.Second)); p != stillRolling {
		t.Fatal("progress at 30 s did not move the deadline")
	}
	if p, _, _ := s.observe(c, sts, now.Add(91*time.Second)); p != stuck {
		t.Fatal("a StatefulSet past its deadline kept its slot")
	}
	// A workload paused while rolling frees its slot.
	paused := deploymentWith(5, appsv1.DeploymentStatus{ObservedGeneration: 5})
	paused.Spec.Paused = true
	s.started(b, 5, 0)
	if p, _, _ := s.observe(b, paused, now); p != finished {
		t.Fatal("a paused Deployment kept its slot")
	}
	// A new leader counts the rollouts under way, even beyond the limit.
	r := newSlots(1, time.Minute)
	r.rebuild(now, func() map[workloadKey]slot {
		return map[workloadKey]slot{a: {policy: "P", generation: 3}, b: {policy: "P", generation: 7}}
	})
	r.rebuild(now, func() map[workloadKey]slot { t.Fatal("rebuilt twice"); return nil })
	if ok, _ := r.acquire(c, "P", now); ok {
		t.Fatal("a slot was given out while rollouts found under way fill the limit")
	}
	if rolling, _ := r.count("P"); rolling != 2 {
		t.Fatalf("rebuilt %d rollouts, want 2", rolling)
	}
	// No limit.
	u := newSlots(0, time.Minute)
	for i := range 100 {
		if ok, _ := u.acquire(workloadKey{"Deployment", "ns", fmt.Sprint(i)}, "P", now); !ok {
			t.Fatal("no limit refused a slot")
		}
	}
}

func TestTemplatePatch(t *testing.T) {
	rec := &keepalive.Managed{Policy: "KeepalivePolicy/shop/nlb", Set: []corev1.Sysctl{{Name: keepalive.SysctlTime, Value: "175"}}}
	cases := map[string]struct {
		kind string
		d    keepalive.Template
		want string
	}{
		"sysctls and record": {kindDeployment, keepalive.Template{Sysctls: rec.Set, Record: rec, SysctlsChanged: true, RecordChanged: true},
			`{"metadata":{"annotations":{"keepalive.io/managed-sysctls":"{\"policy\":\"KeepalivePolicy/shop/nlb\",\"set\":[{\"name\":\"net.ipv4.tcp_keepalive_time\",\"value\":\"175\"}]}"},"resourceVersion":"7"},` +
				`"spec":{"template":{"spec":{"securityContext":{"sysctls":[{"name":"net.ipv4.tcp_keepalive_time","value":"175"}]}}}}}`},
		"restore to none": {kindStatefulSet, keepalive.Template{SysctlsChanged: true, RecordChanged: true},
			`{"metadata":{"annotations":{"keepalive.io/managed-sysctls":null},"resourceVersion":"7"},"spec":{"template":{"spec":{"securityContext":{"sysctls":null}}}}}`},
		"record only": {kindDeployment, keepalive.Template{Sysctls: rec.Set, Record: rec, RecordChanged: true},
			`{"metadata":{"annotations":{"keepalive.io/managed-sysctls":"{\"policy\":\"KeepalivePolicy/shop/nlb\",\"set\":[{\"name\":\"net.ipv4.tcp_keepalive_time\",\"value\":\"175\"}]}"},"resourceVersion":"7"}}`},
		"cronjob's job template": {kindCronJob, keepalive.Template{Sysctls: rec.Set, SysctlsChanged: true},
			`{"metadata":{"resourceVersion":"7"},"spec":{"jobTemplate":{"spec":{"template":{"spec":{"securityContext":{"sysctls":[{"name":"net.ipv4.tcp_keepalive_time","value":"175"}]}}}}}}}`},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			p := templatePatch(tc.kind, "7", tc.d)
			raw, err := p.Data(nil)
			if err != nil || p.Type() != types.MergePatchType {
				t.Fatalf("patch %s: %v", p.Type(), err)
			}
			if string(raw) != tc.want {
				t.Errorf("patch\n got %s\nwant %s", raw, tc.want)
			}
		})
	}
}

func TestCachedPod(t *testing.T) {
	pod := func(name string) *corev1.Pod {
		return &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "ns", Labels: map[string]string{"app": "x", "pod-template-hash": "abc"},
				Annotations: map[string]string{"big": "x"}, ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubectl"}},
				OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: "x-abc", Controller: new(true)}}},
			Spec: corev1.PodSpec{NodeName: "n", Containers: []corev1.Container{{Name: "c", Image: "i"}}, OS: &corev1.PodOS{Name: corev1.Linux},
				SecurityContext: &corev1.PodSecurityContext{RunAsNonRoot: new(true), Sysctls: []corev1.Sysctl{{Name: "a", Value: "1"}, {Name: keepalive.SysctlTime, Value: "175"}}}},
			Status: corev1.PodStatus{Phase: corev1.PodRunning, Conditions: []corev1.PodCondition{{Type: corev1.PodReady}}},
		}
	}
	if size := unsafe.Sizeof(cachedPod{}); size > 48 {
		t.Errorf("a cached pod takes %d bytes, more than the 48 its comment promises", size)
	}
	out, _ := toCachedPod(pod("p1"))
	p := out.(*cachedPod)
	kind, owner := p.Owner()
	if got := []any{p.Name, p.GetNamespace(), kind, owner, p.Node(), p.OS(), p.HostNetwork(), p.Finished}; !slices.Equal(got, []any{"p1", "ns", "ReplicaSet", "x-abc", "n", "linux", false, false}) {
		t.Errorf("cached pod: name, namespace, owner, node, os, hostNetwork, finished = %v", got)
	}
	if diff := cmp.Diff(map[string]string{"app": "x", "pod-template-hash": "abc"}, p.Labels()); diff != "" {
		t.Errorf("labels (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]corev1.Sysctl{{Name: keepalive.SysctlTime, Value: "175"}}, p.Keepalive()); diff != "" {
		t.Errorf("keepalive sysctls (-want +got):\n%s", diff)
	}
	// It is a client.Object for the informer and its event handlers.
	var obj client.Object = p
	if obj.GetName() != "p1" || obj.GetNamespace() != "ns" || obj.GetLabels()["app"] != "x" || obj.GetDeletionTimestamp() != nil {
		t.Errorf("as a client.Object: %s/%s %v %v", obj.GetNamespace(), obj.GetName(), obj.GetLabels(), obj.GetDeletionTimestamp())
	}
	if key, err := toolscache.MetaNamespaceKeyFunc(p); err != nil || key != "ns/p1" {
		t.Errorf("informer key = %q, %v", key, err)
	}
	// The replicas of one ReplicaSet share one shape, whatever their node.
	p2pod := pod("p2")
	p2pod.Spec.NodeName = "m"
	out2, _ := toCachedPod(p2pod)
	if p2 := out2.(*cachedPod); p2.shape != p.shape || p2.Node() != "m" {
		t.Errorf("two replicas on nodes n and m: shared shape %v, node %q", p2.shape == p.shape, p2.Node())
	}
	for name, change := range map[string]func(*corev1.Pod){
		"labels":      func(o *corev1.Pod) { o.Labels = map[string]string{"app": "y"} },
		"sysctls":     func(o *corev1.Pod) { o.Spec.SecurityContext.Sysctls[1].Value = "100" },
		"namespace":   func(o *corev1.Pod) { o.Namespace = "other" },
		"owner":       func(o *corev1.Pod) { o.OwnerReferences[0].Name = "x-def" },
		"os":          func(o *corev1.Pod) { o.Spec.OS = nil },
		"hostNetwork": func(o *corev1.Pod) { o.Spec.HostNetwork = true },
	} {
		other := pod("p3")
		change(other)
		if out3, _ := toCachedPod(other); out3.(*cachedPod).shape == p.shape {
			t.Errorf("a pod with other %s got the shape of p1", name)
		}
	}
	// A slash-form name is the same sysctl: kept under the pod's own name,
	// so that a pod carrying all three is compliant, not stale.
	slash := pod("p7")
	slash.Spec.SecurityContext.Sysctls = []corev1.Sysctl{{Name: "net/ipv4/tcp_keepalive_time", Value: "175"},
		{Name: "net/ipv4/ip_forward", Value: "1"}, {Name: "net/ipv4/tcp_keepalive_intvl", Value: "30"}, {Name: keepalive.SysctlProbes, Value: "9"}}
	out7, _ := toCachedPod(slash)
	wantSlash := []corev1.Sysctl{{Name: "net/ipv4/tcp_keepalive_time", Value: "175"},
		{Name: "net/ipv4/tcp_keepalive_intvl", Value: "30"}, {Name: keepalive.SysctlProbes, Value: "9"}}
	if diff := cmp.Diff(wantSlash, out7.(*cachedPod).Keepalive()); diff != "" {
		t.Errorf("slash-form keepalive sysctls (-want +got):\n%s", diff)
	}
	if !keepalive.Compliant(out7.(*cachedPod).Keepalive(), keepalive.Values{TimeSeconds: 175, IntervalSeconds: 30, Probes: 9}) {
		t.Errorf("a pod with the values in slash form is not compliant: %v", out7.(*cachedPod).Keepalive())
	}
	// A value cannot pass for two entries.
	forged := pod("p5")
	forged.Spec.SecurityContext.Sysctls = []corev1.Sysctl{{Name: keepalive.SysctlTime, Value: "175\x00" + keepalive.SysctlProbes + "\x009"}}
	real := pod("p6")
	real.Spec.SecurityContext.Sysctls = []corev1.Sysctl{{Name: keepalive.SysctlTime, Value: "175"}, {Name: keepalive.SysctlProbes, Value: "9"}}
	out5, _ := toCachedPod(forged)
	out6, _ := toCachedPod(real)
	if got := out6.(*cachedPod).Keepalive(); len(got) != 2 || out5.(*cachedPod).shape == out6.(*cachedPod).shape {
		t.Errorf("a forged value shares the list of two entries: %v", got)
	}
	if cp := p.DeepCopyObject().(*cachedPod); cp == p || cp.Name != "p1" || cp.Labels()["app"] != "x" {
		t.Errorf("DeepCopyObject = %+v", cp)
	}
	deleting := pod("p4")
	deleting.DeletionTimestamp = &metav1.Time{Time: time.Unix(1, 0)}
	deleting.Status.Phase = corev1.PodSucceeded
	if out4, _ := toCachedPod(deleting); out4.(*cachedPod).GetDeletionTimestamp().IsZero() || !out4.(*cachedPod).Finished {
		t.Errorf("a deleted, finished pod is cached as %+v", out4)
	}
	// Anything else passes unchanged.
	if ns := (&corev1.Namespace{}); func() any { o, _ := toCachedPod(ns); return o }() != ns {
		t.Error("a namespace was transformed")
	}
}

func TestStripForCache(t *testing.T) {
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "d", Annotations: map[string]string{"keepalive.io/managed-sysctls": "{}", "kubectl.kubernetes.io/last-applied-configuration": "{...}"}},
		Spec:       appsv1.DeploymentSpec{Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c"}}}}},
		Status:     appsv1.DeploymentStatus{ObservedGeneration: 2},
	}
	out, _ := StripForCache(d)
	d = out.(*appsv1.Deployment)
	if len(d.Annotations) != 1 || d.Annotations["keepalive.io/managed-sysctls"] != "{}" || d.Spec.Template.Spec.Containers != nil || d.Status.ObservedGeneration != 2 {
		t.Errorf("deployment stripped wrongly: %+v", d)
	}
	// A ReplicaSet is a workload of its own only without a controller.
	ctrl := []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "Deployment", Name: "d", Controller: new(true)}}
	rs := func(owners []metav1.OwnerReference) *appsv1.ReplicaSet {
		return &appsv1.ReplicaSet{
			ObjectMeta: metav1.ObjectMeta{Name: "d-1", Namespace: "ns", ResourceVersion: "9", OwnerReferences: owners, Labels: map[string]string{"app": "d"},
				Annotations: map[string]string{"keepalive.io/managed-sysctls": "{}"}},
			Spec: appsv1.ReplicaSetSpec{Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "d"}},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c"}}}}},
		}
	}
	out, _ = StripForCache(rs(ctrl))
	want := &appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{Name: "d-1", Namespace: "ns", ResourceVersion: "9", OwnerReferences: ctrl}}
	if diff := cmp.Diff(want, out); diff != "" {
		t.Errorf("a Deployment's ReplicaSet (-want +got):\n%s", diff)
	}
	out, _ = StripForCache(rs(nil))
	if bare := out.(*appsv1.ReplicaSet); bare.Annotations["keepalive.io/managed-sysctls"] != "{}" || bare.Spec.Template.Labels["app"] != "d" || bare.Spec.Template.Spec.Containers != nil {
		t.Errorf("a bare ReplicaSet stripped wrongly: %+v", bare)
	}
	job := &batchv1.Job{ObjectMeta: metav1.ObjectMeta{Name: "j", Namespace: "ns", OwnerReferences: ctrl, Labels: map[string]string{"a": "b"}},
		Spec: batchv1.JobSpec{Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c"}}}}}}
	out, _ = StripForCache(job)
	if diff := cmp.Diff(&batchv1.Job{ObjectMeta: metav1.ObjectMeta{Name: "j", Namespace: "ns", OwnerReferences: ctrl}}, out); diff != "" {
		t.Errorf("a Job (-want +got):\n%s", diff)
	}
}
