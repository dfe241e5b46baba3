package keepalive

import (
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
		"non-integer value replaced": {
			existing: sysctls(SysctlTime, "soon", SysctlInterval, "30", SysctlProbes, "9"),
			want: Merge{
				Sysctls:  sysctls(SysctlTime, "175", SysctlInterval, "30", SysctlProbes, "9"),
				Replaced: sysctls(SysctlTime, "soon"),
				Changed:  true,
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
			if c := Compliant(tc.existing, nlb); c != !tc.want.Changed {
				t.Errorf("Compliant() = %v, want %v", c, !tc.want.Changed)
			}
		})
	}
}
