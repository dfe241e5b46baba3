package webhook

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	jsonpatch "github.com/evanphx/json-patch/v5"
	"github.com/go-logr/logr"
	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus/testutil"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/keepalive-operator/keepalive-operator/api/v1alpha1"
	"github.com/keepalive-operator/keepalive-operator/internal/keepalive"
	"github.com/keepalive-operator/keepalive-operator/internal/testobj"
)

// fixture is one file of testdata/admission: a pod, its namespace and the
// policies in, the outcome, patch and warnings out.
type fixture struct {
	Operation string `json:"operation"`
	Cluster   struct {
		Minor                int  `json:"minor"`
		UnsafeSysctlsAllowed bool `json:"unsafeSysctlsAllowed"`
	} `json:"cluster"`
	Namespace struct {
		Name   string            `json:"name"`
		Labels map[string]string `json:"labels"`
	} `json:"namespace"`
	Policies []json.RawMessage `json:"policies"`
	Pod      json.RawMessage   `json:"pod"`
	Want     struct {
		Outcome  string          `json:"outcome"`
		Reason   string          `json:"reason"`
		Patch    json.RawMessage `json:"patch"`
		Warnings []string        `json:"warnings"`
	} `json:"want"`
}

const operatorNamespace = "keepalive-system"

// newTestHandler returns a handler whose store holds the policies (YAML or
// JSON objects of either kind) and namespace.
func newTestHandler(t testing.TB, c keepalive.Cluster, ns string, nsLabels map[string]string, policies ...[]byte) *Handler {
	t.Helper()
	store := NewStore(logr.Discard())
	store.SetNamespace(ns, nsLabels)
	for _, raw := range policies {
		// Fixtures write YAML; the fuzzer writes JSON that YAML may refuse
		// (control characters).
		if !json.Valid(raw) {
			var err error
			if raw, err = yaml.YAMLToJSONStrict(raw); err != nil {
				t.Fatal(err)
			}
		}
		var meta metav1.TypeMeta
		if err := json.Unmarshal(raw, &meta); err != nil {
			t.Fatal(err)
		}
		var obj any
		switch meta.Kind {
		case keepalive.KindKeepalivePolicy:
			obj = &v1alpha1.KeepalivePolicy{}
		case keepalive.KindClusterKeepalivePolicy:
			obj = &v1alpha1.ClusterKeepalivePolicy{}
		default:
			t.Fatalf("unknown policy kind %q", meta.Kind)
		}
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.DisallowUnknownFields()
		if err := dec.Decode(obj); err != nil {
			t.Fatal(err)
		}
		store.apply(obj, false)
	}
	if c.OperatorNamespace == "" {
		c.OperatorNamespace = operatorNamespace
	}
	return &Handler{Store: store, Cluster: func() keepalive.Cluster { return c }, Log: logr.Discard()}
}

// reviewBody returns an AdmissionReview for the pod, as the API server sends it.
func reviewBody(t testing.TB, operation, namespace string, podJSON []byte) []byte {
	t.Helper()
	body, err := testobj.Review(admissionv1.Operation(operation), namespace, podJSON)
	if err != nil {
		t.Fatal(err)
	}
	return body
}

// serve posts the body to the handler and decodes its answer.
func serve(t testing.TB, h http.Handler, body []byte) *admissionv1.AdmissionResponse {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, Path, bytes.NewReader(body)))
	if rec.Code != http.StatusOK {
		t.Fatalf("status %d: %s", rec.Code, rec.Body)
	}
	var out admissionv1.AdmissionReview
	if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil {
		t.Fatalf("decode response %s: %v", rec.Body, err)
	}
	if out.APIVersion != "admission.k8s.io/v1" || out.Kind != "AdmissionReview" || out.Response == nil {
		t.Fatalf("malformed response: %s", rec.Body)
	}
	if !out.Response.Allowed {
		t.Fatalf("the handler denied a pod: %s", rec.Body)
	}
	return out.Response
}

func count(outcome, reason string) float64 {
	return testutil.ToFloat64(admissions.WithLabelValues(outcome, reason))
}

