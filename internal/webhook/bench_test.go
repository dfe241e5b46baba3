package webhook

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"testing"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/keepalive-operator/keepalive-operator/internal/keepalive"
)

// benchPod is a pod of a Deployment as the API server hands it to admission:
// three containers with env, ports, probes, resources and mounts, volumes,
// owner reference and a securityContext; about 4 KB of JSON.
func benchPod() *corev1.Pod {
	container := func(name, image string, port int32) corev1.Container {
		probe := &corev1.Probe{
			ProbeHandler:     corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromInt32(port), Scheme: corev1.URISchemeHTTP}},
			TimeoutSeconds:   1,
			PeriodSeconds:    10,
			SuccessThreshold: 1,
			FailureThreshold: 3,
		}
		return corev1.Container{
			Name:  name,
			Image: image,
			Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: port, Protocol: corev1.ProtocolTCP}},
			Env: []corev1.EnvVar{
				{Name: "DATABASE_URL", Value: "postgres://orders@orders-db.shop.svc:5432/orders?sslmode=require"},
				{Name: "LOG_LEVEL", Value: "info"},
				{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: "metadata.name"}}},
			},
			Resources: corev1.ResourceRequirements{
				Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("250m"), corev1.ResourceMemory: resource.MustParse("256Mi")},
				Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("512Mi")},
			},
			VolumeMounts: []corev1.VolumeMount{
				{Name: "config", MountPath: "/etc/orders", ReadOnly: true},
				{Name: "kube-api-access-x7k2p", MountPath: "/var/run/secrets/kubernetes.io/serviceaccount", ReadOnly: true},
			},
			LivenessProbe:            probe,
			ReadinessProbe:           probe,
			TerminationMessagePath:   "/dev/termination-log",
			TerminationMessagePolicy: corev1.TerminationMessageReadFile,
			ImagePullPolicy:          corev1.PullIfNotPresent,
		}
	}
	grace := int64(30)
	nonRoot := true
	return &corev1.Pod{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{
			GenerateName: "orders-7d9c6b5f4-",
			Namespace:    "shop",
			Labels:       map[string]string{"app": "orders", "pod-template-hash": "7d9c6b5f4", "tier": "api"},
			Annotations:  map[string]string{"prometheus.io/scrape": "true", "prometheus.io/port": "9090"},
			OwnerReferences: []metav1.OwnerReference{{
				APIVersion: "apps/v1", Kind: "ReplicaSet", Name: "orders-7d9c6b5f4",
				UID: "4b8e1f2a-9c3d-4e5f-8a7b-6c5d4e3f2a1b", Controller: &nonRoot, BlockOwnerDeletion: &nonRoot,
			}},
		},
		Spec: corev1.PodSpec{
			Containers: []corev1.Container{
				container("orders", "registry.example.com/shop/orders:v2.14.3", 8080),
				container("metrics", "registry.example.com/shop/metrics-sidecar:v1.2.0", 9090),
				container("proxy", "registry.example.com/shop/db-proxy:v0.9.1", 5432),
			},
			Volumes: []corev1.Volume{
				{Name: "config", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: "orders-config"}}}},
				{Name: "kube-api-access-x7k2p", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{
					{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Path: "token"}},
					{ConfigMap: &corev1.ConfigMapProjection{LocalObjectReference: corev1.LocalObjectReference{Name: "kube-root-ca.crt"}, Items: []corev1.KeyToPath{{Key: "ca.crt", Path: "ca.crt"}}}},
				}}}},
			},
			RestartPolicy:                 corev1.RestartPolicyAlways,
			TerminationGracePeriodSeconds: &grace,
			DNSPolicy:                     corev1.DNSClusterFirst,
			ServiceAccountName:            "orders",
			SecurityContext:               &corev1.PodSecurityContext{RunAsNonRoot: &nonRoot, SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}},
			SchedulerName:                 corev1.DefaultSchedulerName,
			Tolerations: []corev1.Toleration{
				{Key: "node.kubernetes.io/not-ready", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute},
				{Key: "node.kubernetes.io/unreachable", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute},
			},
		},
	}
}

// benchPolicies are the policies of a busy cluster: several in the pod's
// namespace and a few cluster-wide.
var benchPolicies = [][]byte{
	[]byte(`{"kind":"KeepalivePolicy","metadata":{"name":"orders-db","namespace":"shop"},"spec":{"podSelector":{"matchLabels":{"app":"orders"}},"idleTimeouts":[{"preset":"aws-nlb"},{"preset":"aws-nat-gateway"}]}}`),
	[]byte(`{"kind":"KeepalivePolicy","metadata":{"name":"web","namespace":"shop"},"spec":{"podSelector":{"matchLabels":{"app":"web"}},"idleTimeouts":[{"preset":"aws-alb"}]}}`),
	[]byte(`{"kind":"KeepalivePolicy","metadata":{"name":"batch","namespace":"shop"},"spec":{"podSelector":{"matchExpressions":[{"key":"tier","operator":"In","values":["batch","worker"]}]},"idleTimeouts":[{"seconds":900}]}}`),
	[]byte(`{"kind":"ClusterKeepalivePolicy","metadata":{"name":"egress"},"spec":{"namespaceSelector":{"matchLabels":{"egress":"nat"}},"idleTimeouts":[{"preset":"gcp-cloud-nat"}]}}`),
	[]byte(`{"kind":"ClusterKeepalivePolicy","metadata":{"name":"baseline"},"spec":{"idleTimeouts":[{"preset":"azure-lb-outbound"}]}}`),
}

