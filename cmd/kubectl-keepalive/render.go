package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	sigsyaml "sigs.k8s.io/yaml"

	"github.com/keepalive-operator/keepalive-operator/api/v1alpha1"
	"github.com/keepalive-operator/keepalive-operator/internal/keepalive"
)

// renderOptions are the flags of `kubectl keepalive render`.
type renderOptions struct {
	files     []string
	policies  string
	namespace string
	version   string
	operatorFlags
	write bool
	check bool
}

// input is one file, or standard input ("-"), as read.
type input struct {
	name string
	raw  []byte
}

// change is what render did, or would do, to one object.
type change struct {
	object string // Kind namespace/name
	policy string
	from   []corev1.Sysctl
	to     []corev1.Sysctl
}

func (c change) String() string {
	return fmt.Sprintf("%s: %s (%s; before: %s)", c.object, keepalive.Describe(keepalive.SysctlsOf(c.to)), c.policy, keepalive.Describe(keepalive.SysctlsOf(c.from)))
}

// renderer holds what render decides with: the policies, the namespaces'
// labels and the cluster.
type renderer struct {
	filePolicies
	namespace string
	labels    map[string]map[string]string
	c         keepalive.Cluster
}

// filePolicies are the policies of a file, compiled.
type filePolicies struct {
	namespaced []keepalive.Policy
	cluster    []keepalive.Policy
}

// runRender renders the inputs into out (or back into their files with
// --write) and reports each change to log. With --check it writes nothing
// and fails when something would change.
func runRender(o renderOptions, stdin io.Reader, out, log io.Writer) error {
	if len(o.files) == 0 {
		return errors.New("render: -f is required (a file, a folder, or - for standard input)")
	}
	if o.policies == "" {
		return errors.New("render: --policies is required")
	}
	minor, err := parseVersion(o.version)
	if err != nil {
		return err
	}
	if o.write && o.check {
		return errors.New("render: --write and --check exclude each other")
	}
	inputs, err := readInputs(o.files, stdin)
	if err != nil {
		return err
	}
	if o.write && slices.ContainsFunc(inputs, func(in input) bool { return in.name == "-" }) {
		return errors.New("render: --write cannot write back to standard input")
	}
	rawPolicies, err := os.ReadFile(o.policies)
	if err != nil {
		return fmt.Errorf("render: %w", err)
	}
	c, err := o.cluster(minor)
	if err != nil {
		return fmt.Errorf("render: %w", err)
	}
	r := &renderer{namespace: o.namespace, labels: map[string]map[string]string{}, c: c}
	if r.filePolicies, err = readPolicyFile(o.policies, rawPolicies, o.namespace, r.labels); err != nil {
		return fmt.Errorf("render: %w", err)
	}
	for _, in := range inputs {
		readNamespaces(in.raw, r.labels)
	}

	var changes []change
	endsLine := true
	for i, in := range inputs {
		rendered, ch, err := r.render(in.raw)
		if err != nil {
			return fmt.Errorf("render %s: %w", in.name, err)
		}
		changes = append(changes, ch...)
		switch {
		case o.check:
		case o.write:
			if len(ch) > 0 {
				if err := os.WriteFile(in.name, rendered, 0o644); err != nil {
					return fmt.Errorf("render: %w", err)
				}
			}
		default:
			if i > 0 {
				// Each file starts a document of its own.
				sep := "---\n"
				if !endsLine {
					sep = "\n" + sep
				}
				if _, err := io.WriteString(out, sep); err != nil {
					return err
				}
			}
			if _, err := out.Write(rendered); err != nil {
				return err
			}
			if len(rendered) > 0 {
				endsLine = rendered[len(rendered)-1] == '\n'
			}
		}
	}
	for _, c := range changes {
		fmt.Fprintln(log, c)
	}
	switch {
	case !o.check || len(changes) == 0:
	case len(changes) == 1:
		return errors.New("render --check: 1 object would change")
	default:
		return fmt.Errorf("render --check: %d objects would change", len(changes))
	}
	return nil
}

