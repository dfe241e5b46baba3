package install

import (
	"maps"
	"slices"
	"strings"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	authorizationv1 "k8s.io/api/authorization/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
)

// install is one way to install the operator, as far as its identity goes.
type install struct {
	title string
	// ns, serviceAccount: the operator's namespace and ServiceAccount.
	ns, serviceAccount string
	// webhookConfig, secret: the objects certificate rotation works with.
	webhookConfig, secret string
	// rotation: the operator rotates its certificate (no cert-manager).
	rotation bool
	// objects renders what it installs.
	objects func() []*unstructured.Unstructured
}

func (i install) user() string {
	return "system:serviceaccount:" + i.ns + ":" + i.serviceAccount
}

// chartInstall is the chart installed as release into ns with values args.
func chartInstall(title, release, ns string, rotation bool, args ...string) install {
	full := release + "-keepalive-operator"
	return install{
		title: title, ns: ns, serviceAccount: full, webhookConfig: full, secret: full + "-webhook-tls", rotation: rotation,
		objects: func() []*unstructured.Unstructured {
			return values(renderAs(release, ns, append([]string{"--include-crds"}, args...)...))
		},
	}
}

var (
	chartRotation    = chartInstall("the chart, the operator rotating its certificate", "rot", "rbac-rotation", true)
	chartCertManager = chartInstall("the chart with cert-manager", "cm", "rbac-cert-manager", false, "--set", "certManager.enabled=true")
	configDefault    = install{
		title: "config/default", ns: "keepalive-system", serviceAccount: "keepalive-operator-controller-manager",
		webhookConfig: "keepalive-operator-webhook-configuration", secret: "keepalive-operator-webhook-tls", rotation: true,
		objects: func() []*unstructured.Unstructured {
			rendered, stderr, err := env.Kubectl("", "kustomize", "../../config/default")
			Expect(err).NotTo(HaveOccurred(), stderr)
			return decode(rendered)
		},
	}
)

// renderAs returns the objects of `helm template` for release in ns, by
// kind/name.
func renderAs(release, ns string, args ...string) map[string]*unstructured.Unstructured {
	out, stderr, err := helm(append([]string{"template", release, chart, "--namespace", ns}, args...)...)
	Expect(err).NotTo(HaveOccurred(), stderr)
	objs := map[string]*unstructured.Unstructured{}
	for _, u := range decode(out) {
		objs[u.GetKind()+"/"+u.GetName()] = u
	}
	return objs
}

func decode(manifests string) []*unstructured.Unstructured {
	var out []*unstructured.Unstructured
	dec := utilyaml.NewYAMLOrJSONDecoder(strings.NewReader(manifests), 4096)
	for {
		u := &unstructured.Unstructured{}
		if err := dec.Decode(&u.Object); err != nil {
			return out
		}
		if len(u.Object) > 0 {
			out = append(out, u)
		}
	}
}

func values(objs map[string]*unstructured.Unstructured) []*unstructured.Unstructured {
	out := make([]*unstructured.Unstructured, 0, len(objs))
	for _, u := range objs {
		out = append(out, u)
	}
	return out
}

// createIdentity creates the operator's namespace, ServiceAccount and RBAC
// objects of i, and the objects of the other kinds named.
func createIdentity(i install, kinds ...string) {
	ensureNamespace(i.ns)
	kinds = append(kinds, "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")
	for _, u := range i.objects() {
		if !slicesContain(kinds, u.GetKind()) {
			continue
		}
		err := env.Client.Create(ctx, u)
		Expect(err == nil || apierrors.IsAlreadyExists(err)).To(BeTrue(), "%s %s: %v", u.GetKind(), u.GetName(), err)
	}
}

// own stands for the operator's namespace in a row.
const own = "<own>"

// row is one request the operator's ServiceAccount might make.
type row struct {
	verb, group, resource, subresource string
	// namespace: own for the operator's, "" for a cluster-wide request.
	namespace string
	// name: "" for a request on a collection; ownSecret and ownConfig for
	// the objects of certificate rotation.
	name string
	// rotating: the answer when the operator rotates its certificate;
	// withCertManager: when cert-manager provides it.
	rotating, withCertManager bool
}

const (
	ownSecret = "<its Secret>"
	ownConfig = "<its webhook configuration>"
)

