// Package webhook serves the pod admission webhook: a thin HTTP layer over
// keepalive.Decide that reads policies from a Store and answers with a
// minimal JSON patch.
package webhook

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/keepalive-operator/keepalive-operator/internal/keepalive"
)

// Path is where the API server sends pod admission reviews; it matches
// config/webhook/manifests.yaml.
const Path = "/mutate-v1-pod"

// maxBodyBytes bounds a review: the API server limits objects to 3 MiB.
const maxBodyBytes = 4 << 20

// Handler answers AdmissionReviews for pods. It never denies a pod: whatever
// goes wrong, the pod is allowed unchanged, and the error logged and counted.
//
// It decodes only the fields the decision reads, in one pass over the body,
// and writes the patch itself; a typed decode of the whole pod and a diff of
// the re-encoded object would cost several times as much on every pod
// creation in the cluster (see BENCHMARKS.md).
type Handler struct {
	Store *Store
	// Cluster is what the decision needs of the cluster; it may change while
	// the handler serves (a cluster upgrade).
	Cluster func() keepalive.Cluster
	// Namespaces reads a namespace the store has not seen yet (created an
	// instant before its first pod).
	Namespaces client.Reader
	Log        logr.Logger
}

// review is the part of an admission.k8s.io/v1 AdmissionReview the handler
// reads.
type review struct {
	APIVersion string         `json:"apiVersion"`
	Kind       string         `json:"kind"`
	Request    *reviewRequest `json:"request"`
}

type reviewRequest struct {
	UID       string `json:"uid"`
	Namespace string `json:"namespace"`
	Operation string `json:"operation"`
	Object    *pod   `json:"object"`
}

type pod struct {
	Metadata struct {
		Name         string            `json:"name"`
		GenerateName string            `json:"generateName"`
		Labels       map[string]string `json:"labels"`
		Annotations  map[string]string `json:"annotations"`
	} `json:"metadata"`
	Spec struct {
		HostNetwork bool `json:"hostNetwork"`
		OS          *struct {
			Name string `json:"name"`
		} `json:"os"`
		SecurityContext *struct {
			Sysctls []corev1.Sysctl `json:"sysctls"`
		} `json:"securityContext"`
	} `json:"spec"`
}

type reviewResponse struct {
	APIVersion string         `json:"apiVersion"`
	Kind       string         `json:"kind"`
	Response   responseFields `json:"response"`
}

type responseFields struct {
	UID       string   `json:"uid"`
	Allowed   bool     `json:"allowed"`
	PatchType string   `json:"patchType,omitempty"`
	Patch     []byte   `json:"patch,omitempty"`
	Warnings  []string `json:"warnings,omitempty"`
}

