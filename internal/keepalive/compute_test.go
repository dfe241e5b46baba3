package keepalive

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/keepalive-operator/keepalive-operator/api/v1alpha1"
	"github.com/keepalive-operator/keepalive-operator/internal/testobj"
)

func TestComputePresets(t *testing.T) {
	// Expected values worked out by hand from DESIGN.md's rule.
	cases := map[v1alpha1.Preset]struct {
		seconds   int32
		layer     Layer
		want      Values
		detection int32
	}{
		v1alpha1.PresetAWSNLB:             {350, L4, Values{175, 30, 9}, 445},
		v1alpha1.PresetAWSGWLB:            {350, L4, Values{175, 30, 9}, 445},
		v1alpha1.PresetAWSNATGateway:      {350, L4, Values{175, 30, 9}, 445},
		v1alpha1.PresetAWSVPCEndpoint:     {350, L4, Values{175, 30, 9}, 445},
		v1alpha1.PresetAWSNetworkFirewall: {350, L4, Values{175, 30, 9}, 445},
		v1alpha1.PresetAWSEC2Conntrack:    {350, L4, Values{175, 30, 9}, 445},
		v1alpha1.PresetAWSALB:             {60, L7, Values{30, 10, 9}, 120},
		v1alpha1.PresetAWSCLB:             {60, L7, Values{30, 10, 9}, 120},
		v1alpha1.PresetAzureLB:            {240, L4, Values{120, 30, 9}, 390},
		v1alpha1.PresetAzureLBOutbound:    {1800, L4, Values{900, 30, 9}, 1170},
		v1alpha1.PresetAzureNATGateway:    {240, L4, Values{120, 30, 9}, 390},
		v1alpha1.PresetGCPCloudNAT:        {1200, L4, Values{600, 30, 9}, 870},
		v1alpha1.PresetGCPVPCFirewall:     {600, L4, Values{300, 30, 9}, 570},
		v1alpha1.PresetKubeProxyIPVS:      {900, L4, Values{450, 30, 9}, 720},
	}
	if len(cases) != len(Presets()) {
		t.Fatalf("table pins %d presets, the package knows %d", len(cases), len(Presets()))
	}
	for _, p := range Presets() {
		t.Run(string(p), func(t *testing.T) {
			tc, ok := cases[p]
			if !ok {
				t.Fatalf("preset %s has no expected values", p)
			}
			got, err := Compute(testobj.Spec().Preset(p).Obj())
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got.Values); diff != "" {
				t.Errorf("values (-want +got):\n%s", diff)
			}
			if d := got.Values.DetectionSeconds(); d != tc.detection {
				t.Errorf("detectionSeconds = %d, want %d", d, tc.detection)
			}
			wantHop := Hop{Name: string(p), Seconds: tc.seconds, Layer: tc.layer}
			if diff := cmp.Diff(wantHop, got.Governing); diff != "" {
				t.Errorf("governing hop (-want +got):\n%s", diff)
			}
			if tc.layer == L7 {
				if diff := cmp.Diff([]Hop{wantHop}, got.L7Hops); diff != "" {
					t.Errorf("L7 hops (-want +got):\n%s", diff)
				}
			} else if len(got.L7Hops) != 0 {
				t.Errorf("L7 hops = %v, want none", got.L7Hops)
			}
		})
	}
}