// rows are the requests that matter, and whether they may be made.
var rows = map[string]row{
	// Certificate rotation: its webhook configuration and Secret, by name.
	"update its webhook configuration":                     {verb: "update", group: "admissionregistration.k8s.io", resource: "mutatingwebhookconfigurations", name: ownConfig, rotating: true},
	"get its webhook configuration":                        {verb: "get", group: "admissionregistration.k8s.io", resource: "mutatingwebhookconfigurations", name: ownConfig, rotating: true},
	"list its webhook configuration, by name":              {verb: "list", group: "admissionregistration.k8s.io", resource: "mutatingwebhookconfigurations", name: ownConfig, rotating: true},
	"watch its webhook configuration, by name":             {verb: "watch", group: "admissionregistration.k8s.io", resource: "mutatingwebhookconfigurations", name: ownConfig, rotating: true},
	"patch its webhook configuration (it updates)":         {verb: "patch", group: "admissionregistration.k8s.io", resource: "mutatingwebhookconfigurations", name: ownConfig},
	"delete its webhook configuration":                     {verb: "delete", group: "admissionregistration.k8s.io", resource: "mutatingwebhookconfigurations", name: ownConfig},
	"update another webhook configuration":                 {verb: "update", group: "admissionregistration.k8s.io", resource: "mutatingwebhookconfigurations", name: "another-vendor"},
	"patch another webhook configuration":                  {verb: "patch", group: "admissionregistration.k8s.io", resource: "mutatingwebhookconfigurations", name: "another-vendor"},
	"list every webhook configuration":                     {verb: "list", group: "admissionregistration.k8s.io", resource: "mutatingwebhookconfigurations"},
	"create a webhook configuration":                       {verb: "create", group: "admissionregistration.k8s.io", resource: "mutatingwebhookconfigurations"},
	"update a validating webhook configuration":            {verb: "update", group: "admissionregistration.k8s.io", resource: "validatingwebhookconfigurations", name: "another-vendor"},
	"get its Secret":                                       {verb: "get", resource: "secrets", namespace: own, name: ownSecret, rotating: true},
	"update its Secret":                                    {verb: "update", resource: "secrets", namespace: own, name: ownSecret, rotating: true},
	"list its Secret, by name":                             {verb: "list", resource: "secrets", namespace: own, name: ownSecret, rotating: true},
	"watch its Secret, by name":                            {verb: "watch", resource: "secrets", namespace: own, name: ownSecret, rotating: true},
	"delete its Secret":                                    {verb: "delete", resource: "secrets", namespace: own, name: ownSecret},
	"get another Secret of its namespace (a Helm release)": {verb: "get", resource: "secrets", namespace: own, name: "sh.helm.release.v1.ka.v1"},
	"list the Secrets of its namespace":                    {verb: "list", resource: "secrets", namespace: own},
	"create a Secret in its namespace":                     {verb: "create", resource: "secrets", namespace: own},
	"get a Secret in another namespace":                    {verb: "get", resource: "secrets", namespace: "shop", name: "db-password"},
	"list the Secrets of another namespace":                {verb: "list", resource: "secrets", namespace: "kube-system"},
	"list the Secrets of every namespace":                  {verb: "list", resource: "secrets"},
	// Pods: read, never written.
	"watch pods":                         {verb: "watch", resource: "pods", rotating: true, withCertManager: true},
	"create a pod":                       {verb: "create", resource: "pods", namespace: "shop"},
	"delete a pod":                       {verb: "delete", resource: "pods", namespace: "shop", name: "api-0"},
	"delete every pod":                   {verb: "deletecollection", resource: "pods", namespace: "shop"},
	"patch a pod":                        {verb: "patch", resource: "pods", namespace: "shop", name: "api-0"},
	"evict a pod":                        {verb: "create", resource: "pods", subresource: "eviction", namespace: "shop", name: "api-0"},
	"exec into a pod":                    {verb: "create", resource: "pods", subresource: "exec", namespace: "shop", name: "api-0"},
	"patch a Deployment":                 {verb: "patch", group: "apps", resource: "deployments", namespace: "shop", name: "api", rotating: true, withCertManager: true},
	"create a Deployment":                {verb: "create", group: "apps", resource: "deployments", namespace: "shop"},
	"update a policy's status":           {verb: "update", group: "keepalive.io", resource: "keepalivepolicies", subresource: "status", namespace: "shop", name: "nlb", rotating: true, withCertManager: true},
	"list the node reports":              {verb: "list", group: "keepalive.io", resource: "keepalivenodereports", rotating: true, withCertManager: true},
	"watch the node reports":             {verb: "watch", group: "keepalive.io", resource: "keepalivenodereports", rotating: true, withCertManager: true},
	"get a node report":                  {verb: "get", group: "keepalive.io", resource: "keepalivenodereports", name: "node-a", rotating: true, withCertManager: true},
	"create a node report (the agent's)": {verb: "create", group: "keepalive.io", resource: "keepalivenodereports"},
	"update a node report (the agent's)": {verb: "update", group: "keepalive.io", resource: "keepalivenodereports", name: "node-a"},
	"delete a node report":               {verb: "delete", group: "keepalive.io", resource: "keepalivenodereports", name: "node-a"},
	"update its leader Lease":            {verb: "update", group: "coordination.k8s.io", resource: "leases", namespace: own, name: "keepalive-operator.keepalive.io", rotating: true, withCertManager: true},
	"update a Lease elsewhere":           {verb: "update", group: "coordination.k8s.io", resource: "leases", namespace: "kube-system", name: "kube-scheduler"},
	"create events in its own namespace": {verb: "create", resource: "events", namespace: own, rotating: true, withCertManager: true},
	// No way around the rules.
	"create a RoleBinding":              {verb: "create", group: "rbac.authorization.k8s.io", resource: "rolebindings", namespace: "shop"},
	"bind a ClusterRole":                {verb: "bind", group: "rbac.authorization.k8s.io", resource: "clusterroles", name: "cluster-admin"},
	"impersonate a user":                {verb: "impersonate", resource: "users", name: "admin"},
	"create a ServiceAccount token":     {verb: "create", resource: "serviceaccounts", subresource: "token", namespace: own, name: "default"},
	"update a CustomResourceDefinition": {verb: "update", group: "apiextensions.k8s.io", resource: "customresourcedefinitions", name: "keepalivepolicies.keepalive.io"},
}

