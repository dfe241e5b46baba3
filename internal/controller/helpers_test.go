package controller

import (
	"os"
	"path/filepath"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"github.com/keepalive-operator/keepalive-operator/api/v1alpha1"
	"github.com/keepalive-operator/keepalive-operator/internal/keepalive"
	"github.com/keepalive-operator/keepalive-operator/internal/testobj"
)

// create creates obj and deletes it when the spec ends (a namespace
// deletion would not: there is no namespace controller).
func create(obj client.Object) {
	Expect(k8sClient.Create(ctx, obj)).To(Succeed(), "create %T %s", obj, obj.GetName())
	DeferCleanup(func() {
		Expect(client.IgnoreNotFound(k8sClient.Delete(ctx, obj))).To(Succeed())
	})
}

// createPolicy creates a policy and, when the spec ends, deletes it and
// waits until its finalizer has restored what it patched.
func createPolicy(obj client.Object) {
	Expect(k8sClient.Create(ctx, obj)).To(Succeed())
	DeferCleanup(func() {
		Expect(client.IgnoreNotFound(k8sClient.Delete(ctx, obj))).To(Succeed())
		Eventually(func() bool {
			return apierrors.IsNotFound(k8sClient.Get(ctx, client.ObjectKeyFromObject(obj), obj))
		}).Should(BeTrue(), "policy %s was never released", obj.GetName())
	})
}

func newNamespace(labels map[string]string) string {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "test-", Labels: labels}}
	Expect(k8sClient.Create(ctx, ns)).To(Succeed())
	return ns.Name
}

func sample(name, namespace string) *v1alpha1.KeepalivePolicy {
	raw, err := os.ReadFile(filepath.Join("..", "..", "config", "samples", name))
	Expect(err).NotTo(HaveOccurred())
	p := &v1alpha1.KeepalivePolicy{}
	Expect(yaml.UnmarshalStrict(raw, p)).To(Succeed())
	p.Namespace = namespace
	return p
}

func makeTemplate(name string, sysctls []corev1.Sysctl) corev1.PodTemplateSpec {
	t := corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": name}},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "app:1"}}},
	}
	if sysctls != nil {
		t.Spec.SecurityContext = &corev1.PodSecurityContext{Sysctls: sysctls}
	}
	return t
}

func selector(name string) *metav1.LabelSelector {
	return &metav1.LabelSelector{MatchLabels: map[string]string{"app": name}}
}

// deployment creates a Deployment with a ReplicaSet and one stale pod, as
// the controller-manager would.
func deployment(ns, name string, sysctls []corev1.Sysctl) *appsv1.Deployment {
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       appsv1.DeploymentSpec{Selector: selector(name), Template: makeTemplate(name, sysctls)},
	}
	create(d)
	replicaSetOf(d, sysctls)
	return d
}

// replicaSetOf creates the Deployment's ReplicaSet with one stale pod, as
// the controller-manager would.
func replicaSetOf(d *appsv1.Deployment, sysctls []corev1.Sysctl) {
	ns, name := d.Namespace, d.Name
	rs := &appsv1.ReplicaSet{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name + "-1",
			OwnerReferences: []metav1.OwnerReference{*metav1.NewControllerRef(d, appsv1.SchemeGroupVersion.WithKind("Deployment"))}},
		Spec: appsv1.ReplicaSetSpec{Selector: selector(name), Template: makeTemplate(name, sysctls)},
	}
	create(rs)
	create(testobj.MakePod(ns, name+"-1-a").Labels(map[string]string{"app": name}).Owner(rs, "apps/v1", "ReplicaSet").Obj())
}

func statefulSet(ns, name string, sysctls []corev1.Sysctl) *appsv1.StatefulSet {
	s := &appsv1.StatefulSet{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       appsv1.StatefulSetSpec{Selector: selector(name), Template: makeTemplate(name, sysctls)},
	}
	create(s)
	create(testobj.MakePod(ns, name+"-0").Labels(map[string]string{"app": name}).Owner(s, "apps/v1", "StatefulSet").Obj())
	return s
}

func daemonSet(ns, name string, sysctls []corev1.Sysctl) *appsv1.DaemonSet {
	d := &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       appsv1.DaemonSetSpec{Selector: selector(name), Template: makeTemplate(name, sysctls)},
	}
	create(d)
	create(testobj.MakePod(ns, name+"-x1").Labels(map[string]string{"app": name}).Owner(d, "apps/v1", "DaemonSet").Obj())
	return d
}

func jobTemplate(name string, sysctls []corev1.Sysctl) batchv1.JobSpec {
	t := makeTemplate(name, sysctls)
	t.Spec.RestartPolicy = corev1.RestartPolicyNever
	return batchv1.JobSpec{Template: t}
}

