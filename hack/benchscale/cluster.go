package main

import (
	"context"
	"fmt"
	"hash/fnv"
	"maps"
	"path/filepath"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/keepalive-operator/keepalive-operator/api/v1alpha1"
	"github.com/keepalive-operator/keepalive-operator/internal/testenv"
)

const (
	// operatorNamespace is the operator's own namespace, which it never
	// injects.
	operatorNamespace = "keepalive-system"

	podsPerDeployment = 20
	nodeCount         = 5
	// workers is how many objects the program writes at once while it
	// sets a run up.
	workers = 24

	groupLabel = "keepalive-bench/group" // "a" is what the policies select
	noiseLabel = "keepalive-bench/noise" // what no selector reads
	appLabel   = "app"
	hashLabel  = appsv1.DefaultDeploymentUniqueLabelKey
)

// plane is a running kube-apiserver and etcd.
type plane struct {
	env *testenv.Env
	// c is an administrator's client, fast enough to set a run up in
	// seconds. Its requests are not the operator's and are not counted.
	c   client.Client
	cfg *rest.Config
	// kubeconfig is the operator's.
	kubeconfig string
	auditLog   string
}

// startPlane starts a control plane that writes its audit log of the
// operator's user into dir, with the operator's CRDs installed.
func startPlane(dir string) (*plane, error) {
	env, err := testenv.Start(testenv.CRDs|testenv.Audit, nil, dir)
	if err != nil {
		return nil, fmt.Errorf("start kube-apiserver and etcd: %w", err)
	}
	p := &plane{env: env, auditLog: env.AuditLog, kubeconfig: filepath.Join(dir, "operator.kubeconfig")}
	p.cfg = rest.CopyConfig(env.Config)
	p.cfg.QPS, p.cfg.Burst = 2000, 4000
	if p.c, err = client.New(p.cfg, client.Options{Scheme: env.Scheme}); err != nil {
		return p, fmt.Errorf("create the admin client: %w", err)
	}
	if err := env.OperatorKubeconfig(p.kubeconfig); err != nil {
		return p, fmt.Errorf("kubeconfig of %s: %w", testenv.OperatorUser, err)
	}
	return p, nil
}

func (p *plane) stop() error {
	if err := p.env.Stop(); err != nil {
		return fmt.Errorf("stop the control plane: %w", err)
	}
	return nil
}

// deployment is one Deployment of a run, with its one ReplicaSet.
type deployment struct {
	namespace, name string
	// selected: the policies select its pods.
	selected bool
}

// hash stands for the pod-template-hash the Deployment controller would
// compute: stable per Deployment, which is all the operator can tell.
func (d deployment) hash() string {
	h := fnv.New32a()
	_, _ = h.Write([]byte(d.namespace + "/" + d.name))
	return fmt.Sprintf("%08x", h.Sum32())[:8]
}

func (d deployment) replicaSet() string { return d.name + "-" + d.hash() }

func (d deployment) pod(i int) string { return fmt.Sprintf("%s-%05d", d.replicaSet(), i) }

func (d deployment) templateLabels() map[string]string {
	group := "b"
	if d.selected {
		group = "a"
	}
	return map[string]string{appLabel: d.name, groupLabel: group}
}

// layout is what a run creates: pods/20 Deployments spread evenly over the
// namespaces, half of them selected, in a checkerboard so that every
// namespace has some of each as soon as it has two.
type layout struct {
	pods          int
	clusterPreset v1alpha1.Preset
	namespaces    []string
	deployments   []deployment
}

func newLayout(pods, namespaces int, clusterPreset v1alpha1.Preset) layout {
	l := layout{pods: pods, clusterPreset: clusterPreset}
	for i := range namespaces {
		l.namespaces = append(l.namespaces, fmt.Sprintf("bench-%02d", i))
	}
	for i := range pods / podsPerDeployment {
		ns, j := i%namespaces, i/namespaces
		l.deployments = append(l.deployments, deployment{
			namespace: l.namespaces[ns], name: fmt.Sprintf("app-%03d", j), selected: (ns+j)%2 == 0,
		})
	}
	return l
}

func (l layout) selected() int {
	n := 0
	for _, d := range l.deployments {
		if d.selected {
			n++
		}
	}
	return n
}