func TestFixtures(t *testing.T) {
	files, err := filepath.Glob("testdata/admission/*.yaml")
	if err != nil || len(files) < 15 {
		t.Fatalf("want at least 15 fixtures, found %d (%v)", len(files), err)
	}
	for _, file := range files {
		t.Run(strings.TrimSuffix(filepath.Base(file), ".yaml"), func(t *testing.T) {
			raw, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			var fx fixture
			if err := yaml.UnmarshalStrict(raw, &fx); err != nil {
				t.Fatal(err)
			}
			if fx.Operation == "" {
				fx.Operation = "CREATE"
			}
			if fx.Cluster.Minor == 0 {
				fx.Cluster.Minor = 36
			}
			policies := make([][]byte, len(fx.Policies))
			for i, p := range fx.Policies {
				policies[i] = p
			}
			h := newTestHandler(t, keepalive.Cluster{Minor: fx.Cluster.Minor, UnsafeSysctlsAllowed: fx.Cluster.UnsafeSysctlsAllowed},
				fx.Namespace.Name, fx.Namespace.Labels, policies...)

			before := count(fx.Want.Outcome, fx.Want.Reason)
			resp := serve(t, h, reviewBody(t, fx.Operation, fx.Namespace.Name, fx.Pod))
			if got := count(fx.Want.Outcome, fx.Want.Reason) - before; got != 1 {
				t.Errorf("keepalive_admissions_total{outcome=%q,reason=%q} grew by %v, want 1", fx.Want.Outcome, fx.Want.Reason, got)
			}
			if resp.UID != "0df28fbd-5f5f-4d5f-8f6c-9a1b2c3d4e5f" {
				t.Errorf("response uid %q does not echo the request's", resp.UID)
			}
			if diff := cmp.Diff(fx.Want.Warnings, resp.Warnings); diff != "" {
				t.Errorf("warnings (-want +got):\n%s", diff)
			}
			if fx.Want.Patch == nil {
				if resp.Patch != nil || resp.PatchType != nil {
					t.Fatalf("want no patch, got %s", resp.Patch)
				}
				return
			}
			if resp.PatchType == nil || *resp.PatchType != admissionv1.PatchTypeJSONPatch {
				t.Errorf("patchType = %v, want JSONPatch", resp.PatchType)
			}
			var want, got any
			_ = json.Unmarshal(fx.Want.Patch, &want)
			if err := json.Unmarshal(resp.Patch, &got); err != nil {
				t.Fatalf("patch is not JSON: %s", resp.Patch)
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("patch (-want +got):\n%s", diff)
			}

			// The patch applies to the pod, leaves a valid pod, and
			// admitting the result again changes nothing.
			patched := applyPatch(t, fx.Pod, resp.Patch)
			again := serve(t, h, reviewBody(t, fx.Operation, fx.Namespace.Name, patched))
			if again.Patch != nil {
				t.Errorf("second admission patched again: %s", again.Patch)
			}
		})
	}
}

func applyPatch(t testing.TB, doc, patch []byte) []byte {
	t.Helper()
	p, err := jsonpatch.DecodePatch(patch)
	if err != nil {
		t.Fatalf("decode patch %s: %v", patch, err)
	}
	out, err := p.Apply(doc)
	if err != nil {
		t.Fatalf("apply patch %s: %v", patch, err)
	}
	if err := json.Unmarshal(out, &corev1.Pod{}); err != nil {
		t.Fatalf("patched pod does not decode: %v", err)
	}
	return out
}

func TestMalformedReviewsAreAllowed(t *testing.T) {
	h := newTestHandler(t, keepalive.Cluster{Minor: 36}, "shop", nil)
	cases := map[string]struct {
		body   string
		reason string
	}{
		"not JSON":         {`{"apiVersion":`, "decode"},
		"no request":       {`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}`, "decode"},
		"object not a pod": {`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","operation":"CREATE","object":{"spec":{"hostNetwork":"yes"}}}}`, "decode"},
		"pod without spec": {`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","operation":"CREATE","object":{"metadata":{"name":"a"}}}}`, "not-a-pod"},
		"capitalised spec": {`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","operation":"CREATE","object":{"metadata":{},"Spec":{}}}}`, "not-a-pod"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			before := count(outcomeError, tc.reason)
			resp := serve(t, h, []byte(tc.body))
			if resp.Patch != nil {
				t.Errorf("patched a malformed review: %s", resp.Patch)
			}
			if got := count(outcomeError, tc.reason) - before; got != 1 {
				t.Errorf("error count for %q grew by %v, want 1", tc.reason, got)
			}
		})
	}
}
