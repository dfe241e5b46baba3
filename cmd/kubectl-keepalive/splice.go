package main

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
	corev1 "k8s.io/api/core/v1"
)

// spliceSysctls writes want as the sysctls of the pod spec at path in a
// YAML document whose pod spec holds current, and leaves every other byte
// as it is: entries keep their lines and only the values that differ are
// rewritten; new entries follow the last one, in the style of the list; a
// missing list or securityContext is added as the pod spec's first key.
// want keeps current's entries in their places (keepalive.DesiredTemplate,
// keepalive.Decide) and may append to them.
func spliceSysctls(doc []byte, path []string, current, want []corev1.Sysctl) ([]byte, error) {
	if len(want) < len(current) || !slices.EqualFunc(current, want[:len(current)], func(a, b corev1.Sysctl) bool { return a.Name == b.Name }) {
		return nil, errors.New("the sysctls to write do not keep the current entries in their places")
	}
	var root yaml.Node
	if err := yaml.Unmarshal(doc, &root); err != nil {
		return nil, err
	}
	if root.Kind != yaml.DocumentNode || len(root.Content) == 0 {
		return nil, errors.New("not a YAML document")
	}
	spec := root.Content[0]
	for _, key := range path {
		if _, spec = child(spec, key); spec == nil {
			return nil, fmt.Errorf("no %s", strings.Join(path, "."))
		}
	}
	t := text{lines: strings.SplitAfter(string(doc), "\n")}
	added := want[len(current):]
	scKey, sc := child(spec, "securityContext")
	var syKey, sy *yaml.Node
	if sc != nil {
		syKey, sy = child(sc, "sysctls")
	}
	switch {
	case spec.Kind != yaml.MappingNode || spec.Style&yaml.FlowStyle != 0 || len(spec.Content) == 0:
		return nil, fmt.Errorf("%s is not a block mapping", strings.Join(path, "."))

	case sc == nil:
		indent := spec.Content[0].Column - 1
		t.insert(t.aboveComments(spec.Content[0].Line-1), pad(indent)+"securityContext:\n"+pad(indent+2)+"sysctls:\n"+blockItems(indent+2, indent+4, want))

	case sy != nil && sy.Kind == yaml.SequenceNode && sy.Style&yaml.FlowStyle == 0:
		if len(sy.Content) != len(current) {
			return nil, errors.New("the sysctls in YAML and as decoded differ")
		}
		for i, item := range sy.Content {
			if want[i].Value == current[i].Value {
				continue
			}
			if _, value := child(item, "value"); value == nil || value.Kind != yaml.ScalarNode {
				return nil, fmt.Errorf("sysctl %s has no value to replace", current[i].Name)
			} else if err := t.replaceScalar(value, strconv.Quote(want[i].Value), item.Style&yaml.FlowStyle != 0); err != nil {
				return nil, err
			}
		}
		if len(added) > 0 {
			first, last := sy.Content[0], sy.Content[len(sy.Content)-1]
			if first.Style&yaml.FlowStyle != 0 {
				t.insert(lastLine(last), flowItems(t.dashColumn(first), added))
			} else {
				t.insert(lastLine(last), blockItems(t.dashColumn(first), first.Column-1, added))
			}
		}

	case sy != nil && sy.Kind == yaml.SequenceNode:
		if err := t.replaceFlow(sy, '[', ']', flowList(want)); err != nil {
			return nil, err
		}

	case sy != nil && sy.Tag == "!!null" && sy.Value == "":
		t.insert(syKey.Line, blockItems(syKey.Column-1, syKey.Column+1, want))

	case sy != nil:
		return nil, fmt.Errorf("securityContext.sysctls is a %s, not a list", sy.Tag)

	case sc.Kind == yaml.MappingNode && sc.Style&yaml.FlowStyle != 0:
		inner := "sysctls: " + flowList(want)
		if len(sc.Content) > 0 {
			inner += ", "
		}
		if err := t.insertAfterBrace(sc, inner); err != nil {
			return nil, err
		}

	case sc.Kind == yaml.MappingNode:
		indent := sc.Content[0].Column - 1
		t.insert(t.aboveComments(sc.Content[0].Line-1), pad(indent)+"sysctls:\n"+blockItems(indent, indent+2, want))

	case sc.Tag == "!!null" && sc.Value == "":
		indent := scKey.Column + 1
		t.insert(scKey.Line, pad(indent)+"sysctls:\n"+blockItems(indent, indent+2, want))

	default:
		return nil, fmt.Errorf("securityContext is a %s, not a mapping", sc.Tag)
	}
	return []byte(strings.Join(t.lines, "")), nil
}

// child returns the key and value nodes of key in a mapping, nil when it is
// absent.
func child(m *yaml.Node, key string) (k, v *yaml.Node) {
	if m == nil || m.Kind != yaml.MappingNode {
		return nil, nil
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			return m.Content[i], m.Content[i+1]
		}
	}
	return nil, nil
}

// lastLine is the last line (1-based) that a node's content starts on.
func lastLine(n *yaml.Node) int {
	last := n.Line
	for _, c := range n.Content {
		last = max(last, lastLine(c))
	}
	return last
}

func pad(n int) string { return strings.Repeat(" ", n) }

