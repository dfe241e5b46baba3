package keepalive

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
)

func TestPatchAndRestoreTemplate(t *testing.T) {
	nlb := Values{175, 30, 9}
	const ref = "KeepalivePolicy/shop/nlb"
	cases := map[string]struct {
		template     []corev1.Sysctl
		prev         *Managed
		values       Values
		wantSysctls  []corev1.Sysctl
		wantManaged  Managed
		wantChanged  bool
		wantRestored []corev1.Sysctl // what RestoreTemplate gives back
	}{
		"empty template": {
			values:      nlb,
			wantSysctls: sysctls(SysctlTime, "175", SysctlInterval, "30", SysctlProbes, "9"),
			wantManaged: Managed{Policy: ref, Set: sysctls(SysctlTime, "175", SysctlInterval, "30", SysctlProbes, "9")},
			wantChanged: true,
		},
		"user's other sysctls and values kept in place": {
			template:     sysctls("kernel.shm_rmid_forced", "1", SysctlTime, "7200", SysctlProbes, "3", "net.ipv4.ip_local_port_range", "1024 65535"),
			values:       nlb,
			wantSysctls:  sysctls("kernel.shm_rmid_forced", "1", SysctlTime, "175", SysctlProbes, "3", "net.ipv4.ip_local_port_range", "1024 65535", SysctlInterval, "30"),
			wantManaged:  Managed{Policy: ref, Set: sysctls(SysctlTime, "175", SysctlInterval, "30"), Original: sysctls(SysctlTime, "7200")},
			wantChanged:  true,
			wantRestored: sysctls("kernel.shm_rmid_forced", "1", SysctlTime, "7200", SysctlProbes, "3", "net.ipv4.ip_local_port_range", "1024 65535"),
		},
		"already compliant by the user's own values": {
			template:     sysctls(SysctlTime, "60", SysctlInterval, "10", SysctlProbes, "3"),
			values:       nlb,
			wantSysctls:  sysctls(SysctlTime, "60", SysctlInterval, "10", SysctlProbes, "3"),
			wantManaged:  Managed{Policy: ref},
			wantRestored: sysctls(SysctlTime, "60", SysctlInterval, "10", SysctlProbes, "3"),
		},
		"new, larger values replace the operator's own": {
			template:     sysctls("kernel.shm_rmid_forced", "1", SysctlTime, "30", SysctlInterval, "10", SysctlProbes, "9"),
			prev:         &Managed{Policy: ref, Set: sysctls(SysctlTime, "30", SysctlInterval, "10", SysctlProbes, "9")},
			values:       nlb,
			wantSysctls:  sysctls("kernel.shm_rmid_forced", "1", SysctlTime, "175", SysctlInterval, "30", SysctlProbes, "9"),
			wantManaged:  Managed{Policy: ref, Set: sysctls(SysctlTime, "175", SysctlInterval, "30", SysctlProbes, "9")},
			wantChanged:  true,
			wantRestored: sysctls("kernel.shm_rmid_forced", "1"),
		},
		"the user's original stays recorded across a re-patch": {
			template:     sysctls(SysctlTime, "30", SysctlInterval, "10", SysctlProbes, "9"),
			prev:         &Managed{Policy: ref, Set: sysctls(SysctlTime, "30", SysctlInterval, "10"), Original: sysctls(SysctlTime, "7200")},
			values:       nlb,
			wantSysctls:  sysctls(SysctlTime, "175", SysctlProbes, "9", SysctlInterval, "30"),
			wantManaged:  Managed{Policy: ref, Set: sysctls(SysctlTime, "175", SysctlInterval, "30"), Original: sysctls(SysctlTime, "7200")},
			wantChanged:  true,
			wantRestored: sysctls(SysctlTime, "7200", SysctlProbes, "9"),
		},
		"another policy's smaller values stay, and it stays the owner": {
			template: sysctls(SysctlTime, "30", SysctlInterval, "30", SysctlProbes, "9"),
			prev: &Managed{Policy: "KeepalivePolicy/shop/alb", Set: sysctls(SysctlTime, "30", SysctlInterval, "30", SysctlProbes, "9"),
				Original: sysctls(SysctlTime, "7200")},
			values:       Values{175, 5, 9},
			wantSysctls:  sysctls(SysctlTime, "30", SysctlInterval, "5", SysctlProbes, "9"),
			wantManaged:  Managed{Policy: "KeepalivePolicy/shop/alb", Set: sysctls(SysctlTime, "30", SysctlInterval, "5", SysctlProbes, "9"), Original: sysctls(SysctlTime, "7200")},
			wantChanged:  true,
			wantRestored: sysctls(SysctlTime, "7200"),
		},
		"a value the user changed after the patch is the user's": {
			template:     sysctls(SysctlTime, "100", SysctlInterval, "30", SysctlProbes, "9"),
			prev:         &Managed{Policy: ref, Set: sysctls(SysctlTime, "175", SysctlInterval, "30", SysctlProbes, "9")},
			values:       nlb,
			wantSysctls:  sysctls(SysctlTime, "100", SysctlInterval, "30", SysctlProbes, "9"),
			wantManaged:  Managed{Policy: ref, Set: sysctls(SysctlInterval, "30", SysctlProbes, "9")},
			wantRestored: sysctls(SysctlTime, "100"),
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			got, managed, changed := PatchTemplate(tc.template, tc.prev, ref, tc.values)
			if diff := cmp.Diff(tc.wantSysctls, got); diff != "" {
				t.Errorf("sysctls (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.wantManaged, managed); diff != "" {
				t.Errorf("managed (-want +got):\n%s", diff)
			}
			if changed != tc.wantChanged {
				t.Errorf("changed = %v, want %v", changed, tc.wantChanged)
			}
			if diff := cmp.Diff(tc.wantRestored, RestoreTemplate(got, managed)); diff != "" {
				t.Errorf("restored (-want +got):\n%s", diff)
			}
			// Patching the result again changes nothing.
			if _, _, again := PatchTemplate(got, &managed, ref, tc.values); again {
				t.Error("a second patch changed the template")
			}
		})
	}
}

func TestManagedAnnotation(t *testing.T) {
	m := Managed{Policy: "ClusterKeepalivePolicy/all", Set: sysctls(SysctlTime, "175"), Original: sysctls(SysctlTime, "7200")}
	got, ok, err := ParseManaged(map[string]string{AnnotationManagedSysctls: m.String()})
	if err != nil || !ok {
		t.Fatalf("ParseManaged: ok=%v err=%v", ok, err)
	}
	if diff := cmp.Diff(m, got); diff != "" {
		t.Errorf("round trip (-want +got):\n%s", diff)
	}
	if _, ok, _ := ParseManaged(nil); ok {
		t.Error("absent annotation parsed as present")
	}
	if _, _, err := ParseManaged(map[string]string{AnnotationManagedSysctls: "{"}); err == nil {
		t.Error("a broken annotation parsed without error")
	}
}
