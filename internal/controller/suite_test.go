package controller

import (
	"context"
	"testing"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/keepalive-operator/keepalive-operator/internal/keepalive"
	"github.com/keepalive-operator/keepalive-operator/internal/testenv"
	"github.com/keepalive-operator/keepalive-operator/internal/webhook"
)

// The suite runs the reconcilers against a real kube-apiserver and etcd, as
// their own user, whose requests the API server's audit log records.
// There is no controller-manager: specs create the ReplicaSets and pods of
// workloads themselves, and report rollouts through the status subresource.
// No webhook runs either, so pods are created as the specs write them.

const (
	// maxRollouts is the rollout limit of the suite's manager.
	maxRollouts = 3
	// excludedNamespace is excluded by the manager's options, as by
	// --excluded-namespaces.
	excludedNamespace = "excluded-by-flag"
	// excludedLabel on a pod or template leaves it out, as the suite's
	// --object-selector says.
	excludedLabel = "test.keepalive.io/excluded"
)

var (
	ctx       = context.Background()
	env       *testenv.Env
	k8sClient client.Client
	// startManager and stopManager run the operator's reconcilers; a spec
	// may stop them and start new ones, as a new leader.
	startManager func()
	stopManager  func()
	// nodes is the webhook's store the running manager reads nodes from.
	nodes *webhook.Store
)

func TestController(t *testing.T) {
	RegisterFailHandler(Fail)
	SetDefaultEventuallyTimeout(20 * time.Second)
	SetDefaultConsistentlyPollingInterval(100 * time.Millisecond)
	RunSpecs(t, "controller suite")
}

var _ = BeforeSuite(func() {
	logf.SetLogger(zap.New(zap.WriteTo(GinkgoWriter), zap.UseDevMode(true)))
	var err error
	env, err = testenv.Start(testenv.CRDs|testenv.Audit, nil, GinkgoT().TempDir())
	Expect(err).NotTo(HaveOccurred())
	k8sClient = env.Client
	Expect(k8sClient.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: excludedNamespace}})).To(Succeed())
	operator, err := env.OperatorConfig()
	Expect(err).NotTo(HaveOccurred())
	podSelector, err := labels.Parse(excludedLabel + " notin (true)")
	Expect(err).NotTo(HaveOccurred())
	cluster := keepalive.Cluster{Minor: 36, OperatorNamespace: "keepalive-system",
		ExcludedNamespaces: []string{excludedNamespace}, PodSelector: podSelector}

	startManager = func() {
		mo := env.ManagerOptions()
		mo.Cache = CacheOptions()
		// A spec may start a second manager, as a new leader, with the same controllers.
		mo.Controller = config.Controller{SkipNameValidation: ptr.To(true)}
		mgr, err := ctrl.NewManager(operator, mo)
		Expect(err).NotTo(HaveOccurred())
		mctx, cancel := context.WithCancel(ctx)
		// The nodes come from the webhook's store, as in the operator.
		nodes = webhook.NewStore(logf.Log.WithName("store"))
		Expect(nodes.Watch(mctx, mgr.GetCache())).To(Succeed())
		Expect(Setup(mgr, Options{
			Cluster: func() keepalive.Cluster {
				c := cluster
				c.OldNodes = nodes.OldNodes()
				return c
			},
			OnOldNodes:            nodes.OnOldNodes,
			MaxConcurrentRollouts: maxRollouts,
			ProgressDeadline:      8 * time.Second,
			StatusDelay:           200 * time.Millisecond,
			PolicyDelay:           300 * time.Millisecond,
		})).To(Succeed())
		done := make(chan error, 1)
		go func() {
			defer GinkgoRecover()
			done <- mgr.Start(mctx)
		}()
		stopManager = func() {
			cancel()
			Eventually(done, 30*time.Second).Should(Receive(BeNil()))
			stopManager = nil
		}
	}
	startManager()
})

var _ = AfterSuite(func() {
	if stopManager != nil {
		stopManager()
	}
	if env != nil {
		Expect(env.Stop()).To(Succeed())
	}
})