func TestCompute(t *testing.T) {
	cases := map[string]struct {
		spec      *testobj.SpecWrapper
		want      Values
		detection int32
		governing Hop
		l7        []Hop
	}{
		"custom 6 s (worked value)": {
			spec: testobj.Spec().Custom("", 6), want: Values{3, 1, 9}, detection: 12,
			governing: Hop{"idleTimeouts[0]", 6, L4},
		},
		"custom minimum T=2": {
			spec: testobj.Spec().Custom("tiny", 2), want: Values{1, 1, 9}, detection: 10,
			governing: Hop{"tiny", 2, L4},
		},
		"custom maximum T=432000": {
			spec: testobj.Spec().Custom("slow", 432000), want: Values{216000, 30, 9}, detection: 216270,
			governing: Hop{"slow", 432000, L4},
		},
		"T=432000 at timePercent 90": {
			spec: testobj.Spec().Custom("slow", 432000).TimePercent(90), want: Values{388800, 30, 9}, detection: 389070,
			governing: Hop{"slow", 432000, L4},
		},
		"timePercent 10": {
			spec: testobj.Spec().Preset(v1alpha1.PresetAWSNLB).TimePercent(10), want: Values{35, 30, 9}, detection: 305,
			governing: Hop{"aws-nlb", 350, L4},
		},
		"timePercent 90 shrinks the derived interval": {
			spec: testobj.Spec().Preset(v1alpha1.PresetAWSNLB).TimePercent(90), want: Values{315, 11, 9}, detection: 414,
			governing: Hop{"aws-nlb", 350, L4},
		},
		"timePercent 10 of T=2 keeps time at 1": {
			spec: testobj.Spec().Custom("", 2).TimePercent(10), want: Values{1, 1, 9}, detection: 10,
			governing: Hop{"idleTimeouts[0]", 2, L4},
		},
		"aws-alb at 1 s": {
			spec: testobj.Spec().PresetSeconds(v1alpha1.PresetAWSALB, 1), want: Values{1, 1, 9}, detection: 10,
			governing: Hop{"aws-alb", 1, L7}, l7: []Hop{{"aws-alb", 1, L7}},
		},
		"probes 1": {
			spec: testobj.Spec().Preset(v1alpha1.PresetAWSNLB).Probes(1), want: Values{175, 30, 1}, detection: 205,
			governing: Hop{"aws-nlb", 350, L4},
		},
		"probes 127": {
			spec: testobj.Spec().Preset(v1alpha1.PresetAWSNLB).Probes(127), want: Values{175, 30, 127}, detection: 3985,
			governing: Hop{"aws-nlb", 350, L4},
		},
		"explicit interval just below the limit": {
			spec: testobj.Spec().Preset(v1alpha1.PresetAWSNLB).Interval(174), want: Values{175, 174, 9}, detection: 1741,
			governing: Hop{"aws-nlb", 350, L4},
		},
		"explicit interval 1": {
			spec: testobj.Spec().Preset(v1alpha1.PresetAzureLB).Interval(1), want: Values{120, 1, 9}, detection: 129,
			governing: Hop{"azure-lb", 240, L4},
		},
		"preset override": {
			spec: testobj.Spec().Hop(v1alpha1.Hop{Name: "public-nlb", Preset: v1alpha1.PresetAWSNLB, Seconds: ptr(1000)}),
			want: Values{500, 30, 9}, detection: 770,
			governing: Hop{"public-nlb", 1000, L4},
		},
		"three hops, the ALB governs": {
			spec: testobj.Spec().Preset(v1alpha1.PresetAWSNLB).Custom("corp-firewall", 600).Preset(v1alpha1.PresetAWSALB),
			want: Values{30, 10, 9}, detection: 120,
			governing: Hop{"aws-alb", 60, L7}, l7: []Hop{{"aws-alb", 60, L7}},
		},
		"three hops, a custom one governs": {
			spec: testobj.Spec().Preset(v1alpha1.PresetGCPCloudNAT).Custom("", 300).Preset(v1alpha1.PresetAzureLBOutbound),
			want: Values{150, 30, 9}, detection: 420,
			governing: Hop{"idleTimeouts[1]", 300, L4},
		},
		"equal timeouts: the first governs": {
			spec: testobj.Spec().Preset(v1alpha1.PresetAWSNATGateway).Preset(v1alpha1.PresetAWSNLB),
			want: Values{175, 30, 9}, detection: 445,
			governing: Hop{"aws-nat-gateway", 350, L4},
		},
		"odd T rounds time down": {
			spec: testobj.Spec().Custom("", 7), want: Values{3, 1, 9}, detection: 12,
			governing: Hop{"idleTimeouts[0]", 7, L4},
		},
		"derived interval of T=100": {
			spec: testobj.Spec().Custom("", 100), want: Values{50, 16, 9}, detection: 194,
			governing: Hop{"idleTimeouts[0]", 100, L4},
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			got, err := Compute(tc.spec.Obj())
			if err != nil {
				t.Fatal(err)
			}
			want := Result{Values: tc.want, Governing: tc.governing, L7Hops: tc.l7}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("result (-want +got):\n%s", diff)
			}
			if d := got.Values.DetectionSeconds(); d != tc.detection {
				t.Errorf("detectionSeconds = %d, want %d", d, tc.detection)
			}
		})
	}
}

