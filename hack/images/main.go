// Command images builds the project's images with ko and .ko.yaml, as the
// release does, and writes archives of them that `ctr images import` loads,
// so that a local node runs them without a registry.
//
// ko pushes what it builds to a registry and pulls its base image from one.
// Here both are an in-process registry on the loopback address that lives as
// long as the command: the base is a static, non-root image with no files
// for each platform (the release uses distroless/static:nonroot from
// .ko.yaml), and each image is checked as a user would pull it from the
// release: one manifest for each of -platforms, a non-root user, and an SPDX
// SBOM attached. With -check, it checks the images the release pushed, by
// their references, the same way.
//
//	images -ko KO -ko-config .ko.yaml -o DIR [-platforms P1,P2] NAME:TAG=DIR,IMPORTPATH ...
//	images -check [-platforms P1,P2] REF@DIGEST ...
package main

import (
	"archive/tar"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// nonRoot is the user of the base image, distroless's nonroot.
const nonRoot = "65532:65532"

// image is one image to build: its name on the node, and the Go main
// package it holds.
type image struct {
	name       name.Tag
	file       string // the archive's name
	dir        string // the module's folder
	importPath string
}

func main() {
	ko := flag.String("ko", "ko", "the ko binary")
	koConfig := flag.String("ko-config", ".ko.yaml", "ko's configuration, also for trees without one (the previous release)")
	out := flag.String("o", "", "folder for the archives, one NAME.tar per image")
	platforms := flag.String("platforms", "linux/amd64,linux/arm64", "platforms every image must have (.ko.yaml says which ko builds); the archive holds the host's")
	checkOnly := flag.Bool("check", false, "only check the images of the references given, as pushed")
	flag.Parse()
	want, err := parsePlatforms(*platforms)
	if err != nil {
		log.Fatalf("images: -platforms: %v", err)
	}
	if *checkOnly {
		if flag.NArg() == 0 {
			log.Fatal("images: -check needs the references of the images")
		}
		for _, arg := range flag.Args() {
			ref, err := name.NewDigest(arg)
			if err == nil {
				err = check(ref, want)
			}
			if err != nil {
				log.Fatalf("images: %s: %v", arg, err)
			}
			log.Printf("%s: platforms %s, non-root, SBOM attached", arg, *platforms)
		}
		return
	}
	if *out == "" || flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: images -ko KO -ko-config FILE -o DIR [-platforms P1,P2] NAME:TAG=DIR,IMPORTPATH ...\n       images -check [-platforms P1,P2] REF@DIGEST ...")
		os.Exit(2)
	}
	config, err := filepath.Abs(*koConfig)
	if err != nil {
		log.Fatalf("images: %v", err)
	}
	var images []image
	for _, arg := range flag.Args() {
		img, err := parseImage(arg)
		if err != nil {
			log.Fatalf("images: %v", err)
		}
		images = append(images, img)
	}
	if err := run(*ko, config, *out, want, images); err != nil {
		log.Fatalf("images: %v", err)
	}
}

func parseImage(arg string) (image, error) {
	ref, src, ok := strings.Cut(arg, "=")
	dir, importPath, ok2 := strings.Cut(src, ",")
	if !ok || !ok2 || dir == "" || importPath == "" {
		return image{}, fmt.Errorf("%q: want NAME:TAG=DIR,IMPORTPATH", arg)
	}
	tag, err := name.NewTag(ref)
	if err != nil {
		return image{}, fmt.Errorf("%q: %w", ref, err)
	}
	file := strings.NewReplacer("/", "-", ":", "-").Replace(ref) + ".tar"
	return image{name: tag, file: file, dir: dir, importPath: importPath}, nil
}

func parsePlatforms(list string) ([]v1.Platform, error) {
	var out []v1.Platform
	for _, p := range strings.Split(list, ",") {
		pl, err := v1.ParsePlatform(p)
		if err != nil {
			return nil, err
		}
		out = append(out, *pl)
	}
	return out, nil
}

func run(ko, koConfig, out string, want []v1.Platform, images []image) error {
	reg := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer reg.Close()
	host := strings.TrimPrefix(reg.URL, "http://")

	base, err := name.NewTag(host + "/base:nonroot")
	if err != nil {
		return err
	}
	if err := pushBase(base, want); err != nil {
		return fmt.Errorf("push the base image: %w", err)
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	for _, img := range images {
		built, err := build(ko, koConfig, host, base, img)
		if err != nil {
			return fmt.Errorf("%s: %w", img.name, err)
		}
		if err := check(built, want); err != nil {
			return fmt.Errorf("%s: %w", img.name, err)
		}
		file := filepath.Join(out, img.file)
		if err := archive(built, img.name, file); err != nil {
			return fmt.Errorf("%s: %w", img.name, err)
		}
		log.Printf("%s: %s, %s", img.name, built, file)
	}
	return nil
}

// pushBase pushes an index of empty images, one per platform, that run as
// nonRoot.
func pushBase(ref name.Tag, platforms []v1.Platform) error {
	idx := mutate.IndexMediaType(empty.Index, "application/vnd.oci.image.index.v1+json")
	for _, p := range platforms {
		img, err := mutate.ConfigFile(mutate.MediaType(empty.Image, "application/vnd.oci.image.manifest.v1+json"), &v1.ConfigFile{
			OS: p.OS, Architecture: p.Architecture, Variant: p.Variant,
			RootFS: v1.RootFS{Type: "layers"},
			Config: v1.Config{User: nonRoot, Env: []string{"PATH=/usr/local/bin:/usr/bin:/bin"}},
		})
		if err != nil {
			return err
		}
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &p}})
	}
	return remote.WriteIndex(ref, idx)
}

