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
	"k8s.io/apimachinery/pkg/runtime"
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

// Selectors are checked by the API server with the rules the operator's
// parser (metav1.LabelSelectorAsSelector) applies, plus bounds: what the
// server accepts the operator can use, and what the operator would refuse
// never gets stored.
var _ = Describe("selectors", func() {
	var (
		name63  = strings.Repeat("n", 63)
		prefix  = strings.Repeat("a", 63) + "." + strings.Repeat("b", 63) + "." + strings.Repeat("c", 63) + "." + strings.Repeat("d", 61) // 253 characters
		value63 = strings.Repeat("v", 63)
		labels  = func(n int) string {
			return "{matchLabels: {" + joinN(n, func(i int) string { return fmt.Sprintf("l%d: v", i) }) + "}}"
		}
		exprs = func(n int) string {
			return "{matchExpressions: [" + joinN(n, func(i int) string { return fmt.Sprintf("{key: l%d, operator: Exists}", i) }) + "]}"
		}
		values = func(n int) string {
			return "{matchExpressions: [{key: l, operator: In, values: [" + joinN(n, func(i int) string { return fmt.Sprintf("v%d", i) }) + "]}]}"
		}
		fieldsOf = map[string][]string{
			"KeepalivePolicy":        {"podSelector"},
			"ClusterKeepalivePolicy": {"podSelector", "namespaceSelector"},
		}
	)
	withSelector := func(kind, field, selector string) *unstructured.Unstructured {
		return policy(kind, "selector", fmt.Sprintf("idleTimeouts: [{preset: aws-nlb}]\n%s: %s", field, selector))
	}

	for _, kind := range []string{"KeepalivePolicy", "ClusterKeepalivePolicy"} {
		for _, field := range fieldsOf[kind] {
			// path is where the API server reports the error; message is
			// what it says there.
			rejects := func(runtimeRefuses bool) func(selector, path, message string) {
				return func(selector, path, message string) {
					obj := withSelector(kind, field, selector)
					err := dryRun(obj)
					Expect(err).To(HaveOccurred(), "the API server accepted %s: %s", field, selector)
					Expect(err.Error()).To(ContainSubstring("spec."+field+path+": "), "the error names the field")
					Expect(err.Error()).To(ContainSubstring(message))
					if runtimeRefuses {
						Expect(newPolicy(obj)).To(MatchError(ContainSubstring(field+": ")), "the operator would refuse it too")
					}
				}
			}

			DescribeTable(fmt.Sprintf("rejects an invalid %s of a %s", field, kind), rejects(true),
				Entry("In without values", `{matchExpressions: [{key: tier, operator: In}]}`, ".matchExpressions[0]", "operator In needs at least one value"),
				Entry("In with an empty list of values", `{matchExpressions: [{key: tier, operator: In, values: []}]}`, ".matchExpressions[0]", "operator In needs at least one value"),
				Entry("NotIn without values", `{matchExpressions: [{key: tier, operator: NotIn}]}`, ".matchExpressions[0]", "operator NotIn needs at least one value"),
				Entry("Exists with values", `{matchExpressions: [{key: tier, operator: Exists, values: [web]}]}`, ".matchExpressions[0]", "operator Exists takes no values"),
				Entry("DoesNotExist with values", `{matchExpressions: [{key: tier, operator: DoesNotExist, values: [web]}]}`, ".matchExpressions[0]", "operator DoesNotExist takes no values"),
				Entry("the second requirement invalid", `{matchExpressions: [{key: tier, operator: Exists}, {key: app, operator: In}]}`, ".matchExpressions[1]", "operator In needs at least one value"),
				Entry("an unknown operator", `{matchExpressions: [{key: tier, operator: Bogus, values: [web]}]}`, ".matchExpressions[0].operator", `Unsupported value: "Bogus": supported values: "In", "NotIn", "Exists", "DoesNotExist"`),
				Entry("an operator in the wrong case", `{matchExpressions: [{key: tier, operator: in, values: [web]}]}`, ".matchExpressions[0].operator", `Unsupported value: "in"`),
				Entry("no operator", `{matchExpressions: [{key: tier}]}`, ".matchExpressions[0].operator", "Required value"),
				Entry("no key", `{matchExpressions: [{operator: Exists}]}`, ".matchExpressions[0].key", "Required value"),
				Entry("an empty key", `{matchExpressions: [{key: "", operator: Exists}]}`, ".matchExpressions[0].key", "should match"),
				Entry("a key with a space", `{matchExpressions: [{key: "bad key!", operator: Exists}]}`, ".matchExpressions[0].key", "should match"),
				Entry("a key with an uppercase prefix", `{matchExpressions: [{key: Example.com/tier, operator: Exists}]}`, ".matchExpressions[0].key", "should match"),
				Entry("a key with an empty prefix", `{matchExpressions: [{key: /tier, operator: Exists}]}`, ".matchExpressions[0].key", "should match"),
				Entry("a key with two slashes", `{matchExpressions: [{key: example.com/a/b, operator: Exists}]}`, ".matchExpressions[0].key", "should match"),
				Entry("a key ending in a dash", `{matchExpressions: [{key: tier-, operator: Exists}]}`, ".matchExpressions[0].key", "should match"),
				Entry("a key whose name is 64 characters", `{matchExpressions: [{key: `+name63+`x, operator: Exists}]}`, ".matchExpressions[0].key", "should match"),
				Entry("a key whose prefix is 254 characters", `{matchExpressions: [{key: `+prefix+`d/tier, operator: Exists}]}`, ".matchExpressions[0].key", "the prefix of the key, before the slash, must be at most 253 characters"),
				Entry("a value with a space", `{matchExpressions: [{key: tier, operator: In, values: [web, "bad value!"]}]}`, ".matchExpressions[0].values[1]", "should match"),
				Entry("a value starting with a dot", `{matchExpressions: [{key: tier, operator: NotIn, values: [.web]}]}`, ".matchExpressions[0].values[0]", "should match"),
				Entry("a value of 64 characters", `{matchExpressions: [{key: tier, operator: In, values: [`+value63+`x]}]}`, ".matchExpressions[0].values[0]", "63"),
				Entry("a label key with a space", `{matchLabels: {"bad key!": v}}`, ".matchLabels", "every key must be a label key"),
				Entry("an empty label key", `{matchLabels: {"": v}}`, ".matchLabels", "every key must be a label key"),
				Entry("a label key with two slashes", `{matchLabels: {example.com/a/b: v}}`, ".matchLabels", "every key must be a label key"),
				Entry("a label key with an empty prefix", `{matchLabels: {/tier: v}}`, ".matchLabels", "every key must be a label key"),
				Entry("a label key whose name is 64 characters", `{matchLabels: {`+name63+`x: v}}`, ".matchLabels", "every key must be a label key"),
				Entry("a label key whose prefix is 254 characters", `{matchLabels: {`+prefix+`d/tier: v}}`, ".matchLabels", "every key must be a label key"),
				Entry("a label value with a space", `{matchLabels: {tier: "bad value!"}}`, ".matchLabels.tier", "should match"),
				Entry("a label value ending in an underscore", `{matchLabels: {tier: web_}}`, ".matchLabels.tier", "should match"),
				Entry("a label value of 64 characters", `{matchLabels: {tier: `+value63+`x}}`, ".matchLabels.tier", "63"),
			)

			DescribeTable(fmt.Sprintf("holds the %s of a %s to bounds", field, kind), rejects(false),
				Entry("65 labels", labels(65), ".matchLabels", "Too many: 65: must have at most 64 items"),
				Entry("65 requirements", exprs(65), ".matchExpressions", "Too many: 65: must have at most 64 items"),
				Entry("1025 values", values(1025), ".matchExpressions[0].values", "Too many: 1025: must have at most 1024 items"),
			)

			DescribeTable(fmt.Sprintf("accepts a valid %s of a %s", field, kind),
				func(selector string) {
					obj := withSelector(kind, field, selector)
					Expect(dryRun(obj)).To(Succeed(), "%s: %s", field, selector)
					Expect(newPolicy(obj)).To(Succeed(), "the operator can use what the API server accepts")
				},
				Entry("empty", `{}`),
				Entry("with empty lists", `{matchLabels: {}, matchExpressions: []}`),
				Entry("with labels", `{matchLabels: {app.kubernetes.io/name: api, tier: "", version: v1.2_3-rc}}`),
				Entry("with all four operators", `{matchExpressions: [{key: app.kubernetes.io/name, operator: In, values: [api, web]}, {key: tier, operator: NotIn, values: [batch, ""]}, {key: example.com/canary, operator: Exists}, {key: legacy, operator: DoesNotExist, values: []}]}`),
				Entry("with labels and requirements", `{matchLabels: {team: shop}, matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [shop-sandbox]}]}`),
				Entry("with the longest key and value", `{matchLabels: {`+prefix+`/`+name63+`: `+value63+`}, matchExpressions: [{key: `+prefix+`/`+name63+`, operator: In, values: [`+value63+`]}]}`),
				Entry("with one-character keys and values", `{matchLabels: {a: b}, matchExpressions: [{key: x/y, operator: In, values: [z]}]}`),
				Entry("with 64 labels", labels(64)),
				Entry("with 64 requirements", exprs(64)),
				Entry("with 1024 values", values(1024)),
			)
		}
	}

	It("rejects an invalid selector on update too", func() {
		p := withSelector("ClusterKeepalivePolicy", "namespaceSelector", `{matchLabels: {team: shop}}`)
		Expect(k8sClient.Create(ctx, p)).To(Succeed())
		DeferCleanup(func() { Expect(k8sClient.Delete(ctx, p)).To(Succeed()) })
		Expect(unstructured.SetNestedSlice(p.Object, []any{map[string]any{"key": "tier", "operator": "In"}}, "spec", "namespaceSelector", "matchExpressions")).To(Succeed())
		err := k8sClient.Update(ctx, p)
		Expect(err).To(HaveOccurred())
		Expect(err.Error()).To(ContainSubstring("spec.namespaceSelector.matchExpressions[0]: "))
		Expect(err.Error()).To(ContainSubstring("operator In needs at least one value"))
	})

	It("shows the field and the rule through kubectl apply", func() {
		manifest := `apiVersion: keepalive.io/v1alpha1
kind: KeepalivePolicy
metadata: {name: bad-selector, namespace: ` + namespace + `}
spec:
  idleTimeouts: [{preset: aws-nlb}]
  podSelector:
    matchExpressions: [{key: tier, operator: In}]
`
		_, stderr, err := env.Kubectl(manifest, "apply", "-f", "-")
		Expect(err).To(HaveOccurred())
		Expect(stderr).To(ContainSubstring(`The KeepalivePolicy "bad-selector" is invalid: spec.podSelector.matchExpressions[0]: `))
		Expect(stderr).To(ContainSubstring(`operator In needs at least one value`))
		GinkgoWriter.Println(stderr)
	})
})

// joinN joins n strings made by f with ", ".
func joinN(n int, f func(int) string) string {
	s := make([]string, n)
	for i := range s {
		s[i] = f(i)
	}
	return strings.Join(s, ", ")
}

// newPolicy is what the operator makes of a policy the API server stores.
func newPolicy(u *unstructured.Unstructured) error {
	var err error
	if u.GetKind() == "KeepalivePolicy" {
		p := &v1alpha1.KeepalivePolicy{}
		Expect(runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, p)).To(Succeed())
		_, err = keepalive.NewPolicy(p)
	} else {
		p := &v1alpha1.ClusterKeepalivePolicy{}
		Expect(runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, p)).To(Succeed())
		_, err = keepalive.NewClusterPolicy(p)
	}
	return err
}
