package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"github.com/onsi/gomega/gexec"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"
	sigsyaml "sigs.k8s.io/yaml"

	"github.com/keepalive-operator/keepalive-operator/internal/keepalive"
)

// The manifests and policies of the plugin's golden test.
var renderFixture = filepath.Join("..", "kubectl-keepalive", "testdata", "render", "manifests")

var _ = Describe("manifests rendered by kubectl keepalive render", func() {
	It("are created and admitted again without a change to their sysctls", func(ctx SpecContext) {
		plugin, err := gexec.Build("github.com/keepalive-operator/keepalive-operator/cmd/kubectl-keepalive")
		Expect(err).NotTo(HaveOccurred())
		policies := filepath.Join(renderFixture, "policies.yaml")
		render := exec.Command(plugin, "render", "-f", filepath.Join(renderFixture, "input.yaml"), "--policies", policies,
			"--operator-namespace", operatorNS)
		var stderr bytes.Buffer
		render.Stderr = &stderr
		rendered, err := render.Output()
		Expect(err).NotTo(HaveOccurred(), stderr.String())
		Expect(stderr.String()).To(ContainSubstring("Deployment shop/api"), "render changed nothing")

		start("--health-probe-bind-address", freeAddr(), "--metrics-bind-address", "0")
		// The namespaces the manifests name, then the policies file's
		// Namespace and policies.
		for _, name := range []string{"payments", "other"} {
			create(ctx, &unstructured.Unstructured{Object: map[string]any{
				"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": name}}})
		}
		for _, obj := range objects(mustRead(policies)) {
			create(ctx, obj)
		}
		By("waiting until the webhook knows both policies")
		for ns, policy := range map[string]string{"shop": "ClusterKeepalivePolicy/behind-nlb", "payments": "KeepalivePolicy/payments/azure"} {
			Eventually(func() map[string]string {
				pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, GenerateName: "probe-"},
					Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "registry.example/c:1"}}}}
				if err := k8sClient.Create(ctx, pod, client.DryRunAll); err != nil {
					return nil
				}
				return pod.Annotations
			}, 20*time.Second).Should(HaveKeyWithValue(keepalive.AnnotationPolicy, policy))
		}

		By("creating every rendered object, and a pod of each rendered template")
		admitted := 0
		for _, obj := range objects(rendered) {
			create(ctx, obj)
			var spec *corev1.PodSpec
			var labels map[string]string
			switch obj.GetKind() {
			case "Pod":
				var pod corev1.Pod
				Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(obj), &pod)).To(Succeed())
				Expect(sysctlsOf(&pod.Spec)).To(Equal(sysctlsAt(obj, "spec")), "the rendered pod %s was changed at admission", obj.GetName())
				admitted++
				continue
			case "Deployment", "StatefulSet", "DaemonSet":
				spec, labels = templateAt(obj, "spec", "template")
			case "CronJob":
				spec, labels = templateAt(obj, "spec", "jobTemplate", "spec", "template")
			default:
				continue
			}
			pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: obj.GetNamespace(), GenerateName: obj.GetName() + "-", Labels: labels}, Spec: *spec}
			Expect(k8sClient.Create(ctx, pod, client.DryRunAll)).To(Succeed())
			Expect(sysctlsOf(&pod.Spec)).To(Equal(sysctlsOf(spec)), "a pod of %s %s was changed at admission", obj.GetKind(), obj.GetName())
			admitted++
		}
		Expect(admitted).To(Equal(7), "pods admitted: the worker Pod and a pod of each of 6 workloads")
	})
})

// objects decodes the documents of a YAML stream.
func objects(raw []byte) []*unstructured.Unstructured {
	var out []*unstructured.Unstructured
	for _, doc := range regexp.MustCompile(`(?m)^---\s*$`).Split(string(raw), -1) {
		obj := &unstructured.Unstructured{}
		ExpectWithOffset(1, sigsyaml.Unmarshal([]byte(doc), &obj.Object)).To(Succeed())
		if obj.Object != nil && obj.GetKind() != "" {
			out = append(out, obj)
		}
	}
	return out
}

func create(ctx context.Context, obj *unstructured.Unstructured) {
	obj = obj.DeepCopy()
	ExpectWithOffset(1, k8sClient.Create(ctx, obj)).To(Succeed(), "create %s %s", obj.GetKind(), obj.GetName())
	DeferCleanup(func(ctx context.Context) {
		ExpectWithOffset(1, client.IgnoreNotFound(k8sClient.Delete(ctx, obj))).To(Succeed())
	})
}

func mustRead(path string) []byte {
	raw, err := os.ReadFile(path)
	ExpectWithOffset(1, err).NotTo(HaveOccurred())
	return raw
}

// templateAt decodes the pod template at path of an object.
func templateAt(obj *unstructured.Unstructured, path ...string) (*corev1.PodSpec, map[string]string) {
	raw, found, err := unstructured.NestedMap(obj.Object, path...)
	ExpectWithOffset(1, err).NotTo(HaveOccurred())
	ExpectWithOffset(1, found).To(BeTrue())
	var t corev1.PodTemplateSpec
	ExpectWithOffset(1, runtimeFromMap(raw, &t)).To(Succeed())
	return &t.Spec, t.Labels
}

// sysctlsAt decodes the pod spec at path of an object and returns its
// sysctls.
func sysctlsAt(obj *unstructured.Unstructured, path ...string) []corev1.Sysctl {
	raw, found, err := unstructured.NestedMap(obj.Object, path...)
	ExpectWithOffset(1, err).NotTo(HaveOccurred())
	ExpectWithOffset(1, found).To(BeTrue())
	var spec corev1.PodSpec
	ExpectWithOffset(1, runtimeFromMap(raw, &spec)).To(Succeed())
	return sysctlsOf(&spec)
}

func runtimeFromMap(m map[string]any, into any) error {
	raw, err := sigsyaml.Marshal(m)
	if err != nil {
		return err
	}
	return sigsyaml.Unmarshal(raw, into)
}

func sysctlsOf(spec *corev1.PodSpec) []corev1.Sysctl {
	if spec.SecurityContext == nil {
		return nil
	}
	return spec.SecurityContext.Sysctls
}
