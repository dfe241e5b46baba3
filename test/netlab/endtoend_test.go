package netlab

import (
	"context"
	"os"
	"strconv"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/keepalive-operator/keepalive-operator/internal/keepalive"
	"github.com/keepalive-operator/keepalive-operator/internal/testenv"
	"github.com/keepalive-operator/keepalive-operator/internal/testobj"
	"github.com/keepalive-operator/keepalive-operator/internal/webhook"
)

// admittedSysctls creates a pod through a real API server whose webhook is
// the operator's, under a policy with a custom hop of T seconds, and returns
// the sysctls the pod was admitted with.
func admittedSysctls(t *testing.T) []corev1.Sysctl {
	t.Helper()
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		if os.Getenv("KEEPALIVE_LAB_REQUIRED") == "1" {
			t.Fatal("the end-to-end scenario needs KUBEBUILDER_ASSETS: run make prove")
		}
		t.Skip("the end-to-end scenario needs KUBEBUILDER_ASSETS: run make prove")
	}
	env, err := testenv.Start(testenv.CRDs|testenv.Webhooks, nil, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Stop() })
	mgr, err := ctrl.NewManager(env.Config, env.ManagerOptions())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	if _, err := webhook.Setup(ctx, mgr, webhook.Options{OperatorNamespace: "keepalive-system"}); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("the operator stopped with: %v", err)
		}
	})

	c := env.Client
	if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "lab"}}); err != nil {
		t.Fatal(err)
	}
	if err := c.Create(ctx, testobj.Spec().Custom("lab-middlebox", T).Policy("lab", "lab-path")); err != nil {
		t.Fatal(err)
	}
	// Until the webhook has seen the policy, a dry run admits the pod as is.
	deadline := time.Now().Add(30 * time.Second)
	for {
		pod := testobj.MakePod("lab", "client").Obj()
		if err := c.Create(ctx, pod, client.DryRunAll); err != nil {
			t.Fatal(err)
		}
		if pod.Annotations[keepalive.AnnotationPolicy] != "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the webhook never injected the pod")
		}
		time.Sleep(200 * time.Millisecond)
	}
	pod := testobj.MakePod("lab", "client").Obj()
	if err := c.Create(ctx, pod); err != nil {
		t.Fatal(err)
	}
	if pod.Spec.SecurityContext == nil {
		t.Fatal("the pod was admitted without sysctls")
	}
	return pod.Spec.SecurityContext.Sysctls
}

func TestAdmittedPodKeepsTheIdleFlow(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	// The pod's values, read from its spec as the kubelet reads them.
	var v keepalive.Values
	for _, s := range admittedSysctls(t) {
		n, err := strconv.Atoi(s.Value)
		if err != nil {
			t.Fatalf("sysctl %s=%q", s.Name, s.Value)
		}
		switch s.Name {
		case keepalive.SysctlTime:
			v.TimeSeconds = int32(n)
		case keepalive.SysctlInterval:
			v.IntervalSeconds = int32(n)
		case keepalive.SysctlProbes:
			v.Probes = int32(n)
		}
	}
	keepsIdleFlow(t, l, v, 3, "pod admitted by the webhook (envtest)")
}
