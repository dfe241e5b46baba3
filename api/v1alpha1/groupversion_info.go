// Package v1alpha1 holds the keepalive.io/v1alpha1 API: KeepalivePolicy and
// ClusterKeepalivePolicy.
// +kubebuilder:object:generate=true
// +groupName=keepalive.io
package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

var (
	// GroupVersion is the group and version of this API.
	GroupVersion = schema.GroupVersion{Group: "keepalive.io", Version: "v1alpha1"}

	// SchemeBuilder adds the types of this API to a scheme.
	SchemeBuilder = runtime.NewSchemeBuilder(addKnownTypes)

	// AddToScheme adds the types of this API to a scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)

func addKnownTypes(s *runtime.Scheme) error {
	s.AddKnownTypes(GroupVersion,
		&KeepalivePolicy{}, &KeepalivePolicyList{},
		&ClusterKeepalivePolicy{}, &ClusterKeepalivePolicyList{},
		&KeepaliveNodeReport{}, &KeepaliveNodeReportList{},
	)
	metav1.AddToGroupVersion(s, GroupVersion)
	return nil
}
