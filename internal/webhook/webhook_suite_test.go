package webhook

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/keepalive-operator/keepalive-operator/internal/testenv"
)

// The suite runs the webhook in a manager against a real kube-apiserver,
// which calls it over TLS through the MutatingWebhookConfiguration of
// config/webhook, and creates real pods. Pod Security Admission is the
// server's own.

var (
	env       *testenv.Env
	k8sClient client.Client
	warnings  = &warningRecorder{}
	// stopManager stops the running manager and waits for it.
	stopManager func()
	// store is the running webhook's.
	store *Store
)

func TestWebhook(t *testing.T) {
	RegisterFailHandler(Fail)
	RunSpecs(t, "webhook suite")
}

// warningRecorder keeps the admission warnings the API server returns.
type warningRecorder struct {
	mu   sync.Mutex
	seen []string
}

func (w *warningRecorder) HandleWarningHeader(_ int, _ string, text string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.seen = append(w.seen, text)
}

// take returns the warnings seen since the last call.
func (w *warningRecorder) take() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := w.seen
	w.seen = nil
	return out
}

var _ = BeforeSuite(func() {
	logf.SetLogger(zap.New(zap.WriteTo(GinkgoWriter), zap.UseDevMode(true)))
	var err error
	env, err = testenv.Start(testenv.CRDs|testenv.Webhooks, warnings, GinkgoT().TempDir())
	Expect(err).NotTo(HaveOccurred())
	k8sClient = env.Client
	stopManager, store = startManager(env.Config)
})

var _ = AfterSuite(func() {
	if stopManager != nil {
		stopManager()
	}
	if env != nil {
		Expect(env.Stop()).To(Succeed())
	}
})

// startManager runs a manager with the webhook as the operator's main does,
// serving where the webhook configuration points, and waits until it
// answers.
func startManager(cfg *rest.Config) (stop func(), s *Store) {
	opts := env.WebhookInstallOptions
	mo := env.ManagerOptions()
	mo.Cache = cache.Options{DefaultTransform: cache.TransformStripManagedFields()}
	mgr, err := ctrl.NewManager(cfg, mo)
	Expect(err).NotTo(HaveOccurred())
	ctx, cancel := context.WithCancel(context.Background())
	h, err := Setup(ctx, mgr, Options{OperatorNamespace: operatorNamespace})
	Expect(err).NotTo(HaveOccurred())
	s = h.Store
	done := make(chan error, 1)
	go func() {
		defer GinkgoRecover()
		done <- mgr.Start(ctx)
	}()

	addr := net.JoinHostPort(opts.LocalServingHost, strconv.Itoa(opts.LocalServingPort))
	Eventually(func() error {
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: time.Second}, "tcp", addr, &tls.Config{InsecureSkipVerify: true})
		if err != nil {
			return err
		}
		return conn.Close()
	}, 20*time.Second).Should(Succeed())
	Eventually(mgr.GetCache().WaitForCacheSync).WithArguments(ctx).Should(BeTrue())
	return func() {
		cancel()
		Eventually(done, 30*time.Second).Should(Receive(BeNil()))
	}, s
}

// newNamespace creates a namespace of its own for one spec.
func newNamespace(labels map[string]string) string {
	ns := &corev1.Namespace{}
	ns.GenerateName = "test-"
	ns.Labels = labels
	Expect(k8sClient.Create(context.Background(), ns)).To(Succeed())
	return ns.Name
}

func describeObj(obj client.Object) string {
	return fmt.Sprintf("%T %s/%s", obj, obj.GetNamespace(), obj.GetName())
}
