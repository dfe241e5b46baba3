package keepalive

import (
	"math"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
)

func sysctls(kv ...string) []corev1.Sysctl {
	out := make([]corev1.Sysctl, 0, len(kv)/2)
	for i := 0; i < len(kv); i += 2 {
		out = append(out, corev1.Sysctl{Name: kv[i], Value: kv[i+1]})
	}
	return out
}

func TestMergeSysctls(t *testing.T) {
	nlb := Values{175, 30, 9}
	cases := map[string]struct {
		existing []corev1.Sysctl
		want     Merge
	}{
		"none set": {
			existing: nil,
			want: Merge{
				Sysctls: sysctls(SysctlTime, "175", SysctlInterval, "30", SysctlProbes, "9"),
				Changed: true,
			},
		},
		"other sysctls kept in place": {
			existing: sysctls("kernel.shm_rmid_forced", "1", "net.ipv4.ip_local_port_range", "1024 65535"),
			want: Merge{
				Sysctls: sysctls("kernel.shm_rmid_forced", "1", "net.ipv4.ip_local_port_range", "1024 65535",
					SysctlTime, "175", SysctlInterval, "30", SysctlProbes, "9"),
				Changed: true,
			},
		},
		"smaller user values kept": {
			existing: sysctls(SysctlProbes, "3", SysctlTime, "60"),
			want: Merge{
				Sysctls: sysctls(SysctlProbes, "3", SysctlTime, "60", SysctlInterval, "30"),
				Changed: true,
			},
		},
		"larger user value replaced in place and reported": {
			existing: sysctls("kernel.shm_rmid_forced", "1", SysctlTime, "7200", SysctlInterval, "75"),
			want: Merge{
				Sysctls:  sysctls("kernel.shm_rmid_forced", "1", SysctlTime, "175", SysctlInterval, "30", SysctlProbes, "9"),
				Replaced: sysctls(SysctlTime, "7200", SysctlInterval, "75"),
				Changed:  true,
			},
		},
		"equal values: nothing to do": {
			existing: sysctls(SysctlTime, "175", SysctlInterval, "30", SysctlProbes, "9"),
			want:     Merge{Sysctls: sysctls(SysctlTime, "175", SysctlInterval, "30", SysctlProbes, "9")},
		},
		"all more aggressive: nothing to do": {
			existing: sysctls(SysctlInterval, "5", "kernel.msgmax", "8192", SysctlTime, "10", SysctlProbes, "2"),
			want:     Merge{Sysctls: sysctls(SysctlInterval, "5", "kernel.msgmax", "8192", SysctlTime, "10", SysctlProbes, "2")},
		},
		"a value the kernel refuses leaves the list alone": {
			existing: sysctls(SysctlTime, "soon", SysctlInterval, "75"),
			want: Merge{
				Sysctls: sysctls(SysctlTime, "soon", SysctlInterval, "75"),
				Invalid: sysctls(SysctlTime, "soon"),
			},
		},
		"every refused value is reported": {
			existing: sysctls(SysctlTime, "+100", SysctlInterval, "1e3", SysctlProbes, "100abc"),
			want: Merge{
				Sysctls: sysctls(SysctlTime, "+100", SysctlInterval, "1e3", SysctlProbes, "100abc"),
				Invalid: sysctls(SysctlTime, "+100", SysctlInterval, "1e3", SysctlProbes, "100abc"),
			},
		},
		// Linux 5.13 and later refuse these, older kernels take them: replaced,
		// the pod starts on either.
		"probes above 255 replaced": {
			existing: sysctls(SysctlTime, "175", SysctlInterval, "30", SysctlProbes, "256"),
			want: Merge{
				Sysctls:  sysctls(SysctlTime, "175", SysctlInterval, "30", SysctlProbes, "9"),
				Replaced: sysctls(SysctlProbes, "256"),
				Changed:  true,
			},
		},
		"negative probes replaced": {
			existing: sysctls(SysctlTime, "175", "net/ipv4/tcp_keepalive_probes", "-5", SysctlInterval, "30"),
			want: Merge{
				Sysctls:  sysctls(SysctlTime, "175", "net/ipv4/tcp_keepalive_probes", "9", SysctlInterval, "30"),
				Replaced: sysctls("net/ipv4/tcp_keepalive_probes", "-5"),
				Changed:  true,
			},
		},
		"probes of -0 replaced": {
			existing: sysctls(SysctlTime, "175", SysctlInterval, "30", SysctlProbes, "-0"),
			want: Merge{
				Sysctls:  sysctls(SysctlTime, "175", SysctlInterval, "30", SysctlProbes, "9"),
				Replaced: sysctls(SysctlProbes, "-0"),
				Changed:  true,
			},
		},
		"probes outside the int range refused": {
			existing: sysctls(SysctlTime, "175", SysctlInterval, "30", SysctlProbes, "2147483648"),
			want: Merge{
				Sysctls: sysctls(SysctlTime, "175", SysctlInterval, "30", SysctlProbes, "2147483648"),
				Invalid: sysctls(SysctlProbes, "2147483648"),
			},
		},
		"values kept as the kernel reads them": {
			existing: sysctls(SysctlTime, " 100 ", SysctlInterval, "0x10", SysctlProbes, "010"),
			want:     Merge{Sysctls: sysctls(SysctlTime, " 100 ", SysctlInterval, "0x10", SysctlProbes, "010")},
		},
		"hex and octal read larger than the computed values are replaced": {
			existing: sysctls(SysctlTime, "0x1000", SysctlInterval, "040"),
			want: Merge{
				Sysctls:  sysctls(SysctlTime, "175", SysctlInterval, "30", SysctlProbes, "9"),
				Replaced: sysctls(SysctlTime, "0x1000", SysctlInterval, "040"),
				Changed:  true,
			},
		},
		"negative time replaced": {
			existing: sysctls(SysctlTime, "-5", SysctlInterval, "30", SysctlProbes, "9"),
			want: Merge{
				Sysctls:  sysctls(SysctlTime, "175", SysctlInterval, "30", SysctlProbes, "9"),
				Replaced: sysctls(SysctlTime, "-5"),
				Changed:  true,
			},
		},
		"empty value replaced: the kernel keeps its default": {
			existing: sysctls(SysctlTime, "", SysctlInterval, "30", SysctlProbes, "9"),
			want: Merge{
				Sysctls:  sysctls(SysctlTime, "175", SysctlInterval, "30", SysctlProbes, "9"),
				Replaced: sysctls(SysctlTime, ""),
				Changed:  true,
			},
		},
		"slash form: the same sysctl, kept": {
			existing: sysctls("net/ipv4/tcp_keepalive_time", "100", SysctlInterval, "30", SysctlProbes, "9"),
			want:     Merge{Sysctls: sysctls("net/ipv4/tcp_keepalive_time", "100", SysctlInterval, "30", SysctlProbes, "9")},
		},
		"slash form: replaced in place under its own name": {
			existing: sysctls("net/ipv4/tcp_keepalive_time", "7200"),
			want: Merge{
				Sysctls:  sysctls("net/ipv4/tcp_keepalive_time", "175", SysctlInterval, "30", SysctlProbes, "9"),
				Replaced: sysctls("net/ipv4/tcp_keepalive_time", "7200"),
				Changed:  true,
			},
		},
		"slash form: refused value": {
			existing: sysctls("net/ipv4/tcp_keepalive_probes", "nine"),
			want: Merge{
				Sysctls: sysctls("net/ipv4/tcp_keepalive_probes", "nine"),
				Invalid: sysctls("net/ipv4/tcp_keepalive_probes", "nine"),
			},
		},
		"a mixed-separator name is another sysctl to the kubelet": {
			existing: sysctls("net.ipv4/tcp_keepalive_time", "7200", SysctlInterval, "30", SysctlProbes, "9"),
			want: Merge{
				Sysctls: sysctls("net.ipv4/tcp_keepalive_time", "7200", SysctlInterval, "30", SysctlProbes, "9", SysctlTime, "175"),
				Changed: true,
			},
		},
		"both forms: each larger one replaced in place, none added": {
			existing: sysctls(SysctlTime, "100", "net/ipv4/tcp_keepalive_time", "7200", SysctlInterval, "30", SysctlProbes, "9"),
			want: Merge{
				Sysctls:  sysctls(SysctlTime, "100", "net/ipv4/tcp_keepalive_time", "175", SysctlInterval, "30", SysctlProbes, "9"),
				Replaced: sysctls("net/ipv4/tcp_keepalive_time", "7200"),
				Changed:  true,
			},
		},
		"both forms, both small: nothing to do": {
			existing: sysctls("net/ipv4/tcp_keepalive_time", "60", SysctlTime, "0x3c", SysctlInterval, "30", SysctlProbes, "9"),
			want:     Merge{Sysctls: sysctls("net/ipv4/tcp_keepalive_time", "60", SysctlTime, "0x3c", SysctlInterval, "30", SysctlProbes, "9")},
		},
		"both forms, one refused": {
			existing: sysctls(SysctlTime, "100", "net/ipv4/tcp_keepalive_time", "+100"),
			want: Merge{
				Sysctls: sysctls(SysctlTime, "100", "net/ipv4/tcp_keepalive_time", "+100"),
				Invalid: sysctls("net/ipv4/tcp_keepalive_time", "+100"),
			},
		},
		"zero value replaced": {
			existing: sysctls(SysctlTime, "175", SysctlInterval, "30", SysctlProbes, "0"),
			want: Merge{
				Sysctls:  sysctls(SysctlTime, "175", SysctlInterval, "30", SysctlProbes, "9"),
				Replaced: sysctls(SysctlProbes, "0"),
				Changed:  true,
			},
		},
		"a duplicate entry is left to the API server": {
			existing: sysctls(SysctlTime, "100", SysctlTime, "9000", SysctlInterval, "30", SysctlProbes, "9"),
			want:     Merge{Sysctls: sysctls(SysctlTime, "100", SysctlTime, "9000", SysctlInterval, "30", SysctlProbes, "9")},
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			got := MergeSysctls(tc.existing, nlb)
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("merge (-want +got):\n%s", diff)
			}
			if again := MergeSysctls(got.Sysctls, nlb); again.Changed {
				t.Errorf("merging the result again changed it: %v", again.Sysctls)
			}
			want := !tc.want.Changed && len(tc.want.Invalid) == 0
			if c := Compliant(tc.existing, nlb); c != want {
				t.Errorf("Compliant() = %v, want %v", c, want)
			}
		})
	}
}