// build runs ko for one image, which pushes it to the registry at host, and
// returns its reference by digest. The platforms are .ko.yaml's.
func build(ko, koConfig, host string, base name.Tag, img image) (name.Digest, error) {
	cmd := exec.Command(ko, "build", img.importPath, "--bare", "--tags", img.name.TagStr(), "--sbom", "spdx")
	cmd.Dir = img.dir
	cmd.Env = append(os.Environ(),
		"KO_DOCKER_REPO="+host+"/"+img.name.RepositoryStr(),
		"KO_DEFAULTBASEIMAGE="+base.String(),
		// The settings of .ko.yaml, also for a tree without one (the
		// previous release).
		"KO_CONFIG_PATH="+koConfig,
		"CGO_ENABLED=0")
	var stdout bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		return name.Digest{}, fmt.Errorf("ko build: %w", err)
	}
	return name.NewDigest(strings.TrimSpace(stdout.String()))
}

// check checks what a user of the release would pull: an index with one
// image per platform, each running as a user other than root, and an SBOM
// attached to the index.
func check(ref name.Digest, want []v1.Platform) error {
	auth := remote.WithAuthFromKeychain(authn.DefaultKeychain) // ko login's, for the release
	desc, err := remote.Get(ref, auth)
	if err != nil {
		return err
	}
	if !desc.MediaType.IsIndex() {
		return fmt.Errorf("one image (%s), not an index of one per platform: want %v", desc.MediaType, want)
	}
	idx, err := desc.ImageIndex()
	if err != nil {
		return err
	}
	manifest, err := idx.IndexManifest()
	if err != nil {
		return err
	}
	var got []v1.Platform
	for _, d := range manifest.Manifests {
		if d.Platform == nil {
			return fmt.Errorf("manifest %s has no platform", d.Digest)
		}
		got = append(got, *d.Platform)
		img, err := idx.Image(d.Digest)
		if err != nil {
			return err
		}
		cfg, err := img.ConfigFile()
		if err != nil {
			return err
		}
		if u := cfg.Config.User; u == "" || u == "0" || u == "root" || strings.HasPrefix(u, "0:") || strings.HasPrefix(u, "root:") {
			return fmt.Errorf("the %s image runs as %q, root", d.Platform, u)
		}
	}
	if len(got) != len(want) {
		return fmt.Errorf("platforms %v, want %v", got, want)
	}
	for _, p := range want {
		if !slices.ContainsFunc(got, func(g v1.Platform) bool { return g.OS == p.OS && g.Architecture == p.Architecture }) {
			return fmt.Errorf("no %s image among %v", p, got)
		}
	}
	// ko attaches the SBOM as the tag sha256-HEX.sbom.
	sbom, err := name.NewTag(ref.Context().String() + ":" + strings.Replace(ref.DigestStr(), ":", "-", 1) + ".sbom")
	if err != nil {
		return err
	}
	sbomImg, err := remote.Image(sbom, auth)
	if err != nil {
		return fmt.Errorf("no SBOM: %w", err)
	}
	layers, err := sbomImg.Layers()
	if err != nil {
		return err
	}
	if len(layers) != 1 {
		return fmt.Errorf("SBOM %s has %d layers, want 1", sbom, len(layers))
	}
	mt, err := layers[0].MediaType()
	if err != nil {
		return err
	}
	if mt != "text/spdx+json" {
		return fmt.Errorf("SBOM %s is %s, not SPDX JSON", sbom, mt)
	}
	return nil
}

// archive writes the host's image of ref as an OCI image layout in a tar
// archive, named tag for containerd.
func archive(ref name.Digest, tag name.Tag, file string) error {
	img, err := remote.Image(ref, remote.WithPlatform(v1.Platform{OS: "linux", Architecture: runtime.GOARCH}))
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "image-layout-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return err
	}
	// containerd names an imported image by io.containerd.image.name, as
	// the kubelet names it (docker.io, not go-containerregistry's
	// index.docker.io); the other readers of OCI layouts by
	// org.opencontainers.image.ref.name.
	registry := tag.RegistryStr()
	if registry == name.DefaultRegistry {
		registry = "docker.io"
	}
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{
		"io.containerd.image.name":          registry + "/" + tag.RepositoryStr() + ":" + tag.TagStr(),
		"org.opencontainers.image.ref.name": tag.TagStr(),
	})); err != nil {
		return err
	}
	return tarDir(dir, file)
}

// tarDir writes the files under dir into a tar archive at file.
func tarDir(dir, file string) (err error) {
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, f.Close()) }()
	tw := tar.NewWriter(f)
	if err := tw.AddFS(os.DirFS(dir)); err != nil {
		return err
	}
	return tw.Close()
}