// The policies. The namespaced ones compute 120/30/9 (azure-lb); the
// cluster one 175/30/9 (aws-nlb) by default, so that both select the same
// pods with different values, and every selected template must end with the
// smaller ones whatever the order the two are reconciled in. Run with
// -cluster-preset azure-lb, both compute the same values.
const (
	clusterPolicy   = "bench-cluster"
	namespacePolicy = "bench-azure"
)

// clusterPresets are the presets -cluster-preset takes: their time is no
// smaller than azure-lb's, so wantSysctls holds for either.
var clusterPresets = []v1alpha1.Preset{v1alpha1.PresetAWSNLB, v1alpha1.PresetAzureLB}

// wantSysctls are the values every selected template must carry.
var wantSysctls = map[string]string{
	"net.ipv4.tcp_keepalive_time":   "120",
	"net.ipv4.tcp_keepalive_intvl":  "30",
	"net.ipv4.tcp_keepalive_probes": "9",
}

func policySpec(preset v1alpha1.Preset) v1alpha1.KeepalivePolicySpec {
	return v1alpha1.KeepalivePolicySpec{
		PodSelector:  &v1alpha1.LabelSelector{MatchLabels: map[string]v1alpha1.LabelValue{groupLabel: "a"}},
		IdleTimeouts: []v1alpha1.Hop{{Preset: preset}},
		Mode:         v1alpha1.ModeEnforce,
		Rollout:      v1alpha1.RolloutPatchTemplates,
	}
}

func (l layout) policies() []client.Object {
	objs := []client.Object{&v1alpha1.ClusterKeepalivePolicy{
		ObjectMeta: metav1.ObjectMeta{Name: clusterPolicy},
		Spec:       v1alpha1.ClusterKeepalivePolicySpec{KeepalivePolicySpec: policySpec(l.clusterPreset)},
	}}
	for _, ns := range l.namespaces {
		objs = append(objs, &v1alpha1.KeepalivePolicy{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: namespacePolicy},
			Spec:       policySpec(v1alpha1.PresetAzureLB),
		})
	}
	return objs
}

// matched is how many pods each policy selects, by "namespace/name" ("/name"
// for the cluster policy).
func (l layout) matched() map[string]int32 {
	m := map[string]int32{"/" + clusterPolicy: 0}
	for _, ns := range l.namespaces {
		m[ns+"/"+namespacePolicy] = 0
	}
	for _, d := range l.deployments {
		if d.selected {
			m["/"+clusterPolicy] += podsPerDeployment
			m[d.namespace+"/"+namespacePolicy] += podsPerDeployment
		}
	}
	return m
}

// populate creates the namespaces, the nodes and the workloads of a run.
func (p *plane) populate(ctx context.Context, l layout) error {
	for _, ns := range append([]string{operatorNamespace}, l.namespaces...) {
		if err := p.c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
			return fmt.Errorf("create namespace %s: %w", ns, err)
		}
	}
	for i := range nodeCount {
		node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: nodeName(i)}}
		if err := p.c.Create(ctx, node); err != nil {
			return fmt.Errorf("create node %s: %w", node.Name, err)
		}
		node.Status = corev1.NodeStatus{
			NodeInfo: corev1.NodeSystemInfo{
				KubeletVersion: "v1.36.3", KernelVersion: "6.1.0-28-amd64", OSImage: "Debian GNU/Linux 12 (bookworm)",
				ContainerRuntimeVersion: "containerd://1.7.24", OperatingSystem: "linux", Architecture: "amd64",
			},
			Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady"}},
		}
		if err := p.c.Status().Update(ctx, node); err != nil {
			return fmt.Errorf("write the status of node %s: %w", node.Name, err)
		}
	}
	return testenv.Parallel(ctx, len(l.deployments), workers, func(ctx context.Context, i int) error {
		return p.createWorkload(ctx, l.deployments[i], i)
	})
}

func nodeName(i int) string { return fmt.Sprintf("bench-node-%d", i) }

func podSpec() corev1.PodSpec {
	return corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "registry.k8s.io/pause:3.10"}}}
}

