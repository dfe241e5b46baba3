package install

import (
	"fmt"
	"maps"
	"net/http"
	"os/exec"
	"path/filepath"
	"slices"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"github.com/onsi/gomega/gbytes"
	"github.com/onsi/gomega/gexec"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/keepalive-operator/keepalive-operator/api/v1alpha1"
	"github.com/keepalive-operator/keepalive-operator/internal/testenv"
	"github.com/keepalive-operator/keepalive-operator/internal/testobj"
)

// nodeNameExtra is the extra of a ServiceAccount token bound to a pod that
// names the pod's node.
const nodeNameExtra = "authentication.kubernetes.io/node-name"

// auditAgent is the chart's audit agent, released as "au" into
// keepalive-system with the agent in a namespace of its own: its objects
// are those of templates/audit.yaml.
var auditAgent = install{
	title: "the audit agent", ns: "keepalive-audit", serviceAccount: "au-keepalive-operator-audit",
	objects: func() []*unstructured.Unstructured {
		return values(renderAs("au", "keepalive-system", "--show-only", "templates/audit.yaml",
			"--set", "audit.enabled=true", "--set", "audit.namespace=keepalive-audit"))
	},
}

// agentRow is a request the agent's ServiceAccount might make, and whether
// it may.
type agentRow struct {
	row
	allowed bool
}