func TestReadSysctl(t *testing.T) {
	type read struct {
		n  int64
		ok bool
	}
	refused := read{}
	// What the kernel does when os.WriteFile writes the value to
	// /proc/sys/net/ipv4/tcp_keepalive_{time,probes}; test/netlab checks
	// this table against a real kernel. Probes are read with the bounds of
	// a kernel before 5.13 (any int); 5.13 and later refuse a '-' or a
	// value above 255, which the merge replaces either way.
	cases := map[string]struct {
		value        string
		time, probes read
	}{
		"decimal":                      {"100", read{100, true}, read{100, true}},
		"surrounding spaces":           {" 100 ", read{100, true}, read{100, true}},
		"leading tab, newline, CR, VT": {"\t\n\r\v100", read{100, true}, read{100, true}},
		"leading Latin-1 NBSP":         {"\xa0100", read{100, true}, read{100, true}},
		"trailing newline":             {"100\n", read{100, true}, read{100, true}},
		"hex":                          {"0x10", read{16, true}, read{16, true}},
		"hex, capital X":               {"0X1f", read{31, true}, read{31, true}},
		"octal":                        {"010", read{8, true}, read{8, true}},
		"zero":                         {"0", read{0, true}, read{0, true}},
		"negative":                     {"-5", read{-5, true}, read{-5, true}},
		"negative zero":                {"-0", read{0, true}, read{0, true}},
		"negative hex":                 {"-0x10", read{-16, true}, read{-16, true}},
		"rest after a space ignored":   {"100 abc", read{100, true}, read{100, true}},
		"second number ignored":        {"100 200", read{100, true}, read{100, true}},
		"plus sign":                    {"+100", refused, refused},
		"exponent":                     {"1e3", refused, refused},
		"letters after digits":         {"100abc", refused, refused},
		"a word":                       {"soon", refused, refused},
		"spaces only":                  {"   ", refused, refused},
		"trailing CR":                  {"100\r", refused, refused},
		"trailing NBSP":                {"100\xa0", refused, refused},
		"trailing NUL":                 {"100\x00", refused, refused},
		"UTF-8 NBSP":                   {"\u00a0100", refused, refused},
		"8 is not octal":               {"08", refused, refused},
		"0x without digits":            {"0x", refused, refused},
		"bare minus":                   {"-", refused, refused},
		"double minus":                 {"--5", refused, refused},
		"space after minus":            {"- 5", refused, refused},
		"decimal point":                {"1.5", refused, refused},
		"probes at the u8 limit":       {"255", read{255, true}, read{255, true}},
		"probes above the u8 limit":    {"256", read{256, true}, read{256, true}},
		"jiffies limit at HZ 100":      {"21474836", read{21474836, true}, read{21474836, true}},
		"above it":                     {"21474837", refused, read{21474837, true}},
		"negative, above it":           {"-21474837", refused, read{-21474837, true}},
		"INT_MAX":                      {"2147483647", refused, read{math.MaxInt32, true}},
		"above INT_MAX":                {"2147483648", refused, refused},
		"INT_MIN":                      {"-2147483648", refused, read{math.MinInt32, true}},
		"below INT_MIN":                {"-2147483649", refused, refused},
		"u32 max":                      {"4294967295", refused, refused},
		"u64 max":                      {"18446744073709551615", refused, refused},
		"u64 overflow":                 {"18446744073709551616", refused, refused},
		"20 characters":                {"00000000000000000100", read{64, true}, read{64, true}},
		"21 characters":                {"000000000000000000100", refused, refused},
		"20 characters of hex":         {"0x000000000000000064", read{100, true}, read{100, true}},
		"20 characters with minus":     {"-0000000000000000064", read{-52, true}, read{-52, true}},
		"4094 spaces: one digit read":  {strings.Repeat(" ", 4094) + "100", read{1, true}, read{1, true}},
		"4092 spaces: all read":        {strings.Repeat(" ", 4092) + "100", read{100, true}, read{100, true}},
		"4095 spaces: nothing read":    {strings.Repeat(" ", 4095) + "100", refused, refused},
		"long tail after a space":      {"100" + strings.Repeat(" ", 5000) + "abc", read{100, true}, read{100, true}},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			for _, c := range []struct {
				sysctl string
				want   read
			}{{SysctlTime, tc.time}, {SysctlInterval, tc.time}, {SysctlProbes, tc.probes}} {
				n, ok := ReadSysctl(c.sysctl, tc.value)
				if diff := cmp.Diff(c.want, read{n, ok}, cmp.AllowUnexported(read{})); diff != "" {
					t.Errorf("ReadSysctl(%s, %q) (-want +got):\n%s", c.sysctl, tc.value, diff)
				}
				slash := strings.ReplaceAll(c.sysctl, ".", "/")
				if n2, ok2 := ReadSysctl(slash, tc.value); n2 != n || ok2 != ok {
					t.Errorf("ReadSysctl(%s, %q) = %d, %v; the dotted form reads %d, %v", slash, tc.value, n2, ok2, n, ok)
				}
			}
		})
	}
	// A write of nothing sets nothing: a new namespace keeps its defaults.
	for sysctl, def := range map[string]int64{SysctlTime: 7200, SysctlInterval: 75, SysctlProbes: 9} {
		if n, ok := ReadSysctl(sysctl, ""); n != def || !ok {
			t.Errorf("ReadSysctl(%s, \"\") = %d, %v, want %d, true", sysctl, n, ok, def)
		}
	}
	if _, ok := ReadSysctl("net.ipv4.ip_forward", "1"); ok {
		t.Error("ReadSysctl read a sysctl it does not know")
	}
}

func TestNormalizeSysctlName(t *testing.T) {
	cases := map[string]struct{ name, want string }{
		"dotted":                  {"net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_keepalive_time"},
		"slashes":                 {"net/ipv4/tcp_keepalive_time", "net.ipv4.tcp_keepalive_time"},
		"dotted with a slash":     {"net.ipv4.conf.eno2/100.rp_filter", "net.ipv4.conf.eno2/100.rp_filter"},
		"slashes with a dot":      {"net/ipv4/conf/eno2.100/rp_filter", "net.ipv4.conf.eno2/100.rp_filter"},
		"first separator a dot":   {"net.ipv4/tcp_keepalive_time", "net.ipv4/tcp_keepalive_time"},
		"first separator a slash": {"net/ipv4.tcp_keepalive_time", "net.ipv4/tcp_keepalive_time"},
		"no separator":            {"net", "net"},
		"empty":                   {"", ""},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			if got := NormalizeSysctlName(tc.name); got != tc.want {
				t.Errorf("NormalizeSysctlName(%q) = %q, want %q", tc.name, got, tc.want)
			}
		})
	}
}