// parseVersion reads a Kubernetes version such as 1.29 or v1.36.3 and
// returns its minor.
func parseVersion(v string) (int, error) {
	parts := strings.Split(strings.TrimPrefix(v, "v"), ".")
	if len(parts) >= 2 && parts[0] == "1" {
		if minor, err := strconv.Atoi(parts[1]); err == nil {
			return minor, nil
		}
	}
	return 0, fmt.Errorf("render: --kubernetes-version %q is not a version such as 1.29", v)
}

// readInputs reads the files named, the YAML files of folders (recursively,
// in lexical order), and standard input for "-".
func readInputs(names []string, stdin io.Reader) ([]input, error) {
	var out []input
	for _, name := range names {
		if name == "-" {
			raw, err := io.ReadAll(stdin)
			if err != nil {
				return nil, fmt.Errorf("render: read standard input: %w", err)
			}
			out = append(out, input{name: "-", raw: raw})
			continue
		}
		err := filepath.WalkDir(name, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() || path != name && !slices.Contains([]string{".yaml", ".yml"}, filepath.Ext(path)) {
				return nil
			}
			raw, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			out = append(out, input{name: path, raw: raw})
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("render: %w", err)
		}
	}
	return out, nil
}

// separator is a line that starts a YAML document.
var separator = regexp.MustCompile(`^---(\s|$)`)

// documents splits a YAML stream into its documents, each with the
// separator line that starts it: joined again, they are the stream.
func documents(raw []byte) [][]byte {
	var docs [][]byte
	start := 0
	for off := 0; off < len(raw); {
		end := bytes.IndexByte(raw[off:], '\n')
		if end < 0 {
			end = len(raw)
		} else {
			end += off + 1
		}
		if off > start && separator.Match(raw[off:end]) {
			docs = append(docs, raw[start:off])
			start = off
		}
		off = end
	}
	return append(docs, raw[start:])
}

// typeMeta reads the kind and namespace of a document.
func typeMeta(doc []byte) (kind, namespace, name string, ok bool) {
	var meta struct {
		metav1.TypeMeta   `json:",inline"`
		metav1.ObjectMeta `json:"metadata"`
	}
	if err := sigsyaml.Unmarshal(doc, &meta); err != nil || meta.Kind == "" {
		return "", "", "", false
	}
	return meta.Kind, meta.Namespace, meta.Name, true
}

// readPolicyFile compiles the policies of a file, those without a namespace
// in namespace, and adds the labels of the Namespaces it holds to labels
// (unless nil).
func readPolicyFile(name string, raw []byte, namespace string, labels map[string]map[string]string) (filePolicies, error) {
	var r filePolicies
	for i, doc := range documents(raw) {
		kind, _, _, ok := typeMeta(doc)
		if !ok {
			continue
		}
		var (
			pol keepalive.Policy
			err error
		)
		switch kind {
		case keepalive.KindKeepalivePolicy:
			var p v1alpha1.KeepalivePolicy
			if err = sigsyaml.UnmarshalStrict(doc, &p); err == nil {
				if p.Namespace == "" {
					p.Namespace = namespace
				}
				pol, err = keepalive.NewPolicy(&p)
				r.namespaced = append(r.namespaced, pol)
			}
		case keepalive.KindClusterKeepalivePolicy:
			var p v1alpha1.ClusterKeepalivePolicy
			if err = sigsyaml.UnmarshalStrict(doc, &p); err == nil {
				pol, err = keepalive.NewClusterPolicy(&p)
				r.cluster = append(r.cluster, pol)
			}
		case "Namespace":
			if labels != nil {
				readNamespaces(doc, labels)
			}
			continue
		default:
			return r, fmt.Errorf("%s, document %d: a %s is not a policy", name, i+1, kind)
		}
		if err != nil {
			return r, fmt.Errorf("%s, document %d (%s): %w", name, i+1, kind, err)
		}
	}
	if len(r.namespaced)+len(r.cluster) == 0 {
		return r, fmt.Errorf("%s holds no KeepalivePolicy or ClusterKeepalivePolicy", name)
	}
	return r, nil
}