// blockItems writes sysctls as block list items, the dash at column dash
// and the keys at column key (0-based).
func blockItems(dash, key int, sysctls []corev1.Sysctl) string {
	var b strings.Builder
	for _, s := range sysctls {
		b.WriteString(pad(dash) + "-" + pad(max(1, key-dash-1)) + "name: " + s.Name + "\n")
		b.WriteString(pad(key) + "value: " + strconv.Quote(s.Value) + "\n")
	}
	return b.String()
}

// flowItems writes sysctls as block list items of flow mappings, the dash
// at column dash.
func flowItems(dash int, sysctls []corev1.Sysctl) string {
	var b strings.Builder
	for _, s := range sysctls {
		b.WriteString(pad(dash) + "- " + flowItem(s) + "\n")
	}
	return b.String()
}

func flowItem(s corev1.Sysctl) string {
	return "{name: " + s.Name + ", value: " + strconv.Quote(s.Value) + "}"
}

// flowList writes sysctls as a flow list.
func flowList(sysctls []corev1.Sysctl) string {
	items := make([]string, len(sysctls))
	for i, s := range sysctls {
		items[i] = flowItem(s)
	}
	return "[" + strings.Join(items, ", ") + "]"
}

// text is a document as lines, each with its newline, edited in place.
type text struct{ lines []string }

// insert puts s before line i (0-based); i = len(lines) appends.
func (t *text) insert(i int, s string) {
	if i > 0 && i <= len(t.lines) && !strings.HasSuffix(t.lines[i-1], "\n") {
		t.lines[i-1] += "\n"
	}
	t.lines = slices.Insert(t.lines, min(i, len(t.lines)), s)
}

// aboveComments returns line i (0-based), or the first of the comment
// lines right above it, which belong to it.
func (t *text) aboveComments(i int) int {
	for i > 0 && strings.HasPrefix(strings.TrimSpace(t.lines[i-1]), "#") {
		i--
	}
	return i
}

// dashColumn is the column (0-based) of the dash of a block list item.
func (t *text) dashColumn(item *yaml.Node) int {
	line := t.lines[item.Line-1]
	return strings.LastIndexByte(line[:min(item.Column-1, len(line))], '-')
}

// replaceScalar replaces the source text of a scalar with s; inFlow says
// whether the scalar sits in a flow collection, where a plain one ends at
// a comma or closing bracket.
func (t *text) replaceScalar(n *yaml.Node, s string, inFlow bool) error {
	line := t.lines[n.Line-1]
	start := n.Column - 1
	if start >= len(line) {
		return fmt.Errorf("line %d: no value at column %d", n.Line, n.Column)
	}
	end, err := scalarEnd(line, start, inFlow)
	if err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	t.lines[n.Line-1] = line[:start] + s + line[end:]
	return nil
}

// scalarEnd returns where the scalar starting at start of line ends.
func scalarEnd(line string, start int, inFlow bool) (int, error) {
	switch line[start] {
	case '"':
		for i := start + 1; i < len(line); i++ {
			switch line[i] {
			case '\\':
				i++
			case '"':
				return i + 1, nil
			}
		}
		return 0, errors.New("a double-quoted value that spans lines")
	case '\'':
		for i := start + 1; i < len(line); i++ {
			if line[i] == '\'' {
				if i+1 < len(line) && line[i+1] == '\'' {
					i++
					continue
				}
				return i + 1, nil
			}
		}
		return 0, errors.New("a single-quoted value that spans lines")
	case '|', '>':
		return 0, errors.New("a block scalar value")
	}
	end := len(strings.TrimRight(line, "\r\n"))
	if i := strings.Index(line[start:], " #"); i >= 0 {
		end = min(end, start+i)
	}
	if inFlow {
		if i := strings.IndexAny(line[start:], ",}]"); i >= 0 {
			end = min(end, start+i)
		}
	}
	return start + len(strings.TrimRight(line[start:end], " \t")), nil
}

// replaceFlow replaces a flow collection that fits on its line with s.
func (t *text) replaceFlow(n *yaml.Node, open, closing byte, s string) error {
	line := t.lines[n.Line-1]
	start := n.Column - 1
	if start >= len(line) || line[start] != open {
		return fmt.Errorf("line %d: no %c at column %d", n.Line, open, n.Column)
	}
	depth := 0
	for i := start; i < len(line); i++ {
		switch line[i] {
		case '"', '\'':
			end, err := scalarEnd(line, i, true)
			if err != nil {
				return fmt.Errorf("line %d: %w", n.Line, err)
			}
			i = end - 1
		case '[', '{':
			depth++
		case ']', '}':
			if depth--; depth == 0 {
				if line[i] != closing {
					return fmt.Errorf("line %d: unbalanced brackets", n.Line)
				}
				t.lines[n.Line-1] = line[:start] + s + line[i+1:]
				return nil
			}
		}
	}
	return fmt.Errorf("line %d: a flow collection that spans lines", n.Line)
}

// insertAfterBrace puts s right after the opening brace of a flow mapping.
func (t *text) insertAfterBrace(n *yaml.Node, s string) error {
	line := t.lines[n.Line-1]
	start := n.Column - 1
	if start >= len(line) || line[start] != '{' {
		return fmt.Errorf("line %d: no { at column %d", n.Line, n.Column)
	}
	t.lines[n.Line-1] = line[:start+1] + s + line[start+1:]
	return nil
}
