package install

import (
	"io"
	"log"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/google/go-containerregistry/pkg/registry"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"

	"github.com/keepalive-operator/keepalive-operator/internal/testenv"
)

var _ = It("publishes the chart as an OCI artifact that installs the release's image (make chart-release)", func() {
	// A registry of its own on the loopback address, as ghcr.io is to the
	// release workflow.
	reg := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	DeferCleanup(reg.Close)
	repo := "oci://" + strings.TrimPrefix(reg.URL, "http://") + "/charts"
	out := GinkgoT().TempDir()
	cmd := exec.Command("make", "--no-print-directory", "chart-release", "VERSION=v9.9.9-test", "LOCALBIN="+out,
		"HELM="+os.Getenv("HELM"), "CHART_REPO="+repo, "CHART_PUSH_FLAGS=--plain-http")
	cmd.Dir = testenv.Root()
	raw, err := cmd.CombinedOutput()
	Expect(err).NotTo(HaveOccurred(), string(raw))
	Expect(filepath.Join(out, "release", "keepalive-operator-9.9.9-test.tgz")).To(BeAnExistingFile())

	By("pulling it back as a user would")
	pulled := GinkgoT().TempDir()
	stdout, stderr, err := helm("pull", repo+"/keepalive-operator", "--version", "9.9.9-test", "--plain-http", "--untar", "-d", pulled)
	Expect(err).NotTo(HaveOccurred(), stdout+stderr)
	manifests, stderr, err := helm("template", "t", filepath.Join(pulled, "keepalive-operator"), "--namespace", "keepalive-system")
	Expect(err).NotTo(HaveOccurred(), stderr)
	for _, u := range decode(manifests) {
		if u.GetKind() != "Deployment" {
			continue
		}
		deploy := &appsv1.Deployment{}
		Expect(runtimeConvert(u, deploy)).To(Succeed())
		// Where make release-images pushes the image of v9.9.9-test.
		Expect(deploy.Spec.Template.Spec.Containers[0].Image).To(Equal("ghcr.io/keepalive-operator/keepalive-operator:9.9.9-test"))
		return
	}
	Fail("the pulled chart renders no Deployment")
})
