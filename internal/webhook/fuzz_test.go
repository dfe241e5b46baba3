package webhook

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/keepalive-operator/keepalive-operator/internal/keepalive"
)

// Kernel limits of the keepalive sysctls: time and interval are ints of
// jiffies (at most INT_MAX/HZ seconds with HZ up to 1000); probes are
// capped at 127 like TCP_KEEPCNT.
const (
	maxKernelSeconds = math.MaxInt32 / 1000
	maxKernelProbes  = 127
)

// FuzzAdmission admits arbitrary pods under an arbitrary policy: the
// handler never panics, any patch applies to the pod, admitting the patched
// pod again yields no patch, and every keepalive value is within the
// kernel's bounds.
func FuzzAdmission(f *testing.F) {
	files, _ := filepath.Glob("testdata/admission/*.yaml")
	for i, file := range files {
		raw, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		var fx fixture
		if err := yaml.Unmarshal(raw, &fx); err != nil {
			f.Fatal(err)
		}
		f.Add([]byte(fx.Pod), uint8(i), int32(0), int32(50), int32(0), int32(9), false, "")
	}
	f.Add([]byte(`{"metadata":{"annotations":null},"spec":{"securityContext":null}}`), uint8(0), int32(350), int32(90), int32(1), int32(127), false, "x")
	f.Add([]byte(`{"metadata":{},"spec":{"securityContext":{"sysctls":[{"name":"net.ipv4.tcp_keepalive_time","value":"-5"}]}}}`), uint8(200), int32(2), int32(10), int32(0), int32(1), false, "")

	presets := keepalive.Presets()
	f.Fuzz(func(t *testing.T, podJSON []byte, preset uint8, seconds, percent, interval, probes int32, audit bool, label string) {
		// The API server sends canonical JSON: one value per key.
		var canonical map[string]any
		if json.Unmarshal(podJSON, &canonical) != nil {
			return
		}
		podJSON, _ = json.Marshal(canonical)

		var hop string
		switch {
		case int(preset) < len(presets) && seconds == 0:
			hop = `{"preset":"` + string(presets[preset]) + `"}`
		case int(preset) < len(presets):
			hop = `{"preset":"` + string(presets[preset]) + `","seconds":` + strconv.Itoa(int(seconds)) + `}`
		default:
			hop = `{"seconds":` + strconv.Itoa(int(seconds)) + `}`
		}
		spec := `"idleTimeouts":[` + hop + `],"timePercent":` + strconv.Itoa(int(percent)) + `,"probes":` + strconv.Itoa(int(probes))
		if interval != 0 {
			spec += `,"intervalSeconds":` + strconv.Itoa(int(interval))
		}
		if audit {
			spec += `,"mode":"Audit"`
		}
		labelJSON, _ := json.Marshal(label)
		policy := `{"kind":"ClusterKeepalivePolicy","metadata":{"name":"fuzz"},"spec":{` + spec +
			`,"podSelector":{"matchExpressions":[{"key":"skip","operator":"NotIn","values":[` + string(labelJSON) + `]}]}}}`
		h := newTestHandler(t, keepalive.Cluster{Minor: 36}, "shop", nil, []byte(policy))

		panics := count(outcomeError, "panic")
		resp := serve(t, h, reviewBody(t, "CREATE", "shop", podJSON))
		if count(outcomeError, "panic") != panics {
			t.Fatalf("the handler panicked on %s", podJSON)
		}
		// And only pods it decoded: the handler reads just the fields it
		// needs, and trusts the API server for the shape of the rest.
		if resp.Patch == nil || json.Unmarshal(podJSON, &corev1.Pod{}) != nil {
			return
		}
		patched := applyPatch(t, podJSON, resp.Patch)
		if again := serve(t, h, reviewBody(t, "CREATE", "shop", patched)); again.Patch != nil {
			t.Fatalf("second admission patched again: %s\npod: %s", again.Patch, patched)
		}
		var pod corev1.Pod
		if err := json.Unmarshal(patched, &pod); err != nil {
			t.Fatal(err)
		}
		limits := map[string]int{keepalive.SysctlTime: maxKernelSeconds, keepalive.SysctlInterval: maxKernelSeconds, keepalive.SysctlProbes: maxKernelProbes}
		seen := map[string]bool{}
		for _, s := range pod.Spec.SecurityContext.Sysctls {
			name := keepalive.NormalizeSysctlName(s.Name)
			limit, ok := limits[name]
			if !ok {
				continue
			}
			seen[name] = true // every entry of a name must be in range: the kubelet applies them all
			if v, ok := keepalive.ReadSysctl(name, s.Value); !ok || v < 1 || v > int64(limit) {
				t.Fatalf("%s=%q is not read by the kernel as 1..%d", s.Name, s.Value, limit)
			}
		}
		if len(seen) < len(limits) {
			t.Fatalf("patched pod lacks %v: %s", limits, patched)
		}
	})
}