// readNamespaces adds the labels of the Namespaces of raw to labels.
func readNamespaces(raw []byte, labels map[string]map[string]string) {
	for _, doc := range documents(raw) {
		if kind, _, _, ok := typeMeta(doc); !ok || kind != "Namespace" {
			continue
		}
		var ns corev1.Namespace
		if err := sigsyaml.Unmarshal(doc, &ns); err == nil {
			labels[ns.Name] = ns.Labels
		}
	}
}

// namespaceOf is a namespace as the decisions read it: with the labels of
// its Namespace among the inputs, else with the one label the API server
// gives every namespace.
func (r *renderer) namespaceOf(name string) keepalive.Namespace {
	labels, ok := r.labels[name]
	if !ok {
		labels = map[string]string{corev1.LabelMetadataName: name}
	}
	return keepalive.Namespace{Name: name, Labels: labels}
}

// render renders the documents of one input.
func (r *renderer) render(raw []byte) ([]byte, []change, error) {
	var out bytes.Buffer
	var changes []change
	for i, doc := range documents(raw) {
		rendered, ch, err := r.renderDocument(doc)
		if err != nil {
			return nil, nil, fmt.Errorf("document %d: %w", i+1, err)
		}
		out.Write(rendered)
		if ch != nil {
			changes = append(changes, *ch)
		}
	}
	return out.Bytes(), changes, nil
}

// renderDocument merges the values into one document, when it is an object
// of a kind render handles that a policy selects, and returns it otherwise
// as it is.
func (r *renderer) renderDocument(doc []byte) ([]byte, *change, error) {
	kindName, namespace, name, ok := typeMeta(doc)
	k, handled := kindNamed(kindName)
	if !ok || !handled || k.name != kindName {
		return doc, nil, nil
	}
	kind, obj := k.name, k.new()
	if err := sigsyaml.Unmarshal(doc, obj); err != nil {
		return nil, nil, fmt.Errorf("%s %s: %w", kind, name, err)
	}
	if namespace == "" {
		namespace = r.namespace
	}
	ns := r.namespaceOf(namespace)
	spec := podSpec(obj)
	var current []corev1.Sysctl
	if spec.SecurityContext != nil {
		current = spec.SecurityContext.Sysctls
	}

	// What the operator would do: the webhook's decision for a Pod, the
	// reconciler's for a workload's template, its values as the user's own.
	var (
		want   []corev1.Sysctl
		policy *keepalive.Policy
	)
	if pod, isPod := obj.(*corev1.Pod); isPod {
		d := keepalive.Decide(keepalive.SpecView(pod.Labels, pod.Annotations, spec), ns, r.c, r.namespaced, r.cluster)
		want, policy = d.SysctlsAfter(current), d.Policy
	} else {
		t := keepalive.DesiredTemplate(keepalive.TemplateView(obj), nil, ns, r.c, r.namespaced, r.cluster)
		want, policy = t.Sysctls, t.Policy
	}
	if slices.Equal(want, current) {
		return doc, nil, nil
	}

	rendered, err := spliceSysctls(doc, k.specPath, current, want)
	if err != nil {
		return nil, nil, fmt.Errorf("%s %s/%s: %w", kind, namespace, name, err)
	}
	if err := sameButSysctls(k, obj, rendered, want); err != nil {
		return nil, nil, fmt.Errorf("%s %s/%s: %w", kind, namespace, name, err)
	}
	ch := &change{object: kind + " " + namespace + "/" + name, from: current, to: want}
	if policy != nil {
		ch.policy = policy.Ref.String()
	}
	return rendered, ch, nil
}

// sameButSysctls checks that a rendered document decodes to the object it
// was rendered from with the wanted sysctls and nothing else changed.
func sameButSysctls(k kind, before client.Object, rendered []byte, want []corev1.Sysctl) error {
	after := k.new()
	if err := sigsyaml.Unmarshal(rendered, after); err != nil {
		return fmt.Errorf("the rendered document does not decode: %w", err)
	}
	expected := before.DeepCopyObject().(client.Object)
	spec := podSpec(expected)
	if spec.SecurityContext == nil {
		spec.SecurityContext = &corev1.PodSecurityContext{}
	}
	spec.SecurityContext.Sysctls = want
	if !equality.Semantic.DeepEqual(expected, after) {
		return errors.New("rendering would change more than the pod's sysctls; the document is left unrendered")
	}
	return nil
}