// createWorkload creates a Deployment, its ReplicaSet and its running pods,
// as the Deployment and ReplicaSet controllers and the kubelets would.
func (p *plane) createWorkload(ctx context.Context, d deployment, index int) error {
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: d.namespace, Name: d.name, Labels: map[string]string{groupLabel: d.templateLabels()[groupLabel]}},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To[int32](podsPerDeployment),
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{appLabel: d.name}},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: d.templateLabels()}, Spec: podSpec()},
		},
	}
	if err := p.c.Create(ctx, dep); err != nil {
		return fmt.Errorf("create Deployment %s/%s: %w", d.namespace, d.name, err)
	}
	labels := d.templateLabels()
	labels[hashLabel] = d.hash()
	rs := &appsv1.ReplicaSet{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: d.namespace, Name: d.replicaSet(), Labels: labels,
			Annotations:     map[string]string{"deployment.kubernetes.io/revision": "1"},
			OwnerReferences: []metav1.OwnerReference{*metav1.NewControllerRef(dep, appsv1.SchemeGroupVersion.WithKind("Deployment"))},
		},
		Spec: appsv1.ReplicaSetSpec{
			Replicas: ptr.To[int32](podsPerDeployment),
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{appLabel: d.name, hashLabel: d.hash()}},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: podSpec()},
		},
	}
	if err := p.c.Create(ctx, rs); err != nil {
		return fmt.Errorf("create ReplicaSet %s/%s: %w", d.namespace, rs.Name, err)
	}
	for i := range podsPerDeployment {
		if err := p.createPod(ctx, rs, d.pod(i), nodeName((index*podsPerDeployment+i)%nodeCount)); err != nil {
			return err
		}
	}
	return nil
}

// createPod creates a pod of the ReplicaSet on a node, and reports it
// running as its kubelet would.
func (p *plane) createPod(ctx context.Context, rs *appsv1.ReplicaSet, name, node string) error {
	spec := podSpec()
	spec.NodeName = node
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: rs.Namespace, Name: name, Labels: maps.Clone(rs.Spec.Template.Labels),
			OwnerReferences: []metav1.OwnerReference{*metav1.NewControllerRef(rs, appsv1.SchemeGroupVersion.WithKind("ReplicaSet"))},
		},
		Spec: spec,
	}
	if err := p.c.Create(ctx, pod); err != nil {
		return fmt.Errorf("create pod %s/%s: %w", rs.Namespace, name, err)
	}
	now := metav1.Now()
	pod.Status = corev1.PodStatus{
		Phase:      corev1.PodRunning,
		Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now}},
		StartTime:  &now,
	}
	if err := p.c.Status().Update(ctx, pod); err != nil {
		return fmt.Errorf("report pod %s/%s running: %w", rs.Namespace, name, err)
	}
	return nil
}

// createPolicies creates the policies, all at once.
func (p *plane) createPolicies(ctx context.Context, l layout) error {
	objs := l.policies()
	return testenv.Parallel(ctx, len(objs), workers, func(ctx context.Context, i int) error {
		if err := p.c.Create(ctx, objs[i]); err != nil {
			return fmt.Errorf("create policy %s: %w", client.ObjectKeyFromObject(objs[i]), err)
		}
		return nil
	})
}

// relabel sets the label no selector reads on a pod.
func (p *plane) relabel(ctx context.Context, namespace, name, value string) error {
	patch := fmt.Sprintf(`{"metadata":{"labels":{%q:%q}}}`, noiseLabel, value)
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name}}
	if err := p.c.Patch(ctx, pod, client.RawPatch(types.MergePatchType, []byte(patch))); err != nil {
		return fmt.Errorf("relabel pod %s/%s: %w", namespace, name, err)
	}
	return nil
}

// addPod creates one more running pod of a Deployment's ReplicaSet.
func (p *plane) addPod(ctx context.Context, d deployment, name string) error {
	rs := &appsv1.ReplicaSet{}
	if err := p.c.Get(ctx, client.ObjectKey{Namespace: d.namespace, Name: d.replicaSet()}, rs); err != nil {
		return fmt.Errorf("get ReplicaSet %s/%s: %w", d.namespace, d.replicaSet(), err)
	}
	return p.createPod(ctx, rs, name, nodeName(0))
}
