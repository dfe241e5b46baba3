package main

import (
	"io"
	"log"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// TestCheck pushes indexes to a registry on the loopback address, as ko
// would, and checks that check accepts a release-worthy one and refuses
// each flaw with a reason.
func TestCheck(t *testing.T) {
	reg := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer reg.Close()
	host := strings.TrimPrefix(reg.URL, "http://")
	amd64, arm64 := v1.Platform{OS: "linux", Architecture: "amd64"}, v1.Platform{OS: "linux", Architecture: "arm64"}
	both := []v1.Platform{amd64, arm64}

	push := func(repo, user string, platforms []v1.Platform, sbom bool) name.Digest {
		t.Helper()
		idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
		for _, p := range platforms {
			img, err := mutate.ConfigFile(empty.Image, &v1.ConfigFile{OS: p.OS, Architecture: p.Architecture, Config: v1.Config{User: user}})
			if err != nil {
				t.Fatal(err)
			}
			idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &p}})
		}
		ref, err := name.NewTag(host + "/" + repo + ":1")
		if err != nil {
			t.Fatal(err)
		}
		if err := remote.WriteIndex(ref, idx); err != nil {
			t.Fatal(err)
		}
		d, err := idx.Digest()
		if err != nil {
			t.Fatal(err)
		}
		if sbom {
			doc, err := mutate.AppendLayers(empty.Image, static.NewLayer([]byte(`{"spdxVersion":"SPDX-2.3"}`), "text/spdx+json"))
			if err != nil {
				t.Fatal(err)
			}
			tag, err := name.NewTag(host + "/" + repo + ":" + strings.Replace(d.String(), ":", "-", 1) + ".sbom")
			if err != nil {
				t.Fatal(err)
			}
			if err := remote.Write(tag, doc); err != nil {
				t.Fatal(err)
			}
		}
		return ref.Context().Digest(d.String())
	}

	single, err := name.NewTag(host + "/single:1")
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.ConfigFile(empty.Image, &v1.ConfigFile{OS: "linux", Architecture: "amd64", Config: v1.Config{User: nonRoot}})
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(single, img); err != nil {
		t.Fatal(err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	if err := check(single.Context().Digest(d.String()), both); err == nil || !strings.Contains(err.Error(), "not an index") {
		t.Errorf("one image for one platform: check says %v, want an error with %q", err, "not an index")
	}

	if err := check(push("good", nonRoot, both, true), both); err != nil {
		t.Errorf("a non-root image for both platforms with an SBOM: %v", err)
	}
	for _, tc := range []struct {
		name, repo, user string
		platforms        []v1.Platform
		sbom             bool
		want             string
	}{
		{"no user", "root", "", both, true, "runs as \"\", root"},
		{"user 0", "uid0", "0:0", both, true, "runs as \"0:0\", root"},
		{"one platform", "amd64", nonRoot, []v1.Platform{amd64}, true, "platforms"},
		{"no SBOM", "nosbom", nonRoot, both, false, "no SBOM"},
		{"no platform", "none", nonRoot, nil, true, "platforms"},
	} {
		err := check(push(tc.repo, tc.user, tc.platforms, tc.sbom), both)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: check says %v, want an error with %q", tc.name, err, tc.want)
		}
	}
}
