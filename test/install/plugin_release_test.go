package install

import (
	"archive/tar"
	"bufio"
	"compress/gzip"
	"crypto/sha256"
	"debug/macho"
	"encoding/hex"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/keepalive-operator/keepalive-operator/internal/testenv"
)

// TestPluginRelease builds the plugin's release for two platforms as `make
// plugin-release` does, and checks what a user downloads: each archive
// holds a binary for its platform (the linux one runs), checksums.txt and
// the krew manifest name each archive's sha256, and the manifest's URIs
// point at the version's release.
func TestPluginRelease(t *testing.T) {
	out := t.TempDir()
	cmd := exec.Command("hack/plugin-release.sh", "v9.9.9-test", out, "linux/amd64", "darwin/arm64")
	cmd.Dir = testenv.Root()
	if raw, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("plugin-release.sh: %v\n%s", err, raw)
	}

	sums := map[string]string{}
	f, err := os.Open(filepath.Join(out, "checksums.txt"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for sc := bufio.NewScanner(f); sc.Scan(); {
		sum, name, ok := strings.Cut(sc.Text(), "  ")
		if !ok {
			t.Fatalf("checksums.txt: %q is not in sha256sum's format", sc.Text())
		}
		sums[name] = sum
	}

	var manifest struct {
		APIVersion, Kind string
		Metadata         struct{ Name string }
		Spec             struct {
			Version                                 string
			Homepage, ShortDescription, Description string
			Platforms                               []struct {
				Selector struct{ MatchLabels map[string]string }
				URI      string
				Sha256   string
				Bin      string
			}
		}
	}
	raw, err := os.ReadFile(filepath.Join(out, "keepalive.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.UnmarshalStrict(raw, &manifest); err != nil {
		t.Fatalf("keepalive.yaml: %v", err)
	}
	if manifest.APIVersion != "krew.googlecontainertools.github.com/v1alpha2" || manifest.Kind != "Plugin" ||
		manifest.Metadata.Name != "keepalive" || manifest.Spec.Version != "v9.9.9-test" || len(manifest.Spec.Platforms) != 2 ||
		manifest.Spec.ShortDescription == "" || manifest.Spec.Description == "" || manifest.Spec.Homepage == "" {
		t.Fatalf("keepalive.yaml: %+v", manifest)
	}

	for _, p := range manifest.Spec.Platforms {
		goos, goarch := p.Selector.MatchLabels["os"], p.Selector.MatchLabels["arch"]
		name := "kubectl-keepalive_" + goos + "_" + goarch + ".tar.gz"
		if want := "https://github.com/keepalive-operator/keepalive-operator/releases/download/v9.9.9-test/" + name; p.URI != want {
			t.Errorf("%s/%s: uri %s, want %s", goos, goarch, p.URI, want)
		}
		archive := filepath.Join(out, name)
		if got := sha256Of(t, archive); p.Sha256 != got || sums[name] != got {
			t.Errorf("%s: sha256 %s, manifest %s, checksums.txt %s", name, got, p.Sha256, sums[name])
		}
		if p.Bin != "kubectl-keepalive" {
			t.Errorf("%s: bin %q", name, p.Bin)
		}
		bin := extract(t, archive, "kubectl-keepalive")
		switch goos + "/" + goarch {
		case "linux/amd64":
			help, err := exec.Command(bin, "render", "--help").CombinedOutput()
			if err != nil || !strings.Contains(string(help), "--policies") {
				t.Errorf("the linux/amd64 binary: %v\n%s", err, help)
			}
		case "darwin/arm64":
			m, err := macho.Open(bin)
			if err != nil {
				t.Fatalf("the darwin/arm64 binary: %v", err)
			}
			if m.Cpu != macho.CpuArm64 {
				t.Errorf("the darwin/arm64 binary is for %v", m.Cpu)
			}
			m.Close()
		default:
			t.Errorf("a platform that was not asked for: %s/%s", goos, goarch)
		}
	}
}

func sha256Of(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// extract writes the one file of a .tar.gz, which must be name, next to it
// and returns its path.
func extract(t *testing.T, archive, name string) string {
	t.Helper()
	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	gz, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(gz)
	h, err := tr.Next()
	if err != nil || h.Name != name || h.Mode&0o111 == 0 {
		t.Fatalf("%s: first entry %+v, %v; want the executable %s", archive, h, err, name)
	}
	path := filepath.Join(t.TempDir(), name)
	dst, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, tr); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := tr.Next(); err != io.EOF {
		t.Fatalf("%s holds more than %s", archive, name)
	}
	return path
}
