// Package webhook serves the pod admission webhook: a thin HTTP layer over
// keepalive.Decide that reads policies from a Store and answers with a
// minimal JSON patch.
package webhook

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	kjson "sigs.k8s.io/json"

	"github.com/keepalive-operator/keepalive-operator/internal/keepalive"
)

// Path is where the API server sends pod admission reviews; it matches
// config/webhook/manifests.yaml.
const Path = "/mutate-v1-pod"

// maxBodyBytes bounds a review: the API server limits objects to 3 MiB.
const maxBodyBytes = 4 << 20

// Handler answers admission.k8s.io/v1 AdmissionReviews for pods. It never
// denies a pod: whatever goes wrong, the pod is allowed unchanged, and the
// error logged and counted.
//
// Every pod creation in the cluster passes through it, so it decodes only the
// fields the decision reads, in one pass over the body, and writes the patch
// and the response itself: a typed decode of the whole pod and a diff of the
// re-encoded object cost several times as much (see BENCHMARKS.md).
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

// review is the part of an AdmissionReview the handler reads.
type review struct {
	Request struct {
		UID       string `json:"uid"`
		Namespace string `json:"namespace"`
		Operation string `json:"operation"`
		Object    pod    `json:"object"`
	} `json:"request"`
}

// pod is the part of a Pod the decision reads. Metadata and spec are
// pointers to tell a pod from something else.
type pod struct {
	Metadata *struct {
		Labels      map[string]string `json:"labels"`
		Annotations map[string]string `json:"annotations"`
	} `json:"metadata"`
	Spec *struct {
		HostNetwork  bool                `json:"hostNetwork"`
		NodeName     string              `json:"nodeName"`
		NodeSelector map[string]string   `json:"nodeSelector"`
		Tolerations  []corev1.Toleration `json:"tolerations"`
		Affinity     *struct {
			NodeAffinity *corev1.NodeAffinity `json:"nodeAffinity"`
		} `json:"affinity"`
		OS struct {
			Name string `json:"name"`
		} `json:"os"`
		SecurityContext *struct {
			Sysctls []corev1.Sysctl `json:"sysctls"`
		} `json:"securityContext"`
	} `json:"spec"`
}

// result is what goes back to the API server.
type result struct {
	uid      string
	patch    []byte
	warnings []string
}

// buffers are reused across requests.
type buffers struct {
	body  bytes.Buffer
	patch []byte
	out   []byte
}

var bufferPool = sync.Pool{New: func() any { return new(buffers) }}

var jsonContentType = []string{"application/json"}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	bufs := bufferPool.Get().(*buffers)
	defer bufferPool.Put(bufs)

	res, outcome, reason := h.admit(w, r, bufs)
	observe(outcome, reason, time.Since(start))

	bufs.out = appendResponse(bufs.out[:0], res)
	w.Header()["Content-Type"] = jsonContentType
	_, _ = w.Write(bufs.out)
}

// admit decides on the review in r's body and returns the outcome and
// reason for the metrics.
func (h *Handler) admit(w http.ResponseWriter, r *http.Request, bufs *buffers) (res result, outcome, reason string) {
	defer func() {
		if p := recover(); p != nil {
			h.Log.Error(fmt.Errorf("%v", p), "admission panicked; pod allowed unchanged")
			res, outcome, reason = result{uid: res.uid}, outcomeError, failPanic
		}
	}()
	bufs.body.Reset()
	if _, err := bufs.body.ReadFrom(http.MaxBytesReader(w, r.Body, maxBodyBytes)); err != nil {
		h.Log.Error(err, "read admission review; pod allowed unchanged")
		return res, outcomeError, failRead
	}
	var rev review
	// Case-sensitive like the API server: the patch's paths must name the
	// very fields that were read.
	err := kjson.UnmarshalCaseSensitivePreserveInts(bufs.body.Bytes(), &rev)
	if err == nil && rev.Request.UID == "" {
		err = errors.New("no request uid")
	}
	if err != nil {
		h.Log.Error(err, "decode admission review; pod allowed unchanged")
		return res, outcomeError, failDecode
	}
	req := &rev.Request
	res.uid = req.UID
	if req.Operation != "CREATE" {
		return res, outcomeSkipped, "not-a-create"
	}
	p := &req.Object
	if p.Metadata == nil || p.Spec == nil {
		h.Log.Error(errors.New("object without metadata or spec"), "read pod; pod allowed unchanged", "uid", req.UID)
		return res, outcomeError, failNotAPod
	}

	labels, known, namespaced, cluster := h.Store.Lookup(req.Namespace)
	if !known {
		ns := &corev1.Namespace{}
		if err := h.Namespaces.Get(r.Context(), client.ObjectKey{Name: req.Namespace}, ns); err != nil {
			h.Log.Error(err, "read namespace; pod allowed unchanged", "namespace", req.Namespace)
			return res, outcomeError, failNamespace
		}
		labels = ns.Labels
	}
	view := keepalive.PodView{
		Labels:      p.Metadata.Labels,
		Annotations: p.Metadata.Annotations,
		HostNetwork: p.Spec.HostNetwork,
		OS:          p.Spec.OS.Name,
		Placement:   keepalive.Placement{NodeName: p.Spec.NodeName, NodeSelector: p.Spec.NodeSelector, Tolerations: p.Spec.Tolerations},
	}
	if p.Spec.Affinity != nil {
		view.Placement.NodeAffinity = p.Spec.Affinity.NodeAffinity
	}
	if p.Spec.SecurityContext != nil {
		view.Sysctls = p.Spec.SecurityContext.Sysctls
	}
	d := keepalive.Decide(view, keepalive.Namespace{Name: req.Namespace, Labels: labels}, h.Cluster(), namespaced, cluster)
	res.warnings = d.Warnings

	if log := h.Log.V(1); log.Enabled() {
		policy := ""
		if d.Policy != nil {
			policy = d.Policy.Ref.String()
		}
		log.Info("pod admitted", "namespace", req.Namespace, "uid", req.UID, "policy", policy, "skip", string(d.Skip), "changed", d.Changed())
	}
	switch {
	case d.Skip != "":
		return res, outcomeSkipped, string(d.Skip)
	case !d.Changed():
		return res, outcomeCompliant, ""
	}
	bufs.patch = appendPatch(bufs.patch[:0], p, d)
	res.patch = bufs.patch
	return res, outcomeInjected, ""
}

