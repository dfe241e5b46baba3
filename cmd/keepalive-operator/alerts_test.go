package main

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"
	sigsyaml "sigs.k8s.io/yaml"

	"github.com/keepalive-operator/keepalive-operator/api/v1alpha1"
	"github.com/keepalive-operator/keepalive-operator/internal/keepalive"
	"github.com/keepalive-operator/keepalive-operator/internal/testobj"
)

// The chart's alerts and dashboard, as users install them.
var (
	rulesFile     = filepath.Join("..", "..", "charts", "keepalive-operator", "files", "prometheus-rules.yaml")
	dashboardFile = filepath.Join("..", "..", "charts", "keepalive-operator", "files", "grafana-dashboard.json")
)

// webhookName is the webhook's name in the chart's configuration, the name
// label of the API server's admission metrics.
const webhookName = "pods.keepalive.io"

// scrape is the counters and gauges of one /metrics text by series, in
// PromQL's notation (name{label="value",...}).
type scrape map[string]float64

// families parses a /metrics text.
func families(text string) map[string]*dto.MetricFamily {
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(strings.NewReader(text))
	ExpectWithOffset(1, err).NotTo(HaveOccurred())
	return fams
}

// add adds the counters and gauges of fams that keep selects to s.
func (s scrape) add(fams map[string]*dto.MetricFamily, keep func(name string, labels map[string]string) bool) {
	for name, fam := range fams {
		for _, m := range fam.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			var v float64
			switch {
			case m.Counter != nil:
				v = m.Counter.GetValue()
			case m.Gauge != nil:
				v = m.Gauge.GetValue()
			default:
				continue // no rule reads histograms
			}
			if !keep(name, labels) {
				continue
			}
			parts := make([]string, 0, len(labels))
			for _, k := range slices.Sorted(maps.Keys(labels)) {
				parts = append(parts, k+"="+strconv.Quote(labels[k]))
			}
			s[name+"{"+strings.Join(parts, ",")+"}"] = v
		}
	}
}

