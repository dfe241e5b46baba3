package install

import (
	"strings"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
)

var _ = It("renders config/default and the API server accepts it (server-side dry run)", func() {
	rendered, stderr, err := env.Kubectl("", "kustomize", "../../config/default")
	Expect(err).NotTo(HaveOccurred(), stderr)
	for _, kind := range []string{"CustomResourceDefinition", "ClusterRole", "Role", "Deployment", "Service", "Secret", "MutatingWebhookConfiguration", "PodDisruptionBudget"} {
		Expect(rendered).To(ContainSubstring("\nkind: "+kind+"\n"), "config/default renders no %s", kind)
	}
	Expect(rendered).To(ContainSubstring("image: ghcr.io/keepalive-operator/keepalive-operator:0.1.0"))

	// A dry run creates no namespace for the namespaced objects to go into.
	ensureNamespace("keepalive-system")
	// The Helm spec may have installed the same CRDs: take over their fields
	// in this dry run.
	out, stderr, err := env.Kubectl(rendered, "apply", "--server-side", "--force-conflicts", "--dry-run=server", "-f", "-")
	Expect(err).NotTo(HaveOccurred(), out+stderr)
	Expect(stderr).NotTo(ContainSubstring("PodSecurity"), "the pod template breaks the restricted profile")
	Expect(strings.Count(out, "serverside-applied (server dry run)")).To(Equal(strings.Count(rendered, "\nkind: ")), out)
})
