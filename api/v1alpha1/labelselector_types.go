package v1alpha1

// The rules below are those of metav1.LabelSelectorAsSelector, written as
// schema and CEL so that the API server applies them: a key is a qualified
// name (an optional DNS subdomain prefix of at most 253 characters and a
// slash, then a name of at most 63 characters), a value is empty or a name
// of at most 63 characters. The patterns and the enum hold on every
// Kubernetes version; the CEL rules use only standard CEL (matches,
// contains, size, all), so that the CRD installs and the rules apply from
// Kubernetes 1.25.

// LabelSelector selects objects by their labels. It has the JSON shape of a
// Kubernetes label selector: the requirements of matchLabels and
// matchExpressions are ANDed, and an empty selector selects everything.
// Server-side apply replaces it as a whole, as it does a Kubernetes one.
// +structType=atomic
type LabelSelector struct {
	// matchLabels selects objects that carry each of these labels with
	// exactly this value: the same as a matchExpressions entry with
	// operator In and this single value. At most 64 labels.
	// +optional
	// +kubebuilder:validation:MaxProperties=64
	// +kubebuilder:validation:XValidation:rule="self.all(k, k.matches('^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9]$') && (!k.contains('/') || k.matches('^[^/]{0,253}/')))",message="every key must be a label key: an optional prefix (a lowercase DNS subdomain of at most 253 characters) and a slash, then a name of 1 to 63 alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric"
	MatchLabels map[string]LabelValue `json:"matchLabels,omitempty"`

	// matchExpressions are label requirements an object must all meet. At
	// most 64.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=64
	MatchExpressions []LabelSelectorRequirement `json:"matchExpressions,omitempty"`
}

// LabelSelectorRequirement is a key, an operator and the values the
// operator relates the key to.
// +kubebuilder:validation:XValidation:rule="self.operator != 'In' || (has(self.values) && size(self.values) > 0)",message="operator In needs at least one value"
// +kubebuilder:validation:XValidation:rule="self.operator != 'NotIn' || (has(self.values) && size(self.values) > 0)",message="operator NotIn needs at least one value"
// +kubebuilder:validation:XValidation:rule="self.operator != 'Exists' || !has(self.values) || size(self.values) == 0",message="operator Exists takes no values"
// +kubebuilder:validation:XValidation:rule="self.operator != 'DoesNotExist' || !has(self.values) || size(self.values) == 0",message="operator DoesNotExist takes no values"
type LabelSelectorRequirement struct {
	// key is the label key the requirement applies to: an optional prefix
	// (a lowercase DNS subdomain of at most 253 characters) and a slash,
	// then a name of 1 to 63 alphanumerics, '-', '_' or '.', starting and
	// ending with an alphanumeric, such as app.kubernetes.io/name.
	// +required
	// +kubebuilder:validation:MaxLength=317
	// +kubebuilder:validation:Pattern=`^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9]$`
	// +kubebuilder:validation:XValidation:rule="!self.contains('/') || self.matches('^[^/]{0,253}/')",message="the prefix of the key, before the slash, must be at most 253 characters"
	Key string `json:"key"`

	// operator is In or NotIn (the label's value is, or is not, one of
	// values; NotIn also selects objects without the label), Exists or
	// DoesNotExist (the object carries the label, or does not).
	// +required
	Operator LabelSelectorOperator `json:"operator"`

	// values are the label values for In and NotIn, at least one and at
	// most 1024; Exists and DoesNotExist take none.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=1024
	Values []LabelValue `json:"values,omitempty"`
}

// LabelSelectorOperator relates a label key to a set of values.
// +kubebuilder:validation:Enum=In;NotIn;Exists;DoesNotExist
type LabelSelectorOperator string

// The operators of a label requirement.
const (
	LabelSelectorOpIn           LabelSelectorOperator = "In"
	LabelSelectorOpNotIn        LabelSelectorOperator = "NotIn"
	LabelSelectorOpExists       LabelSelectorOperator = "Exists"
	LabelSelectorOpDoesNotExist LabelSelectorOperator = "DoesNotExist"
)

// LabelValue is the value of a label: empty, or 1 to 63 alphanumerics, '-',
// '_' or '.', starting and ending with an alphanumeric.
// +kubebuilder:validation:MaxLength=63
// +kubebuilder:validation:Pattern=`^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$`
type LabelValue string