// cronJob creates a CronJob with one Job and its stale pod.
func cronJob(ns, name string, sysctls []corev1.Sysctl) *batchv1.CronJob {
	c := &batchv1.CronJob{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: batchv1.CronJobSpec{Schedule: "*/5 * * * *", JobTemplate: batchv1.JobTemplateSpec{
			ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": name}}, Spec: jobTemplate(name, sysctls),
		}},
	}
	create(c)
	j := &batchv1.Job{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name + "-29000000",
			OwnerReferences: []metav1.OwnerReference{*metav1.NewControllerRef(c, batchv1.SchemeGroupVersion.WithKind("CronJob"))}},
		Spec: jobTemplate(name, sysctls),
	}
	create(j)
	create(testobj.MakePod(ns, j.Name+"-a").Labels(map[string]string{"app": name}).Owner(j, "batch/v1", "Job").Obj())
	return c
}

// job creates a Job of no CronJob with its stale pod.
func job(ns, name string) *batchv1.Job {
	j := &batchv1.Job{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: jobTemplate(name, nil)}
	create(j)
	create(testobj.MakePod(ns, name+"-a").Labels(map[string]string{"app": name}).Owner(j, "batch/v1", "Job").Obj())
	return j
}

// templateOf reads a workload and returns its template's sysctls and record.
func templateOf(obj client.Object) ([]corev1.Sysctl, string) {
	fresh := obj.DeepCopyObject().(client.Object)
	Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(obj), fresh)).To(Succeed())
	var t *corev1.PodTemplateSpec
	switch o := fresh.(type) {
	case *appsv1.Deployment:
		t = &o.Spec.Template
	case *appsv1.StatefulSet:
		t = &o.Spec.Template
	case *appsv1.DaemonSet:
		t = &o.Spec.Template
	case *appsv1.ReplicaSet:
		t = &o.Spec.Template
	case *batchv1.CronJob:
		t = &o.Spec.JobTemplate.Spec.Template
	case *batchv1.Job:
		t = &o.Spec.Template
	}
	var sysctls []corev1.Sysctl
	if t.Spec.SecurityContext != nil {
		sysctls = t.Spec.SecurityContext.Sysctls
	}
	return sysctls, fresh.GetAnnotations()[keepalive.AnnotationManagedSysctls]
}

func sysctlsOf(obj client.Object) []corev1.Sysctl {
	s, _ := templateOf(obj)
	return s
}

// finishRollout reports the Deployment's current generation fully rolled
// out, as its controller would.
func finishRollout(d *appsv1.Deployment) {
	Eventually(func() error {
		fresh := &appsv1.Deployment{}
		if err := k8sClient.Get(ctx, client.ObjectKeyFromObject(d), fresh); err != nil {
			return err
		}
		fresh.Status = appsv1.DeploymentStatus{ObservedGeneration: fresh.Generation, Replicas: 1, UpdatedReplicas: 1, ReadyReplicas: 1, AvailableReplicas: 1}
		return k8sClient.Status().Update(ctx, fresh)
	}).Should(Succeed())
}

// status reads a policy's status.
func status(obj client.Object) func() v1alpha1.KeepalivePolicyStatus {
	return func() v1alpha1.KeepalivePolicyStatus {
		fresh := obj.DeepCopyObject().(policyObject)
		if err := k8sClient.Get(ctx, client.ObjectKeyFromObject(obj), fresh); err != nil {
			return v1alpha1.KeepalivePolicyStatus{}
		}
		return *fresh.PolicyStatus()
	}
}

// condition finds a condition in a status.
func condition(s v1alpha1.KeepalivePolicyStatus, t string) metav1.Condition {
	if c := meta.FindStatusCondition(s.Conditions, t); c != nil {
		return *c
	}
	return metav1.Condition{}
}

func ks(kv ...string) []corev1.Sysctl {
	out := make([]corev1.Sysctl, 0, len(kv)/2)
	for i := 0; i < len(kv); i += 2 {
		out = append(out, corev1.Sysctl{Name: kv[i], Value: kv[i+1]})
	}
	return out
}

// updatePolicy applies change to the latest version of the policy.
func updatePolicy(p *v1alpha1.KeepalivePolicy, change func()) {
	Eventually(func() error {
		if err := k8sClient.Get(ctx, client.ObjectKeyFromObject(p), p); err != nil {
			return err
		}
		change()
		return k8sClient.Update(ctx, p)
	}).Should(Succeed())
}

// operatorRequests lists what the operator asked of the API server so far,
// watches aside.
func operatorRequests() []string {
	reqs, err := env.OperatorRequests()
	Expect(err).NotTo(HaveOccurred())
	var out []string
	for _, r := range reqs {
		if r.Verb != "watch" {
			out = append(out, r.What())
		}
	}
	return out
}

// writesOf counts the operator's patches and updates of a workload.
func writesOf(resource string, obj client.Object) int {
	n := 0
	for _, r := range operatorRequests() {
		if r == "patch "+resource+" "+obj.GetNamespace()+"/"+obj.GetName() || r == "update "+resource+" "+obj.GetNamespace()+"/"+obj.GetName() {
			n++
		}
	}
	return n
}

// requestsSince returns the operator's requests after the first n.
func requestsSince(n int) []string {
	return operatorRequests()[n:]
}