// appendPatch appends the JSON patch that applies d to p: the annotations
// (the whole map when the pod has none), then the sysctls (the whole
// securityContext when the pod has none; the list is atomic, so it is set
// whole).
func appendPatch(b []byte, p *pod, d keepalive.Decision) []byte {
	b = append(b, '[')
	if len(d.Annotations) > 0 {
		if p.Metadata.Annotations == nil {
			b = append(b, `{"op":"add","path":"/metadata/annotations","value":{`...)
			for i, a := range d.Annotations {
				if i > 0 {
					b = append(b, ',')
				}
				b = appendString(b, a.Key)
				b = append(b, ':')
				b = appendString(b, a.Value)
			}
			b = append(b, "}},"...)
		} else {
			for _, a := range d.Annotations {
				b = append(b, `{"op":"add","path":`...)
				b = appendString(b, "/metadata/annotations/"+pointerEscaper.Replace(a.Key))
				b = append(b, `,"value":`...)
				b = appendString(b, a.Value)
				b = append(b, "},"...)
			}
		}
	}
	if d.Sysctls != nil {
		if p.Spec.SecurityContext == nil {
			b = append(b, `{"op":"add","path":"/spec/securityContext","value":{"sysctls":`...)
			b = appendSysctls(b, d.Sysctls)
			b = append(b, "}},"...)
		} else {
			b = append(b, `{"op":"add","path":"/spec/securityContext/sysctls","value":`...)
			b = appendSysctls(b, d.Sysctls)
			b = append(b, "},"...)
		}
	}
	b[len(b)-1] = ']' // the last comma
	return b
}

func appendSysctls(b []byte, sysctls []corev1.Sysctl) []byte {
	b = append(b, '[')
	for i, s := range sysctls {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"name":`...)
		b = appendString(b, s.Name)
		b = append(b, `,"value":`...)
		b = appendString(b, s.Value)
		b = append(b, '}')
	}
	return append(b, ']')
}

// pointerEscaper escapes a JSON Pointer reference token (RFC 6901).
var pointerEscaper = strings.NewReplacer("~", "~0", "/", "~1")

// appendResponse appends the AdmissionReview that answers with res.
func appendResponse(b []byte, res result) []byte {
	b = append(b, `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":`...)
	b = appendString(b, res.uid)
	b = append(b, `,"allowed":true`...)
	if res.patch != nil {
		b = append(b, `,"patchType":"JSONPatch","patch":"`...)
		b = base64.StdEncoding.AppendEncode(b, res.patch)
		b = append(b, '"')
	}
	if len(res.warnings) > 0 {
		b = append(b, `,"warnings":[`...)
		for i, w := range res.warnings {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendString(b, w)
		}
		b = append(b, ']')
	}
	return append(b, "}}\n"...)
}

// appendString appends s as a JSON string. s is valid UTF-8 (it was decoded
// from JSON or written by the operator), so only quotes, backslashes and
// control characters need escaping.
func appendString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' {
			continue
		}
		b = append(b, s[start:i]...)
		switch c {
		case '"', '\\':
			b = append(b, '\\', c)
		case '\n':
			b = append(b, '\\', 'n')
		case '\r':
			b = append(b, '\\', 'r')
		case '\t':
			b = append(b, '\\', 't')
		default:
			b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		}
		start = i + 1
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