func benchBody(b testing.TB) []byte {
	raw, err := json.Marshal(benchPod())
	if err != nil {
		b.Fatal(err)
	}
	return reviewBody(b, "CREATE", "shop", raw)
}

// rewindBody is a request body that can be read again without allocating.
type rewindBody struct{ bytes.Reader }

func (*rewindBody) Close() error { return nil }

// discardWriter is a ResponseWriter that keeps nothing.
type discardWriter struct{ h http.Header }

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (w *discardWriter) WriteHeader(int)             {}

// serveLoop returns a function that posts body to h once, reusing the
// request, so that only the handler's own work is measured.
func serveLoop(h http.Handler, body []byte) func() {
	rb := &rewindBody{}
	req, _ := http.NewRequestWithContext(context.Background(), http.MethodPost, Path, rb)
	req.Header.Set("Content-Type", "application/json")
	w := &discardWriter{h: http.Header{}}
	return func() {
		rb.Reset(body)
		h.ServeHTTP(w, req)
	}
}

// defaulter is the same mutation as a controller-runtime typed Defaulter.
type defaulter struct{ h *Handler }

func (d defaulter) Default(ctx context.Context, pod *corev1.Pod) error {
	req, err := admission.RequestFromContext(ctx)
	if err != nil {
		return err
	}
	labels, _, namespaced, cluster := d.h.Store.Lookup(req.Namespace)
	view := keepalive.PodView{Labels: pod.Labels, Annotations: pod.Annotations, HostNetwork: pod.Spec.HostNetwork}
	if pod.Spec.OS != nil {
		view.OS = string(pod.Spec.OS.Name)
	}
	if pod.Spec.SecurityContext != nil {
		view.Sysctls = pod.Spec.SecurityContext.Sysctls
	}
	dec := keepalive.Decide(view, keepalive.Namespace{Name: req.Namespace, Labels: labels}, d.h.Cluster(), namespaced, cluster)
	if dec.Skip != "" {
		return nil
	}
	if dec.Sysctls != nil {
		if pod.Spec.SecurityContext == nil {
			pod.Spec.SecurityContext = &corev1.PodSecurityContext{}
		}
		pod.Spec.SecurityContext.Sysctls = dec.Sysctls
	}
	for _, a := range dec.Annotations {
		if pod.Annotations == nil {
			pod.Annotations = map[string]string{}
		}
		pod.Annotations[a.Key] = a.Value
	}
	return nil
}

// BenchmarkAdmission measures a pod admission through the handler against
// two baselines of the same run: "floor" only decodes the AdmissionReview
// and its Pod into the typed structs with encoding/json, which a typed
// handler cannot go below; "defaulter" is the same mutation as a
// controller-runtime admission.Defaulter[*corev1.Pod].
func BenchmarkAdmission(b *testing.B) {
	body := benchBody(b)
	h := newTestHandler(b, keepalive.Cluster{Minor: 36}, "shop", map[string]string{"egress": "nat"}, benchPolicies...)
	b.Logf("AdmissionReview of %d bytes", len(body))

	b.Run("handler", func(b *testing.B) {
		serve := serveLoop(h, body)
		b.ReportAllocs()
		b.SetBytes(int64(len(body)))
		for b.Loop() {
			serve()
		}
	})
	b.Run("floor", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(body)))
		for b.Loop() {
			var rev admissionv1.AdmissionReview
			if err := json.Unmarshal(body, &rev); err != nil {
				b.Fatal(err)
			}
			var pod corev1.Pod
			if err := json.Unmarshal(rev.Request.Object.Raw, &pod); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("defaulter", func(b *testing.B) {
		wh := admission.WithDefaulter[*corev1.Pod](clientgoscheme.Scheme, defaulter{h})
		serve := serveLoop(wh, body)
		b.ReportAllocs()
		b.SetBytes(int64(len(body)))
		for b.Loop() {
			serve()
		}
	})
}

// onePolicy is the ClusterKeepalivePolicy that governs the benchmark pod in
// BenchmarkAdmissionPolicies: it selects the shop namespace by a label.
var onePolicy = []byte(`{"kind":"ClusterKeepalivePolicy","metadata":{"name":"nlb-egress"},"spec":{"namespaceSelector":{"matchLabels":{"egress":"nlb"}},"idleTimeouts":[{"preset":"aws-nlb"}]}}`)

// shopLabels are the labels of the benchmark pod's namespace.
var shopLabels = map[string]string{"kubernetes.io/metadata.name": "shop", "team": "shop", "egress": "nlb", "env": "prod"}

