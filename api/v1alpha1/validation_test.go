package v1alpha1_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/discovery"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"github.com/keepalive-operator/keepalive-operator/api/v1alpha1"
	"github.com/keepalive-operator/keepalive-operator/internal/keepalive"
	"github.com/keepalive-operator/keepalive-operator/internal/testobj"
)

const namespace = "validation"

// policy builds an object of the given kind from a spec written as a user
// would write it in YAML.
func policy(kind, name, specYAML string) *unstructured.Unstructured {
	spec := map[string]any{}
	Expect(yaml.Unmarshal([]byte(specYAML), &spec)).To(Succeed())
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": v1alpha1.GroupVersion.String(),
		"kind":       kind,
		"metadata":   map[string]any{"name": name},
		"spec":       spec,
	}}
	if kind == "KeepalivePolicy" {
		u.SetNamespace(namespace)
	}
	return u
}

// dryRun asks the API server to validate the object without storing it.
func dryRun(obj client.Object) error {
	return k8sClient.Create(ctx, obj, client.DryRunAll)
}

var _ = BeforeEach(OncePerOrdered, func() {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}
	Expect(client.IgnoreAlreadyExists(k8sClient.Create(ctx, ns))).To(Succeed())
})

var _ = Describe("the API server", func() {
	It("reports a version from which the keepalive sysctls are safe", func() {
		// A kube-apiserver built without version ldflags reports v0.0.0 and
		// would look older than 1.29.
		dc, err := discovery.NewDiscoveryClientForConfig(env.Config)
		Expect(err).NotTo(HaveOccurred())
		v, err := dc.ServerVersion()
		Expect(err).NotTo(HaveOccurred())
		Expect(v.Major).To(Equal("1"))
		Expect(v.Minor).To(Equal("36"), "server version %s", v.GitVersion)
	})

	Describe("samples in config/samples", func() {
		files, err := filepath.Glob(filepath.Join("..", "..", "config", "samples", "keepalive_*.yaml"))
		if err != nil || len(files) < 5 {
			panic(fmt.Sprintf("expected at least 5 samples, found %v (%v)", files, err))
		}
		for _, f := range files {
			It("accepts "+filepath.Base(f), func() {
				raw, err := os.ReadFile(f)
				Expect(err).NotTo(HaveOccurred())
				u := &unstructured.Unstructured{}
				Expect(yaml.Unmarshal(raw, &u.Object)).To(Succeed())
				if u.GetKind() == "KeepalivePolicy" {
					u.SetNamespace(namespace)
				}
				Expect(k8sClient.Create(ctx, u)).To(Succeed())
				DeferCleanup(func() { Expect(k8sClient.Delete(ctx, u)).To(Succeed()) })
			})
		}
	})

	It("fills in the defaults", func() {
		p := testobj.Spec().Preset(v1alpha1.PresetAWSNLB).Policy(namespace, "defaults")
		Expect(k8sClient.Create(ctx, p)).To(Succeed())
		DeferCleanup(func() { Expect(k8sClient.Delete(ctx, p)).To(Succeed()) })
		got := &v1alpha1.KeepalivePolicy{}
		Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(p), got)).To(Succeed())
		Expect(got.Spec.TimePercent).To(Equal(int32(50)))
		Expect(got.Spec.Probes).To(Equal(int32(9)))
		Expect(got.Spec.Mode).To(Equal(v1alpha1.ModeEnforce))
		Expect(got.Spec.Rollout).To(Equal(v1alpha1.RolloutPatchTemplates))
		Expect(got.Spec.IntervalSeconds).To(BeNil(), "the interval is derived, not defaulted")
	})

	for _, kind := range []string{"KeepalivePolicy", "ClusterKeepalivePolicy"} {
		DescribeTable("rejects an invalid "+kind,
			func(spec, message string) {
				err := dryRun(policy(kind, "invalid", spec))
				Expect(err).To(HaveOccurred(), "the API server accepted:\n%s", spec)
				Expect(err.Error()).To(ContainSubstring(message))
			},
			Entry("without idleTimeouts", `probes: 9`, `spec.idleTimeouts: Required value`),
			Entry("with no hops", `idleTimeouts: []`, `spec.idleTimeouts: Invalid value: 0: spec.idleTimeouts in body should have at least 1 items`),
			Entry("with 17 hops", "idleTimeouts:\n"+strings.Repeat("- preset: aws-nlb\n", 17), `spec.idleTimeouts: Too many: 17: must have at most 16 items`),
			Entry("with a hop that has neither preset nor seconds", `idleTimeouts: [{name: corp-firewall}]`, `a hop needs a preset or seconds`),
			Entry("with an unknown preset", `idleTimeouts: [{preset: aws-elb}]`, `spec.idleTimeouts[0].preset: Unsupported value: "aws-elb"`),
			Entry("with a custom hop of 1 s", `idleTimeouts: [{seconds: 1}]`, `seconds of a custom hop must be between 2 and 432000`),
			Entry("with a custom hop over 432000 s", `idleTimeouts: [{seconds: 432001}]`, `spec.idleTimeouts[0].seconds: Invalid value: 432001: spec.idleTimeouts[0].seconds in body should be less than or equal to 432000`),
			Entry("with an aws-nlb timeout below its range", `idleTimeouts: [{preset: aws-nlb, seconds: 59}]`, `seconds for preset aws-nlb must be between 60 and 6000`),
			Entry("with an azure-lb timeout above its range", `idleTimeouts: [{preset: azure-lb, seconds: 6001}]`, `seconds for preset azure-lb must be between 240 and 6000`),
			Entry("overriding the fixed aws-nat-gateway", `idleTimeouts: [{preset: aws-nat-gateway, seconds: 300}]`, `preset aws-nat-gateway has a fixed idle timeout of 350 seconds: remove seconds`),
			Entry("with timePercent 9", "idleTimeouts: [{preset: aws-nlb}]\ntimePercent: 9", `spec.timePercent: Invalid value: 9: spec.timePercent in body should be greater than or equal to 10`),
			Entry("with timePercent 91", "idleTimeouts: [{preset: aws-nlb}]\ntimePercent: 91", `spec.timePercent: Invalid value: 91: spec.timePercent in body should be less than or equal to 90`),
			Entry("with probes 0", "idleTimeouts: [{preset: aws-nlb}]\nprobes: 0", `spec.probes: Invalid value: 0: spec.probes in body should be greater than or equal to 1`),
			Entry("with probes 128", "idleTimeouts: [{preset: aws-nlb}]\nprobes: 128", `spec.probes: Invalid value: 128: spec.probes in body should be less than or equal to 127`),
			Entry("with intervalSeconds 0", "idleTimeouts: [{seconds: 100000}]\nintervalSeconds: 0", `spec.intervalSeconds: Invalid value: 0: spec.intervalSeconds in body should be greater than or equal to 1`),
			Entry("with intervalSeconds 32768", "idleTimeouts: [{seconds: 100000}]\nintervalSeconds: 32768", `spec.intervalSeconds: Invalid value: 32768: spec.intervalSeconds in body should be less than or equal to 32767`),
			Entry("with time + interval = T", "idleTimeouts: [{preset: aws-nlb}]\nintervalSeconds: 175", `intervalSeconds is too long`),
			Entry("with an interval too long for the shortest of three hops", "idleTimeouts: [{preset: gcp-cloud-nat}, {seconds: 100}, {preset: azure-lb}]\ntimePercent: 90\nintervalSeconds: 10", `intervalSeconds is too long`),
			Entry("with an unknown mode", "idleTimeouts: [{preset: aws-nlb}]\nmode: DryRun", `spec.mode: Unsupported value: "DryRun": supported values: "Enforce", "Audit"`),
			Entry("with an unknown rollout", "idleTimeouts: [{preset: aws-nlb}]\nrollout: Restart", `spec.rollout: Unsupported value: "Restart": supported values: "PatchTemplates", "None"`),
			Entry("with an empty hop name", `idleTimeouts: [{name: "", seconds: 600}]`, `spec.idleTimeouts[0].name: Invalid value: "": spec.idleTimeouts[0].name in body should be at least 1 chars long`),
		)
	}

	It("accepts the longest interval that still fits", func() {
		// T = 100 (the custom hop), time = 90 at 90 %: 90 + 9 < 100.
		Expect(dryRun(policy("KeepalivePolicy", "fits",
			"idleTimeouts: [{preset: gcp-cloud-nat}, {seconds: 100}, {preset: azure-lb}]\ntimePercent: 90\nintervalSeconds: 9"))).To(Succeed())
	})

	It("shows the rule's message through kubectl apply", func() {
		manifest := `apiVersion: keepalive.io/v1alpha1
kind: KeepalivePolicy
metadata: {name: bad, namespace: ` + namespace + `}
spec:
  idleTimeouts:
  - preset: aws-nlb
    seconds: 30
`
		_, stderr, err := env.Kubectl(manifest, "apply", "-f", "-")
		Expect(err).To(HaveOccurred())
		Expect(stderr).To(ContainSubstring(`The KeepalivePolicy "bad" is invalid`))
		Expect(stderr).To(ContainSubstring(`seconds for preset aws-nlb must be between 60 and 6000`))
	})

	It("prints the keepalive values and counts in kubectl get", func() {
		p := testobj.Spec().Preset(v1alpha1.PresetAWSNLB).Policy(namespace, "columns")
		Expect(k8sClient.Create(ctx, p)).To(Succeed())
		DeferCleanup(func() { Expect(k8sClient.Delete(ctx, p)).To(Succeed()) })
		p.Status = v1alpha1.KeepalivePolicyStatus{
			GoverningTimeout: &v1alpha1.GoverningTimeout{Name: "aws-nlb", Seconds: 350},
			Keepalive:        &v1alpha1.KeepaliveValues{TimeSeconds: 175, IntervalSeconds: 30, Probes: 9, DetectionSeconds: 445},
			Pods:             &v1alpha1.PodCounts{Matched: 12, Compliant: 10, Stale: 1, Skipped: 1},
			Conditions: []metav1.Condition{{
				Type: "Ready", Status: metav1.ConditionTrue, Reason: "Computed", LastTransitionTime: metav1.Now(),
			}},
		}
		Expect(k8sClient.Status().Update(ctx, p)).To(Succeed())

		out, stderr, err := env.Kubectl("", "get", "kap", "-n", namespace, "columns")
		Expect(err).NotTo(HaveOccurred(), stderr)
		lines := strings.Split(strings.TrimSpace(out), "\n")
		Expect(lines).To(HaveLen(2))
		Expect(strings.Fields(lines[0])).To(Equal([]string{"NAME", "TIME", "INTERVAL", "PROBES", "GOVERNING", "MATCHED", "COMPLIANT", "READY", "AGE"}))
		Expect(strings.Fields(lines[1])[:8]).To(Equal([]string{"columns", "175", "30", "9", "aws-nlb", "12", "10", "True"}))

		out, stderr, err = env.Kubectl("", "get", "kap", "-n", namespace, "columns", "-o", "wide")
		Expect(err).NotTo(HaveOccurred(), stderr)
		Expect(strings.Fields(strings.SplitN(out, "\n", 2)[0])).To(ContainElements("MODE", "DETECTION", "GOVERNING-SECONDS"))
		Expect(out).To(ContainSubstring("Enforce"))
		Expect(out).To(ContainSubstring("445"))
	})

	It("knows the short names kap and ckap", func() {
		for _, name := range []string{"kap", "ckap", "keepalive"} {
			_, stderr, err := env.Kubectl("", "get", name, "-A")
			Expect(err).NotTo(HaveOccurred(), "kubectl get %s: %s", name, stderr)
		}
	})
})

