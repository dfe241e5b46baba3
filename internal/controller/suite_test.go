package controller

import (
	"context"
	"testing"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/keepalive-operator/keepalive-operator/internal/keepalive"
	"github.com/keepalive-operator/keepalive-operator/internal/testenv"
)

// The suite runs the reconcilers against a real kube-apiserver and etcd.
// There is no controller-manager: specs create the ReplicaSets and pods of
// workloads themselves, and report rollouts through the status subresource.
// No webhook runs either, so pods are created as the specs write them.

// maxRollouts is the rollout limit of the suite's manager.
const maxRollouts = 3

var (
	ctx         = context.Background()
	env         *testenv.Env
	k8sClient   client.Client
	stopManager func()
)

func TestController(t *testing.T) {
	RegisterFailHandler(Fail)
	SetDefaultEventuallyTimeout(20 * time.Second)
	RunSpecs(t, "controller suite")
}

var _ = BeforeSuite(func() {
	logf.SetLogger(zap.New(zap.WriteTo(GinkgoWriter), zap.UseDevMode(true)))
	var err error
	env, err = testenv.Start(testenv.CRDs, nil, GinkgoT().TempDir())
	Expect(err).NotTo(HaveOccurred())
	k8sClient = env.Client

	mo := env.ManagerOptions()
	mo.Cache = cache.Options{DefaultTransform: StripForCache}
	mgr, err := ctrl.NewManager(env.Config, mo)
	Expect(err).NotTo(HaveOccurred())
	Expect(Setup(mgr, Options{
		Cluster:               func() keepalive.Cluster { return keepalive.Cluster{Minor: 36, OperatorNamespace: "keepalive-system"} },
		MaxConcurrentRollouts: maxRollouts,
		RequeueAfter:          time.Second,
	})).To(Succeed())
	mctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		defer GinkgoRecover()
		done <- mgr.Start(mctx)
	}()
	stopManager = func() {
		cancel()
		Eventually(done, 30*time.Second).Should(Receive(BeNil()))
	}
})

var _ = AfterSuite(func() {
	if stopManager != nil {
		stopManager()
	}
	if env != nil {
		Expect(env.Stop()).To(Succeed())
	}
})
