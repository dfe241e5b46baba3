package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestRenderGolden renders each case's manifests with its policies.yaml and
// compares the result with its want.yaml, written by hand: the values merged
// where the operator would put them, every other byte as it was. The cases
// are plain manifests, the output of `kubectl kustomize` on an overlay and
// that of `helm template` on a chart (with make test's kubectl and Helm).
// Rendering the result again changes nothing.
func TestRenderGolden(t *testing.T) {
	tests := map[string]struct {
		input func(t *testing.T, dir string) []byte
		args  []string
	}{
		"manifests": {input: func(t *testing.T, dir string) []byte { return readFile(t, filepath.Join(dir, "input.yaml")) }},
		"kustomize": {input: func(t *testing.T, dir string) []byte {
			return output(t, filepath.Join(tool(t, "KUBEBUILDER_ASSETS"), "kubectl"), "kustomize", filepath.Join(dir, "overlay"))
		}},
		"helm": {
			input: func(t *testing.T, dir string) []byte {
				return output(t, tool(t, "HELM"), "template", "web", filepath.Join(dir, "chart"), "--namespace", "shop")
			},
			args: []string{"-n", "shop"},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			dir := filepath.Join("testdata", "render", name)
			policies := filepath.Join(dir, "policies.yaml")
			want := readFile(t, filepath.Join(dir, "want.yaml"))
			got, log, err := render(tc.input(t, dir), append([]string{"-f", "-", "--policies", policies}, tc.args...)...)
			if err != nil {
				t.Fatalf("render: %v\n%s", err, log)
			}
			if diff := cmp.Diff(string(want), string(got)); diff != "" {
				t.Errorf("render (-want +got):\n%s\nlog:\n%s", diff, log)
			}
			again, log, err := render(got, append([]string{"-f", "-", "--policies", policies}, tc.args...)...)
			if err != nil || !bytes.Equal(again, got) || log != "" {
				t.Errorf("a second render changed something (%v): %s", err, log)
			}
		})
	}
}

// TestRenderWriteAndCheck renders a folder in place: the files that change
// are rewritten, the others and files that are not YAML keep their bytes;
// --check then passes, and fails on a file that would change, writing
// nothing.
func TestRenderWriteAndCheck(t *testing.T) {
	src := filepath.Join("testdata", "render", "manifests")
	policies := filepath.Join(src, "policies.yaml")
	dir := t.TempDir()
	files := map[string][]byte{
		"app/workloads.yaml":   readFile(t, filepath.Join(src, "input.yaml")),
		"app/service.yml":      []byte("apiVersion: v1\nkind: Service\nmetadata: {name: api}\n"),
		"README.md":            []byte("kind: Deployment\n"),
		"app/nested/done.yaml": readFile(t, filepath.Join(src, "want.yaml")),
	}
	for name, raw := range files {
		path := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, raw, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	if _, log, err := render(nil, "-f", dir, "--policies", policies, "--check"); err == nil || !strings.Contains(log, "Deployment shop/api: net.ipv4.tcp_keepalive_time=175") {
		t.Errorf("--check before rendering: error %v, log:\n%s", err, log)
	}
	if got := readFile(t, filepath.Join(dir, "app/workloads.yaml")); !bytes.Equal(got, files["app/workloads.yaml"]) {
		t.Error("--check wrote a file")
	}

	out, log, err := render(nil, "-f", dir, "--policies", policies, "--write")
	if err != nil || len(out) != 0 {
		t.Fatalf("--write: error %v, %d bytes printed, log:\n%s", err, len(out), log)
	}
	for name, raw := range files {
		want := raw
		if name == "app/workloads.yaml" {
			want = files["app/nested/done.yaml"]
		}
		if got := readFile(t, filepath.Join(dir, name)); !bytes.Equal(got, want) {
			t.Errorf("after --write, %s:\n%s", name, cmp.Diff(string(want), string(got)))
		}
	}
	if _, log, err := render(nil, "-f", dir, "--policies", policies, "--check"); err != nil || log != "" {
		t.Errorf("--check after --write: error %v, log:\n%s", err, log)
	}
}

// TestRenderErrors checks that bad input gets an error that says what is
// wrong, and no output.
func TestRenderErrors(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return path
	}
	good := filepath.Join("testdata", "render", "manifests", "policies.yaml")
	input := filepath.Join("testdata", "render", "manifests", "input.yaml")
	tests := map[string]struct {
		args []string
		want string
	}{
		"no input":       {args: []string{"--policies", good}, want: "-f is required"},
		"no policies":    {args: []string{"-f", input}, want: "--policies is required"},
		"write to stdin": {args: []string{"-f", "-", "--policies", good, "--write"}, want: "cannot write back to standard input"},
		"write and check": {args: []string{"-f", input, "--policies", good, "--write", "--check"},
			want: "exclude each other"},
		"bad version": {args: []string{"-f", input, "--policies", good, "--kubernetes-version", "2.0"}, want: `"2.0" is not a version`},
		"not a policy": {args: []string{"-f", input, "--policies", write("deploy.yaml", "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n")},
			want: "document 1: a Deployment is not a policy"},
		"invalid policy": {args: []string{"-f", input, "--policies", write("bad.yaml",
			"apiVersion: keepalive.io/v1alpha1\nkind: KeepalivePolicy\nmetadata: {name: x}\nspec:\n  idleTimeouts: [{seconds: 100}]\n  intervalSeconds: 60\n")},
			want: "document 1 (KeepalivePolicy): "},
		"unknown field": {args: []string{"-f", input, "--policies", write("typo.yaml",
			"apiVersion: keepalive.io/v1alpha1\nkind: KeepalivePolicy\nmetadata: {name: x}\nspec:\n  idleTimeout: [{preset: aws-nlb}]\n")},
			want: `unknown field "idleTimeout"`},
		"no policy":    {args: []string{"-f", input, "--policies", write("empty.yaml", "# nothing\n")}, want: "holds no KeepalivePolicy"},
		"missing file": {args: []string{"-f", filepath.Join(dir, "nope.yaml"), "--policies", good}, want: "no such file"},
		"bad selector": {args: []string{"-f", input, "--policies", good, "--object-selector", "tier in batch"},
			want: "--object-selector: "},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			out, log, err := render(nil, tc.args...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one with %q", err, tc.want)
			}
			if len(out) != 0 {
				t.Errorf("printed %d bytes", len(out))
			}
			if !strings.Contains(log, "Error: "+err.Error()) {
				t.Errorf("the error is not on stderr: %q", log)
			}
		})
	}
}

