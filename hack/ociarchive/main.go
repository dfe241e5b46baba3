// Command ociarchive packs a static binary into an OCI image archive that
// `ctr images import` loads, so that a local node runs the project's images
// without a registry: one uncompressed layer holding the binary, a config,
// a manifest, and an index naming the image.
package main

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path"
	"slices"
	"strings"
	"time"
)

func main() {
	binary := flag.String("binary", "", "the static binary to pack")
	name := flag.String("name", "", "image name, such as keepalive-operator:e2e")
	user := flag.String("user", "65532:65532", "user the image runs as")
	out := flag.String("o", "", "archive to write")
	flag.Parse()
	if *binary == "" || *name == "" || *out == "" {
		fmt.Fprintln(os.Stderr, "usage: ociarchive -binary FILE -name NAME:TAG -o ARCHIVE.tar [-user UID:GID]")
		os.Exit(2)
	}
	content, err := os.ReadFile(*binary)
	if err == nil {
		var archive []byte
		archive, err = build(content, "/"+path.Base(*binary), *name, *user)
		if err == nil {
			err = os.WriteFile(*out, archive, 0o644)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "ociarchive:", err)
		os.Exit(1)
	}
}

type descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int               `json:"size"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

// build returns the archive of an image whose only file is the binary at
// entrypoint, run as user.
func build(binary []byte, entrypoint, name, user string) ([]byte, error) {
	layer, err := tarball(map[string][]byte{strings.TrimPrefix(entrypoint, "/"): binary}, 0o755)
	if err != nil {
		return nil, err
	}
	layerDigest := digest(layer)
	config, err := json.Marshal(map[string]any{
		"architecture": "amd64",
		"os":           "linux",
		"config":       map[string]any{"Entrypoint": []string{entrypoint}, "User": user},
		"rootfs":       map[string]any{"type": "layers", "diff_ids": []string{layerDigest}},
	})
	if err != nil {
		return nil, err
	}
	manifest, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        descriptor{MediaType: "application/vnd.oci.image.config.v1+json", Digest: digest(config), Size: len(config)},
		"layers":        []descriptor{{MediaType: "application/vnd.oci.image.layer.v1.tar", Digest: layerDigest, Size: len(layer)}},
	})
	if err != nil {
		return nil, err
	}
	ref := fullName(name)
	tag := name[strings.LastIndex(name, ":")+1:]
	index, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"manifests": []descriptor{{
			MediaType: "application/vnd.oci.image.manifest.v1+json", Digest: digest(manifest), Size: len(manifest),
			Annotations: map[string]string{"io.containerd.image.name": ref, "org.opencontainers.image.ref.name": tag},
		}},
	})
	if err != nil {
		return nil, err
	}
	files := map[string][]byte{
		"oci-layout": []byte(`{"imageLayoutVersion":"1.0.0"}`),
		"index.json": index,
	}
	for _, blob := range [][]byte{layer, config, manifest} {
		files["blobs/sha256/"+strings.TrimPrefix(digest(blob), "sha256:")] = blob
	}
	return tarball(files, 0o644)
}

// fullName is the name the kubelet asks containerd for: an image without a
// registry is on docker.io, and a one-part name is in its library.
func fullName(name string) string {
	first, _, hasSlash := strings.Cut(name, "/")
	switch {
	case hasSlash && (strings.ContainsAny(first, ".:") || first == "localhost"):
		return name
	case hasSlash:
		return "docker.io/" + name
	}
	return "docker.io/library/" + name
}

func digest(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// tarball writes files into a tar, in name order, with fixed times so that
// the same input gives the same digests.
func tarball(files map[string][]byte, mode int64) ([]byte, error) {
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	slices.Sort(names)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, n := range names {
		hdr := &tar.Header{Name: n, Mode: mode, Size: int64(len(files[n])), ModTime: time.Unix(0, 0), Typeflag: tar.TypeReg}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, err
		}
		if _, err := tw.Write(files[n]); err != nil {
			return nil, err
		}
	}
	err := tw.Close()
	return buf.Bytes(), err
}