func TestComputeRejects(t *testing.T) {
	seventeen := testobj.Spec()
	for range 17 {
		seventeen.Preset(v1alpha1.PresetAWSNLB)
	}
	cases := map[string]struct {
		spec *testobj.SpecWrapper
		want string
	}{
		"no hops":                {testobj.Spec(), "idleTimeouts: must have 1 to 16 hops, has 0"},
		"17 hops":                {seventeen, "must have 1 to 16 hops, has 17"},
		"empty hop":              {testobj.Spec().Hop(v1alpha1.Hop{Name: "x"}), "idleTimeouts[0]: a hop needs a preset or seconds"},
		"unknown preset":         {testobj.Spec().Preset("aws-elb"), `idleTimeouts[0].preset: unknown preset "aws-elb"`},
		"fixed preset override":  {testobj.Spec().PresetSeconds(v1alpha1.PresetAWSNATGateway, 300), "preset aws-nat-gateway has a fixed idle timeout of 350 seconds"},
		"gcp firewall override":  {testobj.Spec().PresetSeconds(v1alpha1.PresetGCPVPCFirewall, 600), "preset gcp-vpc-firewall has a fixed idle timeout of 600 seconds"},
		"preset below range":     {testobj.Spec().Preset(v1alpha1.PresetAWSALB).PresetSeconds(v1alpha1.PresetAWSNLB, 59), "idleTimeouts[1].seconds: seconds for preset aws-nlb must be between 60 and 6000, is 59"},
		"preset above range":     {testobj.Spec().PresetSeconds(v1alpha1.PresetAzureLB, 6001), "seconds for preset azure-lb must be between 240 and 6000, is 6001"},
		"custom below 2":         {testobj.Spec().Custom("", 1), "seconds of a custom hop must be between 2 and 432000, is 1"},
		"custom above 432000":    {testobj.Spec().Custom("", 432001), "seconds of a custom hop must be between 2 and 432000, is 432001"},
		"timePercent 9":          {testobj.Spec().Custom("", 100).TimePercent(9), "timePercent: must be between 10 and 90, is 9"},
		"timePercent 91":         {testobj.Spec().Custom("", 100).TimePercent(91), "timePercent: must be between 10 and 90, is 91"},
		"probes 128":             {testobj.Spec().Custom("", 100).Probes(128), "probes: must be between 1 and 127, is 128"},
		"negative probes":        {testobj.Spec().Custom("", 100).Probes(-1), "probes: must be between 1 and 127, is -1"},
		"interval 0":             {testobj.Spec().Custom("", 100).Interval(0), "intervalSeconds: must be between 1 and 32767, is 0"},
		"interval 32768":         {testobj.Spec().Custom("", 100000).Interval(32768), "intervalSeconds: must be between 1 and 32767, is 32768"},
		"time + interval = T":    {testobj.Spec().Preset(v1alpha1.PresetAWSNLB).Interval(175), "keepalive time 175 s plus interval 175 s must be less than the shortest idle timeout 350 s (aws-nlb)"},
		"interval vs short hop":  {testobj.Spec().Preset(v1alpha1.PresetGCPCloudNAT).Preset(v1alpha1.PresetAWSALB).Interval(30), "keepalive time 30 s plus interval 30 s must be less than the shortest idle timeout 60 s (aws-alb)"},
		"T=2 leaves no interval": {testobj.Spec().Custom("", 2).Interval(1), "keepalive time 1 s plus interval 1 s must be less than the shortest idle timeout 2 s"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := Compute(tc.spec.Obj())
			if err == nil {
				t.Fatalf("Compute accepted the spec, want error containing %q", tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q, want it to contain %q", err, tc.want)
			}
		})
	}
}

func TestPresetsTable(t *testing.T) {
	for _, p := range Presets() {
		info, _ := LookupPreset(p)
		if info.DefaultSeconds < info.MinSeconds || info.DefaultSeconds > info.MaxSeconds {
			t.Errorf("%s: default %d outside its range %d..%d", p, info.DefaultSeconds, info.MinSeconds, info.MaxSeconds)
		}
		if info.MinSeconds < 1 || info.MaxSeconds > CustomMaxSeconds {
			t.Errorf("%s: range %d..%d outside 1..%d", p, info.MinSeconds, info.MaxSeconds, CustomMaxSeconds)
		}
	}
	if _, ok := LookupPreset("aws-elb"); ok {
		t.Error("LookupPreset found an unknown preset")
	}
}

func ptr(i int32) *int32 { return &i }