// ofPolicy returns s's series of one policy.
func (s scrape) ofPolicy(policy string) []string {
	var out []string
	for k := range s {
		if strings.Contains(k, "policy="+strconv.Quote(policy)) {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out
}

// promtool runs the promtool binary that make test builds.
func promtool(args ...string) {
	bin := os.Getenv("PROMTOOL")
	ExpectWithOffset(1, bin).NotTo(BeEmpty(), "PROMTOOL is not set: run `make test`, which builds promtool (hack/setup-promtool.sh)")
	out, err := exec.Command(bin, args...).CombinedOutput()
	ExpectWithOffset(1, err).NotTo(HaveOccurred(), "promtool %s:\n%s", strings.Join(args, " "), out)
}

// Types of promtool's unit-test file.
type (
	ruleTests struct {
		RuleFiles          []string    `json:"rule_files"`
		EvaluationInterval string      `json:"evaluation_interval"`
		Tests              []ruleGroup `json:"tests"`
	}
	ruleGroup struct {
		Name        string        `json:"name"`
		Interval    string        `json:"interval"`
		InputSeries []inputSeries `json:"input_series"`
		AlertTests  []alertTest   `json:"alert_rule_test"`
	}
	inputSeries struct {
		Series string `json:"series"`
		Values string `json:"values"`
	}
	alertTest struct {
		EvalTime  string     `json:"eval_time"`
		Alertname string     `json:"alertname"`
		ExpAlerts []expAlert `json:"exp_alerts"`
	}
	expAlert struct {
		Labels      map[string]string `json:"exp_labels"`
		Annotations map[string]string `json:"exp_annotations"`
	}
)

// Minutes of the timeline the tests give promtool: the state before the
// events until minute 29, the state after from minute 30 to its end.
const (
	eventMinute = 30
	endMinute   = 240
)

// timeline is the series of promtool's input: before's values up to the
// events, after's from then on; a series missing from a scrape is missing
// from its part of the timeline.
func timeline(before, after scrape) []inputSeries {
	var out []inputSeries
	names := maps.Clone(before)
	maps.Copy(names, after)
	for _, name := range slices.Sorted(maps.Keys(names)) {
		part := func(s scrape, n int) string {
			if v, ok := s[name]; ok {
				return fmt.Sprintf("%s+0x%d", strconv.FormatFloat(v, 'f', -1, 64), n-1)
			}
			return fmt.Sprintf("_x%d", n)
		}
		out = append(out, inputSeries{Series: name, Values: part(before, eventMinute) + " " + part(after, endMinute-eventMinute+1)})
	}
	return out
}

// missedScrape is s from minute 0 to endMinute, with a stale marker at
// minute m, as Prometheus writes one when a scrape fails.
func missedScrape(s scrape, m int) []inputSeries {
	var out []inputSeries
	for _, name := range slices.Sorted(maps.Keys(s)) {
		v := strconv.FormatFloat(s[name], 'f', -1, 64)
		out = append(out, inputSeries{Series: name, Values: fmt.Sprintf("%s+0x%d stale %s+0x%d", v, m-1, v, endMinute-m-1)})
	}
	return out
}

// alertsAt expects exactly want of each named alert at minute m.
func alertsAt(m int, want map[string][]expAlert, names ...string) []alertTest {
	var out []alertTest
	for _, name := range names {
		out = append(out, alertTest{EvalTime: fmt.Sprintf("%dm", m), Alertname: name, ExpAlerts: want[name]})
	}
	return out
}

// hookTo is a webhook configuration named as the chart names its webhook,
// for the namespaces labelled key=value, calling an address where no one
// listens.
func hookTo(name, key, value string, policy admissionregistrationv1.FailurePolicyType) *admissionregistrationv1.MutatingWebhookConfiguration {
	none := admissionregistrationv1.SideEffectClassNone
	return &admissionregistrationv1.MutatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Webhooks: []admissionregistrationv1.MutatingWebhook{{
			Name:                    webhookName,
			AdmissionReviewVersions: []string{"v1"},
			ClientConfig:            admissionregistrationv1.WebhookClientConfig{URL: new("https://" + freeAddr() + "/mutate-v1-pod")},
			Rules: []admissionregistrationv1.RuleWithOperations{{
				Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create},
				Rule:       admissionregistrationv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods"}},
			}},
			FailurePolicy: &policy, SideEffects: &none, TimeoutSeconds: new(int32(2)),
			NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{key: value}},
		}},
	}
}