var buffers = sync.Pool{New: func() any { return new(bytes.Buffer) }}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	buf := buffers.Get().(*bytes.Buffer)
	buf.Reset()
	defer buffers.Put(buf)

	var rev review
	resp := responseFields{Allowed: true}
	outcome, reason := h.admit(r, buf, &rev, &resp)
	observe(outcome, reason, time.Since(start))

	apiVersion := rev.APIVersion
	if apiVersion == "" {
		apiVersion = "admission.k8s.io/v1"
	}
	buf.Reset()
	if err := json.NewEncoder(buf).Encode(reviewResponse{APIVersion: apiVersion, Kind: "AdmissionReview", Response: resp}); err != nil {
		h.Log.Error(err, "encode admission response")
		http.Error(w, "encode admission response", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(buf.Bytes())
}

// admit fills resp for the review in r's body and returns the outcome and
// reason for the metrics.
func (h *Handler) admit(r *http.Request, buf *bytes.Buffer, rev *review, resp *responseFields) (outcome, reason string) {
	defer func() {
		if p := recover(); p != nil {
			h.Log.Error(fmt.Errorf("%v", p), "admission panicked; pod allowed unchanged")
			*resp = responseFields{UID: resp.UID, Allowed: true}
			outcome, reason = outcomeError, "panic"
		}
	}()
	if _, err := buf.ReadFrom(http.MaxBytesReader(nil, r.Body, maxBodyBytes)); err != nil {
		h.Log.Error(err, "read admission review; pod allowed unchanged")
		return outcomeError, "read"
	}
	if err := json.Unmarshal(buf.Bytes(), rev); err != nil || rev.Request == nil {
		h.Log.Error(errors.Join(err, errors.New("no request")), "decode admission review; pod allowed unchanged")
		return outcomeError, "decode"
	}
	req := rev.Request
	resp.UID = req.UID
	if req.Operation != "CREATE" || req.Object == nil {
		return outcomeSkipped, "not-a-create"
	}
	p := req.Object

	labels, known, namespaced, cluster := h.Store.Lookup(req.Namespace)
	if !known {
		ns := &corev1.Namespace{}
		if err := h.Namespaces.Get(r.Context(), client.ObjectKey{Name: req.Namespace}, ns); err != nil {
			h.Log.Error(err, "read namespace; pod allowed unchanged", "namespace", req.Namespace)
			return outcomeError, "namespace"
		}
		labels = ns.Labels
	}
	view := keepalive.PodView{
		Labels:      p.Metadata.Labels,
		Annotations: p.Metadata.Annotations,
		HostNetwork: p.Spec.HostNetwork,
	}
	if p.Spec.OS != nil {
		view.OS = p.Spec.OS.Name
	}
	if p.Spec.SecurityContext != nil {
		view.Sysctls = p.Spec.SecurityContext.Sysctls
	}
	d := keepalive.Decide(view, keepalive.Namespace{Name: req.Namespace, Labels: labels}, h.Cluster(), namespaced, cluster)
	resp.Warnings = d.Warnings

	if log := h.Log.V(1); log.Enabled() {
		log.Info("pod admitted", "namespace", req.Namespace, "pod", podName(p), "policy", policyName(d), "skip", string(d.Skip), "changed", d.Changed())
	}
	switch {
	case d.Skip != "":
		return outcomeSkipped, string(d.Skip)
	case !d.Changed():
		return outcomeCompliant, ""
	}
	patch, err := buildPatch(p, d)
	if err != nil {
		h.Log.Error(err, "build patch; pod allowed unchanged")
		return outcomeError, "patch"
	}
	resp.PatchType = "JSONPatch"
	resp.Patch = patch
	return outcomeInjected, ""
}

func podName(p *pod) string {
	if p.Metadata.Name != "" {
		return p.Metadata.Name
	}
	return p.Metadata.GenerateName + "*"
}

func policyName(d keepalive.Decision) string {
	if d.Policy == nil {
		return ""
	}
	return d.Policy.Ref.String()
}

// buildPatch returns the JSON patch that applies d to p: the annotations
// (the whole map when the pod has none), and the sysctls (the whole
// securityContext when the pod has none; the list is atomic, so it is set
// whole).
func buildPatch(p *pod, d keepalive.Decision) ([]byte, error) {
	type op struct {
		Op    string `json:"op"`
		Path  string `json:"path"`
		Value any    `json:"value"`
	}
	ops := make([]op, 0, 3)
	if len(d.Annotations) > 0 {
		if p.Metadata.Annotations == nil {
			m := make(map[string]string, len(d.Annotations))
			for _, a := range d.Annotations {
				m[a.Key] = a.Value
			}
			ops = append(ops, op{"add", "/metadata/annotations", m})
		} else {
			for _, a := range d.Annotations {
				ops = append(ops, op{"add", "/metadata/annotations/" + pointerEscaper.Replace(a.Key), a.Value})
			}
		}
	}
	if d.Sysctls != nil {
		if p.Spec.SecurityContext == nil {
			ops = append(ops, op{"add", "/spec/securityContext", map[string][]corev1.Sysctl{"sysctls": d.Sysctls}})
		} else {
			ops = append(ops, op{"add", "/spec/securityContext/sysctls", d.Sysctls})
		}
	}
	return json.Marshal(ops)
}

// pointerEscaper escapes a JSON Pointer reference token (RFC 6901).
var pointerEscaper = strings.NewReplacer("~", "~0", "/", "~1")
