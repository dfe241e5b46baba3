package main

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"io"
	"strings"
	"testing"
)

// untar reads a tarball into a map.
func untar(t *testing.T, b []byte) (map[string][]byte, map[string]int64) {
	t.Helper()
	files, modes := map[string][]byte{}, map[string]int64{}
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return files, modes
		}
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(tr)
		files[hdr.Name], modes[hdr.Name] = data, hdr.Mode
	}
}

func TestFullName(t *testing.T) {
	for name, want := range map[string]string{
		"tcpapp:e2e":               "docker.io/library/tcpapp:e2e",
		"keepalive-e2e/pause:1":    "docker.io/keepalive-e2e/pause:1",
		"ghcr.io/keepalive/op:1":   "ghcr.io/keepalive/op:1",
		"localhost/keepalive/op:1": "localhost/keepalive/op:1",
		"registry.local:5000/op:1": "registry.local:5000/op:1",
	} {
		if got := fullName(name); got != want {
			t.Errorf("fullName(%q) = %q, want %q", name, got, want)
		}
	}
}

func TestBuild(t *testing.T) {
	binary := []byte("\x7fELF not really")
	archive, err := build(binary, "/tcpapp", "tcpapp:e2e", "65532:65532")
	if err != nil {
		t.Fatal(err)
	}
	files, _ := untar(t, archive)
	blob := func(d descriptor) []byte {
		t.Helper()
		b, ok := files["blobs/sha256/"+strings.TrimPrefix(d.Digest, "sha256:")]
		if !ok || digest(b) != d.Digest || len(b) != d.Size {
			t.Fatalf("blob %s missing or not matching its descriptor", d.Digest)
		}
		return b
	}
	if string(files["oci-layout"]) != `{"imageLayoutVersion":"1.0.0"}` {
		t.Errorf("oci-layout = %s", files["oci-layout"])
	}
	var index struct{ Manifests []descriptor }
	if err := json.Unmarshal(files["index.json"], &index); err != nil || len(index.Manifests) != 1 {
		t.Fatalf("index.json: %s (%v)", files["index.json"], err)
	}
	if got := index.Manifests[0].Annotations["io.containerd.image.name"]; got != "docker.io/library/tcpapp:e2e" {
		t.Errorf("image name %q", got)
	}
	var manifest struct {
		Config descriptor
		Layers []descriptor
	}
	if err := json.Unmarshal(blob(index.Manifests[0]), &manifest); err != nil || len(manifest.Layers) != 1 {
		t.Fatalf("manifest: %v", err)
	}
	var config struct {
		Config struct {
			Entrypoint []string
			User       string
		}
		RootFS struct {
			DiffIDs []string `json:"diff_ids"`
		} `json:"rootfs"`
	}
	if err := json.Unmarshal(blob(manifest.Config), &config); err != nil {
		t.Fatal(err)
	}
	if len(config.Config.Entrypoint) != 1 || config.Config.Entrypoint[0] != "/tcpapp" || config.Config.User != "65532:65532" {
		t.Errorf("config %+v", config.Config)
	}
	layer := blob(manifest.Layers[0])
	if len(config.RootFS.DiffIDs) != 1 || config.RootFS.DiffIDs[0] != digest(layer) {
		t.Errorf("diff_ids %v do not name the uncompressed layer", config.RootFS.DiffIDs)
	}
	inLayer, modes := untar(t, layer)
	if !bytes.Equal(inLayer["tcpapp"], binary) || modes["tcpapp"] != 0o755 {
		t.Errorf("the layer holds %v", inLayer)
	}
	again, _ := build(binary, "/tcpapp", "tcpapp:e2e", "65532:65532")
	if !bytes.Equal(archive, again) {
		t.Error("the same input gave another archive")
	}
}