var _ = Describe("the chart's alerts", func() {
	It("fire on the series the operator and the API server export in each situation, and on nothing before", func(ctx SpecContext) {
		metricsAddr := freeAddr()
		start("--health-probe-bind-address", freeAddr(), "--metrics-bind-address", metricsAddr, "--metrics-secure=false")
		clientset, err := kubernetes.NewForConfig(env.Config)
		Expect(err).NotTo(HaveOccurred())
		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "alerts-"}}
		Expect(k8sClient.Create(ctx, ns)).To(Succeed())
		ref := func(name string) string { return "KeepalivePolicy/" + ns.Name + "/" + name }

		// What the rules read: the operator's series of this spec's
		// policies and the others without a policy, and the API server's
		// admission counters of the webhook.
		take := func() (scrape, map[string]*dto.MetricFamily) {
			s := scrape{}
			code, text := get(http.DefaultClient, "http://"+metricsAddr+"/metrics")
			Expect(code).To(Equal(http.StatusOK), text)
			operator := families(text)
			s.add(operator, func(name string, labels map[string]string) bool {
				p, ok := labels["policy"]
				return strings.HasPrefix(name, "keepalive_") && (!ok || strings.HasPrefix(p, "KeepalivePolicy/"+ns.Name+"/"))
			})
			raw, err := clientset.RESTClient().Get().AbsPath("/metrics").DoRaw(ctx)
			Expect(err).NotTo(HaveOccurred())
			apiserver := families(string(raw))
			s.add(apiserver, func(name string, labels map[string]string) bool {
				return strings.HasPrefix(name, "apiserver_admission_webhook_") && labels["name"] == webhookName
			})
			maps.Copy(operator, apiserver)
			return s, operator
		}
		Eventually(func() int { code, _ := get(http.DefaultClient, "http://"+metricsAddr+"/metrics"); return code }, 20*time.Second).
			Should(Equal(http.StatusOK))
		before, _ := take()

		By("pods and workloads that three policies find in each state")
		node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-alerts"}}
		Expect(k8sClient.Create(ctx, node)).To(Succeed())
		DeferCleanup(func(ctx context.Context) { Expect(k8sClient.Delete(ctx, node)).To(Succeed()) })
		node.Status.NodeInfo = corev1.NodeSystemInfo{KubeletVersion: "v1.36.3", KernelVersion: "6.1.0"}
		Expect(k8sClient.Status().Update(ctx, node)).To(Succeed())
		app := func(name string) map[string]string { return map[string]string{"app": name} }
		// api: a bare pod without the values on the audited node, a
		// hostNetwork pod, and a Deployment whose record of the operator is
		// unreadable.
		Expect(k8sClient.Create(ctx, testobj.MakePod(ns.Name, "old").Labels(app("api")).Node(node.Name).Obj())).To(Succeed())
		Expect(k8sClient.Create(ctx, testobj.MakePod(ns.Name, "edge").Labels(app("api")).HostNetwork().Obj())).To(Succeed())
		deployment := func(name string, annotations map[string]string) *appsv1.Deployment {
			return &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: ns.Name, Name: name, Annotations: annotations}, Spec: appsv1.DeploymentSpec{
				Selector: &metav1.LabelSelector{MatchLabels: app(name)},
				Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: app(name)}, Spec: testobj.MakePod(ns.Name, name).Obj().Spec},
			}}
		}
		broken := deployment("api", map[string]string{keepalive.AnnotationManagedSysctls: `{"policy":`})
		Expect(k8sClient.Create(ctx, broken)).To(Succeed())
		// web: a Deployment with a pod without the values, whose rollout
		// never ends (no controller-manager).
		webDeploy := deployment("web", nil)
		Expect(k8sClient.Create(ctx, webDeploy)).To(Succeed())
		rs := &appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{Namespace: ns.Name, Name: "web-1",
			OwnerReferences: []metav1.OwnerReference{*metav1.NewControllerRef(webDeploy, appsv1.SchemeGroupVersion.WithKind("Deployment"))}},
			Spec: appsv1.ReplicaSetSpec{Selector: webDeploy.Spec.Selector, Template: webDeploy.Spec.Template}}
		Expect(k8sClient.Create(ctx, rs)).To(Succeed())
		Expect(k8sClient.Create(ctx, testobj.MakePod(ns.Name, "web-1-a").Labels(app("web")).Owner(rs, "apps/v1", "ReplicaSet").Obj())).To(Succeed())
		// trial: in Audit mode, a pod without the values.
		Expect(k8sClient.Create(ctx, testobj.MakePod(ns.Name, "trial").Labels(app("trial")).Obj())).To(Succeed())
		policies := []*v1alpha1.KeepalivePolicy{
			testobj.Spec().Preset(v1alpha1.PresetAWSNLB).PodLabels(app("api")).Policy(ns.Name, "api"),
			testobj.Spec().Preset(v1alpha1.PresetAWSNLB).PodLabels(app("web")).Policy(ns.Name, "web"),
			testobj.Spec().Preset(v1alpha1.PresetAWSNLB).PodLabels(app("trial")).Mode(v1alpha1.ModeAudit).Policy(ns.Name, "trial"),
		}
		for _, p := range policies {
			Expect(k8sClient.Create(ctx, p)).To(Succeed())
			DeferCleanup(func(ctx context.Context) { Expect(client.IgnoreNotFound(k8sClient.Delete(ctx, p))).To(Succeed()) })
		}
		DeferCleanup(func(ctx context.Context) { Expect(k8sClient.Delete(ctx, broken)).To(Succeed()) }) // before its policy's finalizer
		report := &v1alpha1.KeepaliveNodeReport{ObjectMeta: metav1.ObjectMeta{Name: node.Name}, Status: v1alpha1.KeepaliveNodeReportStatus{
			AuditTime: metav1.Now(), ValidSeconds: 3600, IntervalSeconds: 60, PodCount: 1,
			Pods: []v1alpha1.PodConnections{{Namespace: ns.Name, Name: "old", Policies: []v1alpha1.PolicyConnections{{
				Policy: ref("api"), TimeSeconds: 175, ConnectionCounts: v1alpha1.ConnectionCounts{Armed: 1, NotArmed: 2}}}}}}}
		Expect(k8sClient.Create(ctx, report)).To(Succeed())
		DeferCleanup(func(ctx context.Context) { Expect(k8sClient.Delete(ctx, report)).To(Succeed()) })

		By("an admission review the webhook cannot read; a pod the API server admits without the webhook, and one it refuses")
		hookNamespaces := map[admissionregistrationv1.FailurePolicyType]string{}
		for _, policy := range []admissionregistrationv1.FailurePolicyType{admissionregistrationv1.Ignore, admissionregistrationv1.Fail} {
			hookNS := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "alerts-hook-", Labels: map[string]string{"alerts-hook": string(policy)}}}
			Expect(k8sClient.Create(ctx, hookNS)).To(Succeed())
			hookNamespaces[policy] = hookNS.Name
			hook := hookTo("alerts-"+strings.ToLower(string(policy)), "alerts-hook", string(policy), policy)
			Expect(k8sClient.Create(ctx, hook)).To(Succeed())
			DeferCleanup(func(ctx context.Context) { Expect(k8sClient.Delete(ctx, hook)).To(Succeed()) })
		}
		reviewer := newReviewer(net.JoinHostPort("127.0.0.1", strconv.Itoa(env.WebhookInstallOptions.LocalServingPort)), false)
		failures := func() {
			resp, err := reviewer.client.Post(reviewer.url, "application/json", strings.NewReader(`{"apiVersion":`))
			Expect(err).NotTo(HaveOccurred())
			Expect(resp.Body.Close()).To(Succeed())
			for policy, hookNS := range hookNamespaces {
				pod := testobj.MakePod(hookNS, "").Obj()
				pod.GenerateName = "app-"
				err := k8sClient.Create(ctx, pod)
				if policy == admissionregistrationv1.Fail {
					Expect(err).To(MatchError(ContainSubstring("failed calling webhook")))
				} else {
					Expect(err).NotTo(HaveOccurred())
				}
			}
		}
		failures()

		By("the policies' status in each state")
		status := func(g Gomega, name string) v1alpha1.KeepalivePolicyStatus {
			p := &v1alpha1.KeepalivePolicy{}
			g.Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: ns.Name, Name: name}, p)).To(Succeed())
			return p.Status
		}
		Eventually(func(g Gomega) {
			api := status(g, "api")
			g.Expect(api.Conditions).To(ContainElement(And(HaveField("Type", "Ready"), HaveField("Reason", "WorkloadsFailed"))))
			g.Expect(api.Conditions).To(ContainElement(And(HaveField("Type", "PodsBlocked"), HaveField("Status", metav1.ConditionTrue))))
			g.Expect(api.Conditions).To(ContainElement(And(HaveField("Type", "KeepaliveNotEnabled"), HaveField("Status", metav1.ConditionTrue))))
			g.Expect(status(g, "web").Conditions).To(ContainElement(And(HaveField("Type", "Ready"), HaveField("Reason", "RolloutInProgress"))))
			g.Expect(status(g, "trial").Conditions).To(ContainElement(And(HaveField("Type", "Ready"), HaveField("Reason", "AuditOnly"))))
		}, 30*time.Second).Should(Succeed())
		var after scrape
		var all map[string]*dto.MetricFamily
		Eventually(func(g Gomega) {
			after, all = take()
			for _, name := range []string{"api", "web", "trial"} {
				g.Expect(after.ofPolicy(ref(name))).To(ContainElement(HavePrefix("keepalive_policy_ready{")), "the ready series of %s", name)
			}
		}, 20*time.Second).Should(Succeed())
		GinkgoWriter.Println("after the events:", after)
		By("the same failures again")
		failures()
		again, _ := take()

		By("promtool evaluating the rules over the scrapes")
		descriptions := alertDescriptions()
		// An alert as the rules would send it: its labels and summary as the
		// on-call engineer reads them, its fixed description.
		alert := func(name string, labels map[string]string, summary string) expAlert {
			return expAlert{Labels: labels, Annotations: map[string]string{"summary": summary, "description": descriptions[name]}}
		}
		api, web := ref("api"), ref("web")
		counters := map[string][]expAlert{
			"KeepaliveWebhookErrors": {alert("KeepaliveWebhookErrors", map[string]string{"reason": "decode", "severity": "warning"},
				`The keepalive webhook failed admissions at step "decode" in the last 10 minutes.`)},
			"KeepaliveWebhookCallsFailing": {alert("KeepaliveWebhookCallsFailing", map[string]string{"error_type": "calling_webhook_error", "severity": "critical"},
				"The API server refused pods because it could not call the keepalive webhook (calling_webhook_error).")},
			"KeepaliveAdmissionsFailOpen": {alert("KeepaliveAdmissionsFailOpen", map[string]string{"severity": "warning"},
				"The API server admitted pods without calling the keepalive webhook in the last 10 minutes.")},
		}
		states := map[string][]expAlert{
			"KeepalivePolicyNotReady": {alert("KeepalivePolicyNotReady", map[string]string{"policy": api, "reason": "WorkloadsFailed", "severity": "warning"},
				api+" is not Ready: WorkloadsFailed.")},
			"KeepalivePodsBlocked": {alert("KeepalivePodsBlocked", map[string]string{"policy": api, "cause": "host-network", "severity": "warning"},
				"1 pods of "+api+" cannot take the keepalive sysctls (host-network).")},
			"KeepaliveConnectionsWithoutKeepalive": {alert("KeepaliveConnectionsWithoutKeepalive", map[string]string{"policy": api, "severity": "info"},
				"2 connections of pods under "+api+" have no keepalive within its time.")},
		}
		// Not trial's pod: Audit mode changes nothing, by design; nor web's
		// while it rolls out, which KeepaliveRolloutStuck watches.
		stale := map[string][]expAlert{"KeepalivePodsStale": {
			alert("KeepalivePodsStale", map[string]string{"policy": api, "severity": "warning"},
				"1 running pods of "+api+" have lacked its values for more than an hour."),
		}}
		stuck := map[string][]expAlert{"KeepaliveRolloutStuck": {alert("KeepaliveRolloutStuck", map[string]string{"policy": web, "severity": "warning"},
			web+" has been rolling out its values for more than 3 hours.")}}
		merged := func(ms ...map[string][]expAlert) map[string][]expAlert {
			out := map[string][]expAlert{}
			for _, m := range ms {
				maps.Copy(out, m)
			}
			return out
		}
		names := slices.Sorted(maps.Keys(descriptions))
		Expect(names).To(ConsistOf(slices.Collect(maps.Keys(merged(counters, states, stale, stuck)))), "every alert of the file is tested")
		var tests []alertTest
		tests = append(tests, alertsAt(eventMinute-1, nil, names...)...)                    // nothing before the events
		tests = append(tests, alertsAt(eventMinute+5, counters, names...)...)               // the counters at once, the states pending
		tests = append(tests, alertsAt(eventMinute+20, states, names...)...)                // the states after 15 minutes
		tests = append(tests, alertsAt(eventMinute+65, merged(states, stale), names...)...) // stale pods after an hour
		tests = append(tests, alertsAt(eventMinute+185, merged(states, stale, stuck), names...)...)
		// The API server's counters as they look the first time anything
		// fails: their series appear with the event.
		firstTime := scrape{}
		for k, v := range before {
			if !strings.HasPrefix(k, "apiserver_") {
				firstTime[k] = v
			}
		}
		rulesPath, err := filepath.Abs(rulesFile)
		Expect(err).NotTo(HaveOccurred())
		file := ruleTests{
			RuleFiles:          []string{rulesPath},
			EvaluationInterval: "1m",
			Tests: []ruleGroup{
				{Name: "scraped", Interval: "1m", InputSeries: timeline(before, after), AlertTests: tests},
				{Name: "first failures", Interval: "1m", InputSeries: timeline(firstTime, after), AlertTests: alertsAt(eventMinute+5, counters,
					"KeepaliveWebhookCallsFailing", "KeepaliveAdmissionsFailOpen")},
				// And the next time: their series rise.
				{Name: "failures again", Interval: "1m", InputSeries: timeline(after, again), AlertTests: alertsAt(eventMinute+5, merged(counters, states), names...)},
				// Nothing new, but a scrape missed at minute 20: no series is
				// new ten minutes later.
				{Name: "a missed scrape", Interval: "1m", InputSeries: missedScrape(after, 20), AlertTests: slices.Concat(
					alertsAt(30, nil, slices.Collect(maps.Keys(counters))...), alertsAt(31, nil, slices.Collect(maps.Keys(counters))...))},
			},
		}
		raw, err := sigsyaml.Marshal(file)
		Expect(err).NotTo(HaveOccurred())
		testFile := filepath.Join(GinkgoT().TempDir(), "alerts_test.yaml")
		Expect(os.WriteFile(testFile, raw, 0o644)).To(Succeed())
		GinkgoWriter.Printf("%s\n", raw)
		promtool("check", "rules", rulesFile)
		promtool("test", "rules", testFile)

		By("the dashboard's queries, valid PromQL over series the operator and the API server export")
		checkDashboard(all)

		By("a deleted policy exports no series")
		Expect(k8sClient.Delete(ctx, policies[0])).To(Succeed())
		Eventually(func() []string { s, _ := take(); return s.ofPolicy(api) }, 20*time.Second).Should(BeEmpty())
	})
})