// agentRows are the requests that matter for the agent.
var agentRows = map[string]agentRow{
	// What it reads: its node's pods, the namespaces' labels, the policies.
	"get a pod":                         {row{verb: "get", resource: "pods", namespace: "shop", name: "api-0"}, true},
	"list pods":                         {row{verb: "list", resource: "pods"}, true},
	"watch pods":                        {row{verb: "watch", resource: "pods"}, true},
	"get a namespace":                   {row{verb: "get", resource: "namespaces", name: "shop"}, true},
	"list namespaces":                   {row{verb: "list", resource: "namespaces"}, true},
	"watch namespaces":                  {row{verb: "watch", resource: "namespaces"}, true},
	"get a KeepalivePolicy":             {row{verb: "get", group: "keepalive.io", resource: "keepalivepolicies", namespace: "shop", name: "nlb"}, true},
	"list KeepalivePolicies":            {row{verb: "list", group: "keepalive.io", resource: "keepalivepolicies"}, true},
	"watch KeepalivePolicies":           {row{verb: "watch", group: "keepalive.io", resource: "keepalivepolicies"}, true},
	"get a ClusterKeepalivePolicy":      {row{verb: "get", group: "keepalive.io", resource: "clusterkeepalivepolicies", name: "default"}, true},
	"list ClusterKeepalivePolicies":     {row{verb: "list", group: "keepalive.io", resource: "clusterkeepalivepolicies"}, true},
	"watch ClusterKeepalivePolicies":    {row{verb: "watch", group: "keepalive.io", resource: "clusterkeepalivepolicies"}, true},
	"get its node's report":             {row{verb: "get", group: "keepalive.io", resource: "keepalivenodereports", name: "node-a"}, true},
	"create a report":                   {row{verb: "create", group: "keepalive.io", resource: "keepalivenodereports"}, true},
	"update its node's report":          {row{verb: "update", group: "keepalive.io", resource: "keepalivenodereports", name: "node-a"}, true},
	"patch its node's report (updates)": {row{verb: "patch", group: "keepalive.io", resource: "keepalivenodereports", name: "node-a"}, false},
	"delete its node's report":          {row{verb: "delete", group: "keepalive.io", resource: "keepalivenodereports", name: "node-a"}, false},
	"delete every report":               {row{verb: "deletecollection", group: "keepalive.io", resource: "keepalivenodereports"}, false},
	"list the reports":                  {row{verb: "list", group: "keepalive.io", resource: "keepalivenodereports"}, false},
	"watch the reports":                 {row{verb: "watch", group: "keepalive.io", resource: "keepalivenodereports"}, false},
	// Pods: read, never written.
	"create a pod":          {row{verb: "create", resource: "pods", namespace: "shop"}, false},
	"update a pod":          {row{verb: "update", resource: "pods", namespace: "shop", name: "api-0"}, false},
	"patch a pod":           {row{verb: "patch", resource: "pods", namespace: "shop", name: "api-0"}, false},
	"delete a pod":          {row{verb: "delete", resource: "pods", namespace: "shop", name: "api-0"}, false},
	"exec into a pod":       {row{verb: "create", resource: "pods", subresource: "exec", namespace: "shop", name: "api-0"}, false},
	"evict a pod":           {row{verb: "create", resource: "pods", subresource: "eviction", namespace: "shop", name: "api-0"}, false},
	"update a pod's status": {row{verb: "update", resource: "pods", subresource: "status", namespace: "shop", name: "api-0"}, false},
	// Its Node: read, to own its report.
	"get its Node":          {row{verb: "get", resource: "nodes", name: "node-a"}, true},
	"list nodes":            {row{verb: "list", resource: "nodes"}, false},
	"update a Node":         {row{verb: "update", resource: "nodes", name: "node-a"}, false},
	"patch a Node's status": {row{verb: "patch", resource: "nodes", subresource: "status", name: "node-a"}, false},
	// No Secret anywhere.
	"get a Secret":                        {row{verb: "get", resource: "secrets", namespace: "shop", name: "db-password"}, false},
	"list the Secrets of its namespace":   {row{verb: "list", resource: "secrets", namespace: own}, false},
	"list the Secrets of every namespace": {row{verb: "list", resource: "secrets"}, false},
	// Policies: read, neither written nor their status.
	"create a KeepalivePolicy":                 {row{verb: "create", group: "keepalive.io", resource: "keepalivepolicies", namespace: "shop"}, false},
	"update a KeepalivePolicy":                 {row{verb: "update", group: "keepalive.io", resource: "keepalivepolicies", namespace: "shop", name: "nlb"}, false},
	"patch a KeepalivePolicy":                  {row{verb: "patch", group: "keepalive.io", resource: "keepalivepolicies", namespace: "shop", name: "nlb"}, false},
	"delete a KeepalivePolicy":                 {row{verb: "delete", group: "keepalive.io", resource: "keepalivepolicies", namespace: "shop", name: "nlb"}, false},
	"update a ClusterKeepalivePolicy":          {row{verb: "update", group: "keepalive.io", resource: "clusterkeepalivepolicies", name: "default"}, false},
	"delete a ClusterKeepalivePolicy":          {row{verb: "delete", group: "keepalive.io", resource: "clusterkeepalivepolicies", name: "default"}, false},
	"update a KeepalivePolicy's status":        {row{verb: "update", group: "keepalive.io", resource: "keepalivepolicies", subresource: "status", namespace: "shop", name: "nlb"}, false},
	"patch a KeepalivePolicy's status":         {row{verb: "patch", group: "keepalive.io", resource: "keepalivepolicies", subresource: "status", namespace: "shop", name: "nlb"}, false},
	"get a KeepalivePolicy's status":           {row{verb: "get", group: "keepalive.io", resource: "keepalivepolicies", subresource: "status", namespace: "shop", name: "nlb"}, false},
	"update a ClusterKeepalivePolicy's status": {row{verb: "update", group: "keepalive.io", resource: "clusterkeepalivepolicies", subresource: "status", name: "default"}, false},
	// No way around the rules, nor around the policy that keeps it to its node.
	"delete its ValidatingAdmissionPolicy":        {row{verb: "delete", group: "admissionregistration.k8s.io", resource: "validatingadmissionpolicies", name: "au-keepalive-operator-audit-own-node"}, false},
	"update its ValidatingAdmissionPolicyBinding": {row{verb: "update", group: "admissionregistration.k8s.io", resource: "validatingadmissionpolicybindings", name: "au-keepalive-operator-audit-own-node"}, false},
	"create a RoleBinding":                        {row{verb: "create", group: "rbac.authorization.k8s.io", resource: "rolebindings", namespace: "shop"}, false},
	"impersonate a user":                          {row{verb: "impersonate", resource: "users", name: "admin"}, false},
	"impersonate another node's extra":            {row{verb: "impersonate", group: "authentication.k8s.io", resource: "userextras", subresource: nodeNameExtra, name: "node-b"}, false},
	"create a ServiceAccount token":               {row{verb: "create", resource: "serviceaccounts", subresource: "token", namespace: own, name: "default"}, false},
	"create events":                               {row{verb: "create", resource: "events", namespace: own}, false},
}