// allowed asks the API server's authorizer whether i's ServiceAccount may
// make the request r. A list or watch by name stands for a request with a
// metadata.name field selector, which the API server authorizes as a
// request on that name.
func allowed(i install, r row) bool {
	ns := r.namespace
	if ns == own {
		ns = i.ns
	}
	name := map[string]string{ownSecret: i.secret, ownConfig: i.webhookConfig}[r.name]
	if name == "" {
		name = r.name
	}
	sar := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
		User:   i.user(),
		Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + i.ns, "system:authenticated"},
		ResourceAttributes: &authorizationv1.ResourceAttributes{
			Verb: r.verb, Group: r.group, Resource: r.resource, Subresource: r.subresource, Namespace: ns, Name: name,
		},
	}}
	Expect(env.Client.Create(ctx, sar)).To(Succeed())
	return sar.Status.Allowed
}

var _ = Describe("the operator's ServiceAccount may do what it needs, nothing more", func() {
	for _, i := range []install{chartRotation, chartCertManager, configDefault} {
		Context(i.title, Ordered, func() {
			BeforeAll(func() { createIdentity(i) })

			var entries []TableEntry
			for _, what := range slices.Sorted(maps.Keys(rows)) {
				r := rows[what]
				want := r.withCertManager
				if i.rotation {
					want = r.rotating
				}
				entries = append(entries, Entry(what, r, want))
			}
			DescribeTable("as the API server's authorizer answers",
				func(r row, want bool) {
					Expect(allowed(i, r)).To(Equal(want), "%s %s/%s %q in %q", r.verb, r.resource, r.subresource, r.name, r.namespace)
				}, entries)
		})
	}
})

var _ = DescribeTable("the rules of certificate rotation name the objects the operator is told to rotate",
	func(i install) {
		objs := map[string]*unstructured.Unstructured{}
		var args []string
		for _, u := range i.objects() {
			objs[u.GetKind()+"/"+u.GetName()] = u
			if u.GetKind() == "Deployment" {
				containers, _, _ := unstructured.NestedSlice(u.Object, "spec", "template", "spec", "containers")
				for _, a := range containers[0].(map[string]any)["args"].([]any) {
					args = append(args, a.(string))
				}
			}
		}
		var named []string
		for _, u := range objs {
			if u.GetKind() != "Role" && u.GetKind() != "ClusterRole" {
				continue
			}
			role := &rbacv1.ClusterRole{}
			Expect(runtimeConvert(u, role)).To(Succeed())
			for _, rule := range role.Rules {
				for _, res := range rule.Resources {
					for _, n := range rule.ResourceNames {
						named = append(named, u.GetKind()+" "+res+" "+n)
					}
				}
			}
		}
		if !i.rotation {
			Expect(named).To(BeEmpty())
			Expect(args).NotTo(ContainElement("--cert-rotation"))
			return
		}
		Expect(named).To(ConsistOf("Role secrets "+i.secret, "ClusterRole mutatingwebhookconfigurations "+i.webhookConfig))
		Expect(args).To(ContainElements("--cert-rotation", "--webhook-secret-name="+i.secret, "--webhook-configuration-name="+i.webhookConfig))
		Expect(objs).To(HaveKey("Secret/" + i.secret))
		Expect(objs).To(HaveKey("MutatingWebhookConfiguration/" + i.webhookConfig))
	},
	Entry("the chart", chartRotation),
	Entry("the chart with cert-manager", chartCertManager),
	Entry("config/default", configDefault),
)

var _ = It("binds the roles to the operator's ServiceAccount alone", func() {
	for _, i := range []install{chartRotation, chartCertManager, configDefault} {
		for _, u := range i.objects() {
			if u.GetKind() != "RoleBinding" && u.GetKind() != "ClusterRoleBinding" {
				continue
			}
			b := &rbacv1.RoleBinding{}
			Expect(runtimeConvert(u, b)).To(Succeed())
			Expect(b.Subjects).To(ConsistOf(rbacv1.Subject{Kind: "ServiceAccount", Name: i.serviceAccount, Namespace: i.ns}), "%s %s", u.GetKind(), u.GetName())
		}
	}
})