// manyPolicies are onePolicy among 999 others that do not apply to the
// benchmark pod: 500 KeepalivePolicies in other namespaces (ns-0 to ns-499)
// and 499 ClusterKeepalivePolicies whose namespaceSelectors pick teams other
// than shop's, every tenth by matchExpressions.
func manyPolicies() [][]byte {
	presets := keepalive.Presets()
	policies := [][]byte{onePolicy}
	for i := range 500 {
		policies = append(policies, fmt.Appendf(nil,
			`{"kind":"KeepalivePolicy","metadata":{"name":"orders","namespace":"ns-%d"},"spec":{"podSelector":{"matchLabels":{"app":"orders"}},"idleTimeouts":[{"preset":%q}]}}`,
			i, presets[i%len(presets)]))
	}
	for i := range 499 {
		sel := fmt.Sprintf(`{"matchLabels":{"team":"t-%d"}}`, i)
		switch i % 10 {
		case 3:
			sel = fmt.Sprintf(`{"matchExpressions":[{"key":"team","operator":"In","values":["t-%d","t-%d"]},{"key":"env","operator":"NotIn","values":["dev"]}]}`, i, i+1)
		case 7:
			sel = fmt.Sprintf(`{"matchLabels":{"env":"prod"},"matchExpressions":[{"key":"cost-center","operator":"Exists"},{"key":"team","operator":"In","values":["t-%d"]}]}`, i)
		}
		policies = append(policies, fmt.Appendf(nil,
			`{"kind":"ClusterKeepalivePolicy","metadata":{"name":"team-%d"},"spec":{"namespaceSelector":%s,"idleTimeouts":[{"preset":%q}]}}`,
			i, sel, presets[i%len(presets)]))
	}
	return policies
}

// BenchmarkAdmissionPolicies measures how admission scales with the size of
// the cluster: "one" admits the benchmark pod with the one policy that
// governs it and its namespace in the store; "thousand" admits it with that
// policy among 1,000 and 10,000 namespaces in the store. The decision is the
// same in both.
func BenchmarkAdmissionPolicies(b *testing.B) {
	body := benchBody(b)
	cluster := keepalive.Cluster{Minor: 36}
	one := newTestHandler(b, cluster, "shop", shopLabels, onePolicy)
	policies := manyPolicies()
	thousand := newTestHandler(b, cluster, "shop", shopLabels, policies...)
	envs := []string{"prod", "staging", "dev"}
	for i := range 10_000 {
		name := fmt.Sprintf("ns-%d", i)
		labels := map[string]string{"kubernetes.io/metadata.name": name, "team": fmt.Sprintf("t-%d", i%500), "env": envs[i%len(envs)]}
		if i%4 == 0 {
			labels["cost-center"] = fmt.Sprintf("cc-%d", i%37)
		}
		thousand.Store.SetNamespace(name, labels)
	}
	s := thousand.Store
	s.mu.RLock()
	nPolicies, nNamespaces, nShop := len(s.cluster), len(s.namespaces), len(s.namespaced["shop"])
	for _, list := range s.namespaced {
		nPolicies += len(list)
	}
	s.mu.RUnlock()
	if nPolicies != 1000 || nNamespaces != 10_001 || nShop != 0 {
		b.Fatalf("store holds %d policies (%d in shop) and %d namespaces, want 1000 (0) and 10001", nPolicies, nShop, nNamespaces)
	}

	want := serve(b, one, body).Patch
	if want == nil || !bytes.Contains(want, []byte(`"ClusterKeepalivePolicy/nlb-egress"`)) {
		b.Fatalf("one: the pod was not injected by ClusterKeepalivePolicy/nlb-egress: patch %s", want)
	}
	if got := serve(b, thousand, body).Patch; !bytes.Equal(got, want) {
		b.Fatalf("thousand decides otherwise than one:\n got %s\nwant %s", got, want)
	}

	for _, bm := range []struct {
		name string
		h    *Handler
	}{{"one", one}, {"thousand", thousand}} {
		b.Run(bm.name, func(b *testing.B) {
			serve := serveLoop(bm.h, body)
			b.ReportAllocs()
			b.SetBytes(int64(len(body)))
			for b.Loop() {
				serve()
			}
		})
	}
}

// TestAdmissionAllocations holds the handler to its allocation budget on the
// benchmark's pod, which it must actually inject. Allocation counts, unlike
// times, do not depend on the machine.
func TestAdmissionAllocations(t *testing.T) {
	const budget = 60
	body := benchBody(t)
	h := newTestHandler(t, keepalive.Cluster{Minor: 36}, "shop", map[string]string{"egress": "nat"}, benchPolicies...)
	resp := serve(t, h, body)
	if resp.Patch == nil {
		t.Fatal("the benchmark pod was not injected: the benchmark would measure a skip")
	}
	if !bytes.Contains(resp.Patch, []byte(`"KeepalivePolicy/shop/orders-db"`)) {
		t.Errorf("patch does not name the expected policy: %s", resp.Patch)
	}
	if allocs := testing.AllocsPerRun(200, serveLoop(h, body)); allocs > budget {
		t.Errorf("%v allocations per admission, budget %d", allocs, budget)
	}
}
