package keepalive

import (
	"errors"
	"fmt"

	"github.com/keepalive-operator/keepalive-operator/api/v1alpha1"
)

// Defaults of the optional spec fields.
const (
	DefaultTimePercent int32 = 50
	DefaultProbes      int32 = 9
	// MaxDerivedInterval caps the derived interval: past 30 s a lost probe
	// delays the detection of a dead peer for little gain.
	MaxDerivedInterval int32 = 30
)

// MaxHops is the most idle timeouts a policy lists.
const MaxHops = 16

// Values are the three keepalive sysctls.
type Values struct {
	TimeSeconds     int32
	IntervalSeconds int32
	Probes          int32
}

// DetectionSeconds is the longest a dead peer goes unnoticed on an idle
// connection: the first probe after TimeSeconds, then Probes unanswered probes
// IntervalSeconds apart.
func (v Values) DetectionSeconds() int32 {
	return v.TimeSeconds + v.IntervalSeconds*v.Probes
}

// Hop is a resolved hop of the path.
type Hop struct {
	// Name is the hop's name, else its preset, else idleTimeouts[i].
	Name    string
	Seconds int32
	Layer   Layer
}

// Result is what a policy spec works out to.
type Result struct {
	Values Values
	// Governing is the hop with the shortest idle timeout (the first of
	// equals).
	Governing Hop
	// L7Hops are the hops whose timers keepalive probes do not reset.
	L7Hops []Hop
}

// Compute works out the keepalive values of a policy spec:
//
//	T        = the shortest idle timeout of the hops
//	time     = max(1, floor(T × timePercent / 100))
//	interval = clamp(floor((T − time) / 3), 1, 30) unless given
//	probes   = 9 unless given
//
// A zero timePercent or probes means the default. It returns an error naming
// the field for a spec the API server should have rejected.
func Compute(spec v1alpha1.KeepalivePolicySpec) (Result, error) {
	if n := len(spec.IdleTimeouts); n < 1 || n > MaxHops {
		return Result{}, fmt.Errorf("idleTimeouts: must have 1 to %d hops, has %d", MaxHops, n)
	}
	var res Result
	for i, h := range spec.IdleTimeouts {
		hop, err := resolveHop(i, h)
		if err != nil {
			return Result{}, err
		}
		if i == 0 || hop.Seconds < res.Governing.Seconds {
			res.Governing = hop
		}
		if hop.Layer == L7 {
			res.L7Hops = append(res.L7Hops, hop)
		}
	}
	t := res.Governing.Seconds

	percent := spec.TimePercent
	if percent == 0 {
		percent = DefaultTimePercent
	}
	if percent < 10 || percent > 90 {
		return Result{}, fmt.Errorf("timePercent: must be between 10 and 90, is %d", percent)
	}
	res.Values.TimeSeconds = max(1, int32(int64(t)*int64(percent)/100))

	if spec.IntervalSeconds != nil {
		iv := *spec.IntervalSeconds
		if iv < 1 || iv > 32767 {
			return Result{}, fmt.Errorf("intervalSeconds: must be between 1 and 32767, is %d", iv)
		}
		if res.Values.TimeSeconds+iv >= t {
			return Result{}, fmt.Errorf("intervalSeconds: keepalive time %d s plus interval %d s must be less than the shortest idle timeout %d s (%s)",
				res.Values.TimeSeconds, iv, t, res.Governing.Name)
		}
		res.Values.IntervalSeconds = iv
	} else {
		res.Values.IntervalSeconds = min(max((t-res.Values.TimeSeconds)/3, 1), MaxDerivedInterval)
	}

	res.Values.Probes = spec.Probes
	if res.Values.Probes == 0 {
		res.Values.Probes = DefaultProbes
	}
	if res.Values.Probes < 1 || res.Values.Probes > 127 {
		return Result{}, fmt.Errorf("probes: must be between 1 and 127, is %d", res.Values.Probes)
	}
	return res, nil
}

func resolveHop(i int, h v1alpha1.Hop) (Hop, error) {
	field := fmt.Sprintf("idleTimeouts[%d]", i)
	hop := Hop{Name: h.Name, Layer: L4}
	switch {
	case h.Preset != "":
		info, ok := presets[h.Preset]
		if !ok {
			return Hop{}, fmt.Errorf("%s.preset: unknown preset %q", field, h.Preset)
		}
		hop.Seconds, hop.Layer = info.DefaultSeconds, info.Layer
		if h.Seconds != nil {
			s := *h.Seconds
			if info.Fixed() {
				return Hop{}, fmt.Errorf("%s.seconds: preset %s has a fixed idle timeout of %d seconds", field, h.Preset, info.DefaultSeconds)
			}
			if s < info.MinSeconds || s > info.MaxSeconds {
				return Hop{}, fmt.Errorf("%s.seconds: seconds for preset %s must be between %d and %d, is %d", field, h.Preset, info.MinSeconds, info.MaxSeconds, s)
			}
			hop.Seconds = s
		}
		if hop.Name == "" {
			hop.Name = string(h.Preset)
		}
	case h.Seconds != nil:
		s := *h.Seconds
		if s < CustomMinSeconds || s > CustomMaxSeconds {
			return Hop{}, fmt.Errorf("%s.seconds: seconds of a custom hop must be between %d and %d, is %d", field, CustomMinSeconds, CustomMaxSeconds, s)
		}
		hop.Seconds = s
	default:
		return Hop{}, errors.New(field + ": a hop needs a preset or seconds")
	}
	if hop.Name == "" {
		hop.Name = field
	}
	return hop, nil
}