// asAgent is a client of the agent's ServiceAccount, impersonated, with the
// extras a token bound to one of its pods would carry.
func asAgent(extra map[string][]string) client.Client {
	cfg := rest.CopyConfig(env.Config)
	cfg.Impersonate = rest.ImpersonationConfig{
		UserName: auditAgent.user(),
		Groups:   []string{"system:serviceaccounts", "system:serviceaccounts:" + auditAgent.ns, "system:authenticated"},
		Extra:    extra,
	}
	c, err := client.New(cfg, client.Options{Scheme: env.Scheme})
	Expect(err).NotTo(HaveOccurred())
	return c
}

func onNode(node string) map[string][]string { return map[string][]string{nodeNameExtra: {node}} }

// nodeReport is a report of node as an agent auditing every minute writes
// it.
func nodeReport(node string) *v1alpha1.KeepaliveNodeReport {
	return &v1alpha1.KeepaliveNodeReport{
		ObjectMeta: metav1.ObjectMeta{Name: node},
		Status:     v1alpha1.KeepaliveNodeReportStatus{AuditTime: metav1.Now(), ValidSeconds: 720, IntervalSeconds: 60},
	}
}

// ownNodeOnly is the start of the policy's message when it refuses a write.
const ownNodeOnly = "the audit agent may write only the KeepaliveNodeReport of its own node"

func deleteReports(names ...string) {
	for _, n := range names {
		Expect(client.IgnoreNotFound(env.Client.Delete(ctx, &v1alpha1.KeepaliveNodeReport{ObjectMeta: metav1.ObjectMeta{Name: n}}))).To(Succeed())
	}
}

var _ = Describe("the chart's audit agent", func() {
	It("passes helm lint with the agent enabled", func() {
		out, stderr, err := helm("lint", "--strict", chart, "--set", "audit.enabled=true")
		Expect(err).NotTo(HaveOccurred(), out+stderr)
		Expect(out).To(ContainSubstring("1 chart(s) linted, 0 chart(s) failed"))
	})

	It("renders nothing of the agent by default", func() {
		for key := range render() {
			Expect(key).NotTo(ContainSubstring("-audit"))
		}
	})

	It("renders the DaemonSet in the host's PID namespace, otherwise unprivileged", func() {
		objs := render("--set", "audit.enabled=true")
		ds := &appsv1.DaemonSet{}
		Expect(runtimeConvert(objs["DaemonSet/t-keepalive-operator-audit"], ds)).To(Succeed())
		Expect(ds.Namespace).To(Equal("keepalive-system"))
		pod := ds.Spec.Template.Spec
		Expect(pod.ServiceAccountName).To(Equal("t-keepalive-operator-audit"))
		Expect(pod.HostPID).To(BeTrue())
		Expect(pod.HostNetwork).To(BeFalse())
		Expect(pod.HostIPC).To(BeFalse())
		Expect(pod.Volumes).To(BeEmpty(), "no hostPath: the host's /proc is the agent's own under hostPID")
		Expect(pod.SecurityContext.RunAsNonRoot).To(HaveValue(BeTrue()))
		Expect(pod.SecurityContext.RunAsUser).To(HaveValue(BeNumerically(">", 0)))
		Expect(pod.Containers).To(HaveLen(1))
		c := pod.Containers[0]
		Expect(c.Args).To(ContainElements("audit", "--interval=60s"))
		sc := c.SecurityContext
		Expect(sc).NotTo(BeNil())
		Expect(sc.RunAsNonRoot).To(HaveValue(BeTrue()))
		Expect(sc.Privileged).To(Or(BeNil(), HaveValue(BeFalse())))
		Expect(sc.AllowPrivilegeEscalation).To(HaveValue(BeFalse()))
		Expect(sc.ReadOnlyRootFilesystem).To(HaveValue(BeTrue()))
		Expect(sc.Capabilities).NotTo(BeNil())
		Expect(sc.Capabilities.Drop).To(ConsistOf(corev1.Capability("ALL")))
		Expect(sc.Capabilities.Add).To(BeEmpty())
		Expect(c.Env).To(ContainElement(corev1.EnvVar{Name: "NODE_NAME", ValueFrom: &corev1.EnvVarSource{
			FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.nodeName"},
		}}))
		Expect(ds.Spec.Template.Labels).To(HaveKeyWithValue("keepalive.io/inject", "disabled"))
	})

	It("puts the agent in audit.namespace, and the policy names the ServiceAccount there", func() {
		objs := render("--set", "audit.enabled=true", "--set", "audit.namespace=other")
		const name = "t-keepalive-operator-audit"
		Expect(objs["ServiceAccount/"+name].GetNamespace()).To(Equal("other"))
		Expect(objs["DaemonSet/"+name].GetNamespace()).To(Equal("other"))
		// The operator stays in the release's namespace.
		Expect(objs["Deployment/t-keepalive-operator"].GetNamespace()).To(Equal("keepalive-system"))
		crb := &rbacv1.ClusterRoleBinding{}
		Expect(runtimeConvert(objs["ClusterRoleBinding/"+name], crb)).To(Succeed())
		Expect(crb.RoleRef).To(Equal(rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: name}))
		Expect(crb.Subjects).To(ConsistOf(rbacv1.Subject{Kind: "ServiceAccount", Name: name, Namespace: "other"}))
		vap := &admissionregistrationv1.ValidatingAdmissionPolicy{}
		Expect(runtimeConvert(objs["ValidatingAdmissionPolicy/"+name+"-own-node"], vap)).To(Succeed())
		Expect(vap.Spec.MatchConditions).To(ConsistOf(HaveField("Expression",
			"request.userInfo.username == 'system:serviceaccount:other:"+name+"'")))
		binding := &admissionregistrationv1.ValidatingAdmissionPolicyBinding{}
		Expect(runtimeConvert(objs["ValidatingAdmissionPolicyBinding/"+name+"-own-node"], binding)).To(Succeed())
		Expect(binding.Spec.PolicyName).To(Equal(vap.Name))
		Expect(binding.Spec.ValidationActions).To(ConsistOf(admissionregistrationv1.Deny))
	})
})