// render runs `kubectl keepalive render args...` with stdin.
func render(stdin []byte, args ...string) (out []byte, log string, err error) {
	var stdout, stderr bytes.Buffer
	root := newRoot(bytes.NewReader(stdin), &stdout, &stderr)
	root.SetArgs(append([]string{"render"}, args...))
	err = root.Execute()
	return stdout.Bytes(), strings.TrimSpace(stderr.String()), err
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// tool returns the value of an environment variable that make test sets.
func tool(t *testing.T, env string) string {
	t.Helper()
	v := os.Getenv(env)
	if v == "" {
		t.Fatalf("%s is not set: run make test", env)
	}
	return v
}

// output runs a command and returns its standard output.
func output(t *testing.T, name string, args ...string) []byte {
	t.Helper()
	cmd := exec.Command(name, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, stderr.String())
	}
	return out
}

// TestRenderSeveralFiles prints several files as one stream: each file
// starts a document, even one that follows a file without a final newline.
func TestRenderSeveralFiles(t *testing.T) {
	dir := t.TempDir()
	a := filepath.Join(dir, "a.yaml")
	b := filepath.Join(dir, "b.yaml")
	if err := os.WriteFile(a, []byte("apiVersion: v1\nkind: Service\nmetadata: {name: a}"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(b, []byte("apiVersion: v1\nkind: Service\nmetadata: {name: b}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, log, err := render(nil, "-f", a, "-f", b, "--policies", filepath.Join("testdata", "render", "manifests", "policies.yaml"))
	if err != nil {
		t.Fatalf("render: %v\n%s", err, log)
	}
	want := "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: b}\n"
	if diff := cmp.Diff(want, string(out)); diff != "" {
		t.Errorf("render (-want +got):\n%s", diff)
	}
}

// TestRenderOperatorSelectors leaves alone what the operator's
// --object-selector and --namespace-selector leave alone, as the operator
// would, and renders the rest.
func TestRenderOperatorSelectors(t *testing.T) {
	dir := t.TempDir()
	manifests := filepath.Join(dir, "deploy.yaml")
	if err := os.WriteFile(manifests, []byte(`apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {team: shop}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: api, namespace: shop}
spec:
  selector: {matchLabels: {app: api}}
  template:
    metadata: {labels: {app: api, tier: web}}
    spec:
      containers: [{name: api, image: api:1}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: jobs, namespace: shop}
spec:
  selector: {matchLabels: {app: jobs}}
  template:
    metadata: {labels: {app: jobs, tier: batch}}
    spec:
      containers: [{name: jobs, image: jobs:1}]
`), 0o644); err != nil {
		t.Fatal(err)
	}
	policies := filepath.Join(dir, "policies.yaml")
	if err := os.WriteFile(policies, []byte(`apiVersion: keepalive.io/v1alpha1
kind: KeepalivePolicy
metadata: {name: nlb, namespace: shop}
spec:
  idleTimeouts: [{preset: aws-nlb}]
`), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		flags   []string
		changed []string
	}{
		{"no selectors", nil, []string{"Deployment shop/api", "Deployment shop/jobs"}},
		{"object selector", []string{"--object-selector", "tier!=batch"}, []string{"Deployment shop/api"}},
		{"namespace selector", []string{"--namespace-selector", "team=platform"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, log, err := render(nil, append([]string{"-f", manifests, "--policies", policies, "--check"}, tc.flags...)...)
			var changed []string
			for _, line := range strings.Split(log, "\n") {
				if obj, _, ok := strings.Cut(line, ": net.ipv4"); ok {
					changed = append(changed, obj)
				}
			}
			if !slices.Equal(changed, tc.changed) {
				t.Errorf("changes %q, want %q; log:\n%s", changed, tc.changed, log)
			}
			if (err != nil) != (len(tc.changed) > 0) {
				t.Errorf("--check says %v with %d changes", err, len(tc.changed))
			}
		})
	}
}