// The CEL rules repeat the presets table of internal/keepalive; these checks
// hold the two to each other, preset by preset, on the real API server.
var _ = Describe("the CRD rules agree with internal/keepalive", func() {
	for _, preset := range keepalive.Presets() {
		info, _ := keepalive.LookupPreset(preset)
		hop := func(seconds int32) string {
			return fmt.Sprintf("idleTimeouts: [{preset: %s, seconds: %d}]", preset, seconds)
		}

		if info.Fixed() {
			It(fmt.Sprintf("rejects any seconds for the fixed %s", preset), func() {
				err := dryRun(policy("KeepalivePolicy", "p", hop(info.DefaultSeconds)))
				Expect(err).To(HaveOccurred())
				Expect(err.Error()).To(ContainSubstring(fmt.Sprintf("preset %s has a fixed idle timeout of %d seconds", preset, info.DefaultSeconds)))
			})
		} else {
			It(fmt.Sprintf("holds %s to %d..%d", preset, info.MinSeconds, info.MaxSeconds), func() {
				Expect(dryRun(policy("KeepalivePolicy", "p", hop(info.MinSeconds)))).To(Succeed())
				Expect(dryRun(policy("KeepalivePolicy", "p", hop(info.MaxSeconds)))).To(Succeed())
				want := fmt.Sprintf("seconds for preset %s must be between %d and %d", preset, info.MinSeconds, info.MaxSeconds)
				if info.MinSeconds > 1 {
					err := dryRun(policy("KeepalivePolicy", "p", hop(info.MinSeconds-1)))
					Expect(err).To(HaveOccurred())
					Expect(err.Error()).To(ContainSubstring(want))
				}
				if info.MaxSeconds < keepalive.CustomMaxSeconds {
					err := dryRun(policy("KeepalivePolicy", "p", hop(info.MaxSeconds+1)))
					Expect(err).To(HaveOccurred())
					Expect(err.Error()).To(ContainSubstring(want))
				}
			})
		}

		It(fmt.Sprintf("knows the default timeout of %s in the interval rule", preset), func() {
			for _, percent := range []int32{10, 50, 90} {
				res, err := keepalive.Compute(testobj.Spec().Preset(preset).TimePercent(percent).Obj())
				Expect(err).NotTo(HaveOccurred())
				limit := res.Governing.Seconds - res.Values.TimeSeconds // the first interval that is too long
				spec := func(interval int32) string {
					return fmt.Sprintf("idleTimeouts: [{preset: %s}]\ntimePercent: %d\nintervalSeconds: %d", preset, percent, interval)
				}
				Expect(dryRun(policy("KeepalivePolicy", "p", spec(limit-1)))).To(Succeed(), "timePercent %d, interval %d", percent, limit-1)
				err = dryRun(policy("KeepalivePolicy", "p", spec(limit)))
				Expect(err).To(HaveOccurred(), "timePercent %d, interval %d", percent, limit)
				Expect(err.Error()).To(ContainSubstring("intervalSeconds is too long"))
			}
		})
	}
})