var _ = Describe("the audit agent's install in a real API server", Ordered, func() {
	BeforeAll(func() {
		// The agent needs hostPID: its namespace is privileged.
		err := env.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: auditAgent.ns, Labels: map[string]string{
			"pod-security.kubernetes.io/enforce": "privileged",
		}}})
		Expect(client.IgnoreAlreadyExists(err)).To(Succeed())
		// The chart's CRDs, unless another spec installed them, then every
		// object of the agent.
		var objs []*unstructured.Unstructured
		for _, u := range render("--include-crds") {
			if u.GetKind() == "CustomResourceDefinition" {
				objs = append(objs, u)
			}
		}
		var kinds []string
		for _, u := range auditAgent.objects() {
			objs = append(objs, u)
			kinds = append(kinds, u.GetKind())
		}
		Expect(kinds).To(ConsistOf("ServiceAccount", "ClusterRole", "ClusterRoleBinding",
			"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding", "DaemonSet"))
		for _, u := range objs {
			err := env.Client.Create(ctx, u)
			Expect(err == nil || apierrors.IsAlreadyExists(err)).To(BeTrue(), "%s %s: %v", u.GetKind(), u.GetName(), err)
		}
		Eventually(func() error {
			crd := &apiextensionsv1.CustomResourceDefinition{}
			if err := env.Client.Get(ctx, client.ObjectKey{Name: "keepalivenodereports.keepalive.io"}, crd); err != nil {
				return err
			}
			for _, c := range crd.Status.Conditions {
				if c.Type == apiextensionsv1.Established && c.Status == apiextensionsv1.ConditionTrue {
					return env.Client.List(ctx, &v1alpha1.KeepaliveNodeReportList{})
				}
			}
			return fmt.Errorf("not established")
		}, 30*time.Second).Should(Succeed())

		By("waiting until the API server enforces the policy: a dry run of another node's report refused")
		agent := asAgent(onNode("node-a"))
		Eventually(func() error {
			return agent.Create(ctx, nodeReport("node-b"), client.DryRunAll)
		}, 30*time.Second).Should(MatchError(ContainSubstring(ownNodeOnly)))
	})

	Describe("the agent's ServiceAccount may do what it needs, nothing more", func() {
		var entries []TableEntry
		for _, what := range slices.Sorted(maps.Keys(agentRows)) {
			entries = append(entries, Entry(what, agentRows[what]))
		}
		DescribeTable("as the API server's authorizer answers",
			func(r agentRow) {
				Expect(allowed(auditAgent, r.row)).To(Equal(r.allowed), "%s %s/%s %q in %q", r.verb, r.resource, r.subresource, r.name, r.namespace)
			}, entries)
	})

	It("keeps the agent to its own node's report, and no one else", func() {
		DeferCleanup(deleteReports, "node-a", "node-b", "node-c")
		agent := asAgent(onNode("node-a"))

		By("creating and updating its own node's report")
		own := nodeReport("node-a")
		Expect(agent.Create(ctx, own)).To(Succeed())
		got := &v1alpha1.KeepaliveNodeReport{}
		Expect(agent.Get(ctx, client.ObjectKey{Name: "node-a"}, got)).To(Succeed())
		got.Status.Total.NotArmed = 3
		Expect(agent.Update(ctx, got)).To(Succeed())
		Expect(env.Client.Get(ctx, client.ObjectKey{Name: "node-a"}, got)).To(Succeed())
		Expect(got.Status.Total.NotArmed).To(Equal(int32(3)))

		By("refusing another node's report, the message naming both")
		err := agent.Create(ctx, nodeReport("node-b"))
		Expect(apierrors.IsForbidden(err)).To(BeTrue(), "%v", err)
		Expect(err).To(MatchError(ContainSubstring(ownNodeOnly + " (node-a), not node-b")))
		Expect(apierrors.IsNotFound(env.Client.Get(ctx, client.ObjectKey{Name: "node-b"}, got))).To(BeTrue())

		By("leaving the administrator alone: it creates and updates node-b's report")
		other := nodeReport("node-b")
		Expect(env.Client.Create(ctx, other)).To(Succeed())
		other.Status.Total.Armed = 1
		Expect(env.Client.Update(ctx, other)).To(Succeed())

		By("refusing the agent an update of another node's report")
		Expect(agent.Get(ctx, client.ObjectKey{Name: "node-b"}, other)).To(Succeed())
		other.Status.Total.Armed = 2
		err = agent.Update(ctx, other)
		Expect(apierrors.IsForbidden(err)).To(BeTrue(), "%v", err)
		Expect(err).To(MatchError(ContainSubstring(ownNodeOnly + " (node-a), not node-b")))

		By("refusing a token that names no node, even for node-a's report")
		anonymous := asAgent(nil)
		err = anonymous.Create(ctx, nodeReport("node-c"))
		Expect(apierrors.IsForbidden(err)).To(BeTrue(), "%v", err)
		Expect(err).To(MatchError(ContainSubstring(ownNodeOnly + " (its token names no node), not node-c")))
		Expect(anonymous.Get(ctx, client.ObjectKey{Name: "node-a"}, got)).To(Succeed())
		got.Status.Total.NotArmed = 4
		err = anonymous.Update(ctx, got)
		Expect(apierrors.IsForbidden(err)).To(BeTrue(), "%v", err)
		Expect(err).To(MatchError(ContainSubstring(ownNodeOnly + " (its token names no node), not node-a")))

		By("refusing a real token of the ServiceAccount bound to no pod")
		_, token := serviceAccountKubeconfig(auditAgent)
		unbound, err := client.New(&rest.Config{Host: env.Config.Host, BearerToken: token,
			TLSClientConfig: rest.TLSClientConfig{CAData: env.Config.CAData}}, client.Options{Scheme: env.Scheme})
		Expect(err).NotTo(HaveOccurred())
		err = unbound.Create(ctx, nodeReport("node-c"))
		Expect(apierrors.IsForbidden(err)).To(BeTrue(), "%v", err)
		Expect(err).To(MatchError(ContainSubstring(ownNodeOnly + " (its token names no node), not node-c")))

		By("refusing a token that names two nodes")
		err = asAgent(map[string][]string{nodeNameExtra: {"node-a", "node-b"}}).Update(ctx, got)
		Expect(err).To(MatchError(ContainSubstring(ownNodeOnly + " (node-a,node-b), not node-a")))
	})

	It("runs the agent's binary with a token bound to its pod on node-a: it writes node-a's report, and only that", func() {
		deleteReports("node-a", "node-b")
		DeferCleanup(deleteReports, "node-a", "node-b")
		binary := filepath.Join(GinkgoT().TempDir(), "keepalive-operator")
		build := exec.Command("go", "build", "-o", binary, "./cmd/keepalive-operator")
		build.Dir = testenv.Root()
		out, err := build.CombinedOutput()
		Expect(err).NotTo(HaveOccurred(), string(out))

		By("binding a token to a pod of the agent on node-a, as the kubelet would")
		nodes := map[string]*corev1.Node{}
		for _, name := range []string{"node-a", "node-b"} {
			nodes[name] = &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}
			Expect(env.Client.Create(ctx, nodes[name])).To(Succeed())
			DeferCleanup(env.Client.Delete, ctx, nodes[name])
		}
		pod := testobj.MakePod(auditAgent.ns, "audit-node-a").Node("node-a").
			Labels(map[string]string{"keepalive.io/inject": "disabled", "app": "audited"}).Obj()
		pod.Spec.ServiceAccountName = auditAgent.serviceAccount
		Expect(env.Client.Create(ctx, pod)).To(Succeed())
		DeferCleanup(func() { Expect(client.IgnoreNotFound(env.Client.Delete(ctx, pod))).To(Succeed()) })
		sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: auditAgent.ns, Name: auditAgent.serviceAccount}}
		req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
			ExpirationSeconds: new(int64(3600)),
			BoundObjectRef:    &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
		}}
		Expect(env.Client.SubResource("token").Create(ctx, sa, req)).To(Succeed())
		review := &authenticationv1.TokenReview{Spec: authenticationv1.TokenReviewSpec{Token: req.Status.Token}}
		Expect(env.Client.Create(ctx, review)).To(Succeed())
		Expect(review.Status.Authenticated).To(BeTrue(), review.Status.Error)
		Expect(review.Status.User.Username).To(Equal(auditAgent.user()))
		Expect(review.Status.User.Extra).To(HaveKeyWithValue(nodeNameExtra, authenticationv1.ExtraValue{"node-a"}),
			"the API server names the pod's node in a token bound to it")
		kubeconfig := tokenKubeconfig(req.Status.Token)

		start := func(node string) (*gexec.Session, string) {
			probes := freeAddr()
			cmd := exec.Command(binary, "audit", "--kubeconfig", kubeconfig, "--node-name", node, "--interval", "1s",
				"--health-probe-bind-address", probes, "--proc", GinkgoT().TempDir())
			session, err := gexec.Start(cmd, GinkgoWriter, GinkgoWriter)
			Expect(err).NotTo(HaveOccurred())
			DeferCleanup(func() { Eventually(session.Terminate(), 30*time.Second).Should(gexec.Exit(0)) })
			return session, probes
		}

		By("writing node-a's report, with no pod under an empty /proc")
		session, probes := start("node-a")
		report := &v1alpha1.KeepaliveNodeReport{}
		Eventually(func() error {
			return env.Client.Get(ctx, client.ObjectKey{Name: "node-a"}, report)
		}, 20*time.Second).Should(Succeed())
		Expect(report.Status.IntervalSeconds).To(Equal(int32(1)))
		Expect(report.OwnerReferences).To(ConsistOf(metav1.OwnerReference{APIVersion: "v1", Kind: "Node", Name: "node-a", UID: nodes["node-a"].UID}))
		Expect(report.Status.ValidSeconds).To(Equal(int32(12)))
		Expect(report.Status.Pods).To(BeEmpty())
		Eventually(func() int {
			resp, err := http.Get("http://" + probes + "/healthz")
			if err != nil {
				return 0
			}
			resp.Body.Close()
			return resp.StatusCode
		}, 10*time.Second).Should(Equal(http.StatusOK))

		By("updating it when a policy selects its running pod, whose process it does not find")
		Expect(env.Client.Create(ctx, testobj.Spec().Preset(v1alpha1.PresetAWSNLB).
			PodLabels(map[string]string{"app": "audited"}).Policy(auditAgent.ns, "audited"))).To(Succeed())
		pod.Status.Phase = corev1.PodRunning
		Expect(env.Client.Status().Update(ctx, pod)).To(Succeed())
		Eventually(func() []v1alpha1.PodConnections {
			_ = env.Client.Get(ctx, client.ObjectKey{Name: "node-a"}, report)
			return report.Status.Pods
		}, 20*time.Second).Should(ConsistOf(And(
			HaveField("Namespace", auditAgent.ns), HaveField("Name", pod.Name),
			HaveField("Error", ContainSubstring("no process of the pod found")))))
		Expect(report.Status.PodCount).To(Equal(int32(1)))

		By("never being refused a request")
		Consistently(session.Err.Contents, 3*time.Second).ShouldNot(ContainSubstring("forbidden"))

		By("being refused another node's report with the same token")
		wrong, _ := start("node-b")
		Eventually(wrong.Err, 20*time.Second).Should(gbytes.Say(ownNodeOnly + ` \(node-a\), not node-b`))
		Expect(apierrors.IsNotFound(env.Client.Get(ctx, client.ObjectKey{Name: "node-b"}, &v1alpha1.KeepaliveNodeReport{}))).To(BeTrue())
	})
})