// alertDescriptions are the descriptions of the chart's alerts by name, the
// annotation that takes no values.
func alertDescriptions() map[string]string {
	raw, err := os.ReadFile(rulesFile)
	ExpectWithOffset(1, err).NotTo(HaveOccurred())
	var file struct {
		Groups []struct {
			Rules []struct {
				Alert       string            `json:"alert"`
				Annotations map[string]string `json:"annotations"`
			} `json:"rules"`
		} `json:"groups"`
	}
	ExpectWithOffset(1, sigsyaml.Unmarshal(raw, &file)).To(Succeed())
	out := map[string]string{}
	for _, g := range file.Groups {
		for _, r := range g.Rules {
			out[r.Alert] = r.Annotations["description"]
		}
	}
	return out
}

// metricName finds the metric names in a PromQL expression.
var metricName = regexp.MustCompile(`\b(keepalive|apiserver)_[a-z_]+\b`)

// checkDashboard checks that every query of the dashboard parses, as
// promtool checks a recording rule, and reads only metrics that fams has.
func checkDashboard(fams map[string]*dto.MetricFamily) {
	raw, err := os.ReadFile(dashboardFile)
	Expect(err).NotTo(HaveOccurred())
	var dashboard struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	Expect(json.Unmarshal(raw, &dashboard)).To(Succeed())
	// Grafana's variables, as Grafana replaces them.
	vars := strings.NewReplacer("$__rate_interval", "5m", "$policy", ".*")
	type rule struct {
		Record string `json:"record"`
		Expr   string `json:"expr"`
	}
	var recording []rule
	for _, p := range dashboard.Panels {
		for _, t := range p.Targets {
			expr := vars.Replace(t.Expr)
			recording = append(recording, rule{Record: fmt.Sprintf("dashboard:query_%d", len(recording)), Expr: expr})
			for _, name := range metricName.FindAllString(expr, -1) {
				base := strings.TrimSuffix(name, "_bucket")
				Expect(fams).To(HaveKey(base), "panel %q reads %s", p.Title, name)
			}
		}
	}
	Expect(len(recording)).To(BeNumerically(">=", 10))
	out, err := sigsyaml.Marshal(map[string]any{"groups": []any{map[string]any{"name": "dashboard", "rules": recording}}})
	Expect(err).NotTo(HaveOccurred())
	file := filepath.Join(GinkgoT().TempDir(), "dashboard-queries.yaml")
	Expect(os.WriteFile(file, out, 0o644)).To(Succeed())
	promtool("check", "rules", file)
}
