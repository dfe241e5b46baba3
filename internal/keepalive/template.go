package keepalive

import (
	"encoding/json"
	"fmt"

	corev1 "k8s.io/api/core/v1"
)

// AnnotationManagedSysctls on a workload records what the operator set in its
// pod template and the user's values it replaced, so that it can restore them.
const AnnotationManagedSysctls = "keepalive.io/managed-sysctls"

// Managed is the content of AnnotationManagedSysctls.
type Managed struct {
	// Policy names the policy that last patched the template (Ref.String()).
	Policy string `json:"policy"`
	// Set are the keepalive entries the operator wrote.
	Set []corev1.Sysctl `json:"set"`
	// Original are the user's own keepalive entries that Set replaced; an
	// entry of Set with no original was added.
	Original []corev1.Sysctl `json:"original,omitempty"`
}

// ParseManaged reads the annotation; ok is false when it is absent.
func ParseManaged(annotations map[string]string) (m Managed, ok bool, err error) {
	raw, ok := annotations[AnnotationManagedSysctls]
	if !ok {
		return Managed{}, false, nil
	}
	if err := json.Unmarshal([]byte(raw), &m); err != nil {
		return Managed{}, true, fmt.Errorf("annotation %s: %w", AnnotationManagedSysctls, err)
	}
	return m, true, nil
}

// String is the annotation's value.
func (m Managed) String() string {
	raw, _ := json.Marshal(m) // strings only: always marshals
	return string(raw)
}

// RestoreTemplate returns the template's sysctls with what the operator set
// undone: an entry it added is removed, an entry it replaced gets the user's
// value back in its place. An entry the user changed since is left as the
// user wrote it. Other sysctls are untouched, so a template nobody else
// edited gets back exactly its original list.
func RestoreTemplate(sysctls []corev1.Sysctl, m Managed) []corev1.Sysctl {
	var out []corev1.Sysctl
	for _, s := range sysctls {
		i := indexOf(m.Set, s.Name)
		if i < 0 || m.Set[i].Value != s.Value {
			out = append(out, s)
			continue
		}
		if j := indexOf(m.Original, s.Name); j >= 0 {
			out = append(out, m.Original[j])
		}
	}
	return out
}

// PatchTemplate merges the policy's values into a pod template's sysctls as
// the webhook merges them into a pod. When the policy owns the template's
// record, it first undoes what it set before, so that new, larger values
// replace its own earlier ones but never the user's. When another policy owns
// it, that policy's values stay as a floor and it stays the owner: two
// policies that select the same pods settle on the smaller values instead of
// undoing each other, and the owner's undo restores the user's originals. It
// returns the new list, the annotation to record, and whether the list
// changes.
func PatchTemplate(sysctls []corev1.Sysctl, prev *Managed, policy string, v Values) ([]corev1.Sysctl, Managed, bool) {
	base := sysctls
	var inherited Managed
	if prev != nil && prev.Policy == policy {
		base = RestoreTemplate(sysctls, *prev)
	} else if prev != nil {
		inherited = *prev
	}
	m := MergeSysctls(base, v)
	managed := Managed{Policy: policy}
	if inherited.Policy != "" {
		managed.Policy = inherited.Policy
	}
	for _, r := range m.Replaced {
		if setBy(inherited, r) {
			continue // the other policy's value, not the user's
		}
		managed.Original = append(managed.Original, r)
	}
	for _, o := range inherited.Original {
		if !containsSysctl(managed.Original, o.Name) {
			managed.Original = append(managed.Original, o)
		}
	}
	for _, s := range m.Sysctls {
		if isKeepalive(s.Name) && (!containsSysctl(base, s.Name) || containsSysctl(m.Replaced, s.Name) || setBy(inherited, s)) {
			managed.Set = append(managed.Set, s)
		}
	}
	return m.Sysctls, managed, !equalSysctls(m.Sysctls, sysctls)
}

// setBy reports whether m records s, with its value, as set by the operator.
func setBy(m Managed, s corev1.Sysctl) bool {
	i := indexOf(m.Set, s.Name)
	return i >= 0 && m.Set[i].Value == s.Value
}

func isKeepalive(name string) bool {
	return name == SysctlTime || name == SysctlInterval || name == SysctlProbes
}

func containsSysctl(list []corev1.Sysctl, name string) bool { return indexOf(list, name) >= 0 }

func equalSysctls(a, b []corev1.Sysctl) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
