package keepalive

import (
	"encoding/json"
	"fmt"
	"slices"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"

	"github.com/keepalive-operator/keepalive-operator/api/v1alpha1"
)

// AnnotationManagedSysctls on a workload records what the operator set in its
// pod template and the user's values it replaced, so that it can restore them.
const AnnotationManagedSysctls = "keepalive.io/managed-sysctls"

// Managed is the content of AnnotationManagedSysctls.
type Managed struct {
	// Policy names the policy whose values the template carries (Ref.String()).
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
	if _, err := ParseRef(m.Policy); err != nil || len(m.Set) == 0 {
		return Managed{}, true, fmt.Errorf("annotation %s: %q is not a record of the operator", AnnotationManagedSysctls, raw)
	}
	return m, true, nil
}

// String is the annotation's value.
func (m Managed) String() string {
	raw, _ := json.Marshal(m) // strings only: always marshals
	return string(raw)
}

// Template is what a workload's pod template should carry.
type Template struct {
	// Skip and Policy are the admission decision for a pod of the template
	// as the user wrote it: the governing policy, or why none applies.
	Skip   SkipReason
	Policy *Policy
	// Sysctls is the template's sysctl list as it should be.
	Sysctls []corev1.Sysctl
	// Record is the annotation to keep; nil for none.
	Record *Managed
	// SysctlsChanged and RecordChanged say what differs from the template
	// and record given.
	SysctlsChanged, RecordChanged bool
}

// Changed reports whether the workload must be written.
func (t Template) Changed() bool { return t.SysctlsChanged || t.RecordChanged }

// keepaliveNames are the sysctls the operator sets, in the order it appends
// them.
var keepaliveNames = [3]string{SysctlTime, SysctlInterval, SysctlProbes}

// entry is one keepalive sysctl's value, or its absence.
type entry struct {
	value string
	ok    bool
}

// DesiredTemplate decides what a workload's pod template should carry, given
// its current sysctls (in tmpl) and the operator's record of them (rec, nil
// when absent). It takes the admission decision for a pod of the template as
// the user wrote it (the record's changes undone), over the policies that
// patch templates, and applies it in place: entries keep their positions,
// missing ones are appended, so the order of the user's list never matters.
//
// The result depends only on the user's own values, the namespace and the
// policies, never on the order in which policies came and went. Deciding
// again on the result changes nothing, and once no policy applies the
// user's list is back exactly as written (entries, order and values).
func DesiredTemplate(tmpl PodView, rec *Managed, ns Namespace, c Cluster, policies ...[]Policy) Template {
	own := ownValues(tmpl.Sysctls, rec)
	user := tmpl
	user.Sysctls = withValues(tmpl.Sysctls, own)
	d := Decide(user, ns, c, patching(policies)...)

	want := own
	if d.Skip == "" && d.Sysctls != nil {
		for i, name := range keepaliveNames {
			want[i] = lookup(d.Sysctls, name)
		}
	}
	out := Template{Skip: d.Skip, Policy: d.Policy, Sysctls: withValues(tmpl.Sysctls, want)}
	var m Managed
	for i, name := range keepaliveNames {
		if want[i] == own[i] {
			continue
		}
		m.Set = append(m.Set, corev1.Sysctl{Name: name, Value: want[i].value})
		if own[i].ok {
			m.Original = append(m.Original, corev1.Sysctl{Name: name, Value: own[i].value})
		}
	}
	if len(m.Set) > 0 {
		m.Policy = d.Policy.name
		out.Record = &m
	}
	out.SysctlsChanged = !slices.Equal(out.Sysctls, tmpl.Sysctls)
	out.RecordChanged = (rec == nil) != (out.Record == nil) || rec != nil && rec.String() != out.Record.String()
	return out
}

// patching keeps the policies that patch templates (rollout: PatchTemplates).
func patching(lists [][]Policy) [][]Policy {
	out := make([][]Policy, len(lists))
	for i, list := range lists {
		out[i] = slices.DeleteFunc(slices.Clone(list), func(p Policy) bool { return p.Rollout == v1alpha1.RolloutNone })
	}
	return out
}

// ownValues returns the user's own keepalive values: the template's, except
// where an entry still holds what the record says the operator set, which
// stands for the user's original (or its absence).
func ownValues(sysctls []corev1.Sysctl, rec *Managed) [3]entry {
	var own [3]entry
	for i, name := range keepaliveNames {
		own[i] = lookup(sysctls, name)
		if rec == nil || !own[i].ok {
			continue
		}
		if set := lookup(rec.Set, name); set == own[i] {
			own[i] = lookup(rec.Original, name)
		}
	}
	return own
}

// withValues returns the list with each keepalive entry set to vals in
// place (removed when absent), and the missing ones appended.
func withValues(sysctls []corev1.Sysctl, vals [3]entry) []corev1.Sysctl {
	var out []corev1.Sysctl
	var seen [3]bool
	for _, s := range sysctls {
		i := slices.Index(keepaliveNames[:], NormalizeSysctlName(s.Name))
		if i < 0 || seen[i] {
			out = append(out, s)
			continue
		}
		seen[i] = true
		if vals[i].ok {
			out = append(out, corev1.Sysctl{Name: s.Name, Value: vals[i].value})
		}
	}
	for i, name := range keepaliveNames {
		if !seen[i] && vals[i].ok {
			out = append(out, corev1.Sysctl{Name: name, Value: vals[i].value})
		}
	}
	return out
}

// lookup finds a keepalive sysctl by name in either form.
func lookup(sysctls []corev1.Sysctl, name string) entry {
	if i := indexOfSysctl(sysctls, name); i >= 0 {
		return entry{sysctls[i].Value, true}
	}
	return entry{}
}

// PodTemplate returns the pod template of a workload whose template the
// operator patches (Deployment, StatefulSet, DaemonSet, ReplicaSet, CronJob),
// nil for anything else.
func PodTemplate(obj any) *corev1.PodTemplateSpec {
	switch o := obj.(type) {
	case *appsv1.Deployment:
		return &o.Spec.Template
	case *appsv1.StatefulSet:
		return &o.Spec.Template
	case *appsv1.DaemonSet:
		return &o.Spec.Template
	case *appsv1.ReplicaSet:
		return &o.Spec.Template
	case *batchv1.CronJob:
		return &o.Spec.JobTemplate.Spec.Template
	}
	return nil
}

// TemplateView is what the decisions read of a workload's pod template
// (PodTemplate): a pod of it, with the tolerations a DaemonSet gives its
// pods.
func TemplateView(obj any) PodView {
	t := PodTemplate(obj)
	v := SpecView(t.Labels, t.Annotations, &t.Spec)
	if _, ok := obj.(*appsv1.DaemonSet); ok {
		v.Placement.Tolerations = append(slices.Clone(t.Spec.Tolerations), DaemonSetTolerations...)
	}
	return v
}

// SpecView is what the decisions read of a pod with these labels,
// annotations and spec.
func SpecView(labels, annotations map[string]string, spec *corev1.PodSpec) PodView {
	v := PodView{Labels: labels, Annotations: annotations, HostNetwork: spec.HostNetwork,
		Placement: Placement{NodeName: spec.NodeName, NodeSelector: spec.NodeSelector, Tolerations: spec.Tolerations}}
	if spec.SecurityContext != nil {
		v.Sysctls = spec.SecurityContext.Sysctls
	}
	if spec.OS != nil {
		v.OS = string(spec.OS.Name)
	}
	if spec.Affinity != nil {
		v.Placement.NodeAffinity = spec.Affinity.NodeAffinity
	}
	return v
}
