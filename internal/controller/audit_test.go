package controller

import (
	"context"
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/keepalive-operator/keepalive-operator/api/v1alpha1"
	"github.com/keepalive-operator/keepalive-operator/internal/audit"
	"github.com/keepalive-operator/keepalive-operator/internal/testobj"
)

// procFixture is a host /proc for the agent: a process per pod, its
// cgroup naming the pod, its net/tcp the pod's sockets.
type procFixture string

// procLine is one socket of /proc/<pid>/net/tcp, to 203.0.113.9:5432, in
// the kernel's format; timer 2 is keepalive, ticks are 1/100 s.
func procLine(i, timer int, ticks int64) string {
	word := func(a string) string {
		raw := netip.MustParseAddr(a).As4()
		return fmt.Sprintf("%08X", binary.NativeEndian.Uint32(raw[:]))
	}
	return fmt.Sprintf("%4d: %s:%04X %s:1538 01 00000000:00000000 %02X:%08X 00000000  1000        0 %d 1 0000000000000000 20 4 30 10 -1\n",
		i, word("10.244.0.9"), 40000+i, word("203.0.113.9"), timer, ticks, 7000+i)
}

func (p procFixture) pod(pid int, pod *corev1.Pod, lines ...string) {
	dir := filepath.Join(string(p), fmt.Sprint(pid))
	Expect(os.MkdirAll(filepath.Join(dir, "net"), 0o755)).To(Succeed())
	cgroup := fmt.Sprintf("12:memory:/kubepods/besteffort/pod%s/0123abcd\n", pod.UID)
	Expect(os.WriteFile(filepath.Join(dir, "cgroup"), []byte(cgroup), 0o644)).To(Succeed())
	header := "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
	Expect(os.WriteFile(filepath.Join(dir, "net", "tcp"), []byte(header+strings.Join(lines, "")), 0o644)).To(Succeed())
	Expect(os.WriteFile(filepath.Join(dir, "net", "tcp6"), []byte(header), 0o644)).To(Succeed())
}

// runningPod creates a running pod on a node.
func runningPod(ns, name, node string) *corev1.Pod {
	pod := testobj.MakePod(ns, name).Labels(map[string]string{"app": "db-client"}).Node(node).Obj()
	create(pod)
	pod.Status.Phase = corev1.PodRunning
	Expect(k8sClient.Status().Update(ctx, pod)).To(Succeed())
	return pod
}

// startAgent runs the node agent's cache, as `keepalive-operator audit`
// does, and returns the agent; the spec calls its passes.
func startAgent(node, proc string) *audit.Agent {
	mo := env.ManagerOptions()
	mo.Cache = audit.CacheOptions(node)
	mo.Client = client.Options{Cache: &client.CacheOptions{DisableFor: []client.Object{&v1alpha1.KeepaliveNodeReport{}}}}
	mgr, err := ctrl.NewManager(env.Config, mo)
	Expect(err).NotTo(HaveOccurred())
	mctx, cancel := context.WithCancel(ctx)
	go func() {
		defer GinkgoRecover()
		Expect(mgr.Start(mctx)).To(Succeed())
	}()
	DeferCleanup(cancel)
	Expect(mgr.GetCache().WaitForCacheSync(mctx)).To(BeTrue())
	return &audit.Agent{Client: mgr.GetClient(), Reports: mgr.GetAPIReader(), Node: node, Proc: proc, Interval: time.Second}
}

func report(node string) func() v1alpha1.KeepaliveNodeReportStatus {
	return func() v1alpha1.KeepaliveNodeReportStatus {
		var r v1alpha1.KeepaliveNodeReport
		if err := k8sClient.Get(ctx, client.ObjectKey{Name: node}, &r); err != nil {
			return v1alpha1.KeepaliveNodeReportStatus{}
		}
		return r.Status
	}
}

func connections(s v1alpha1.KeepalivePolicyStatus) v1alpha1.ConnectionAudit {
	if s.Connections == nil {
		return v1alpha1.ConnectionAudit{PodsReported: -1}
	}
	return *s.Connections
}

var _ = Describe("The connection audit", func() {
	It("sums the node reports of the agents into each policy's status.connections and KeepaliveNotEnabled", func() {
		ns := newNamespace(nil)
		policy := testobj.Spec().Custom("nat", 60).PodLabels(map[string]string{"app": "db-client"}).Policy(ns, "db") // time 30 s
		createPolicy(policy)
		Eventually(status(policy)).Should(HaveField("Pods.Matched", BeEquivalentTo(0)))
		Expect(status(policy)().Connections).To(BeNil(), "no agent reports yet: nothing is said of connections")

		a := runningPod(ns, "pool-a", "audit-node-1")
		b := runningPod(ns, "pool-b", "audit-node-1")
		runningPod(ns, "pool-c", "audit-node-2")
		other := testobj.MakePod(ns, "web").Labels(map[string]string{"app": "web"}).Node("audit-node-1").Obj()
		create(other)
		proc := procFixture(GinkgoT().TempDir())
		proc.pod(101, a, procLine(0, 2, 1500), procLine(1, 2, 2990), procLine(2, 0, 0)) // 15 s, 29.9 s, none
		proc.pod(102, b, procLine(0, 2, 719_000), procLine(1, 1, 40))                   // the 2 h default; a retransmission
		proc.pod(103, other, procLine(0, 0, 0))
		node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "audit-node-1"}}
		create(node)
		agent := startAgent("audit-node-1", string(proc))
		for _, r := range []client.Object{&v1alpha1.KeepaliveNodeReport{ObjectMeta: metav1.ObjectMeta{Name: "audit-node-1"}},
			&v1alpha1.KeepaliveNodeReport{ObjectMeta: metav1.ObjectMeta{Name: "audit-node-2"}}} {
			DeferCleanup(func() { Expect(client.IgnoreNotFound(k8sClient.Delete(ctx, r))).To(Succeed()) })
		}

		By("the agent reports the selected pods of its node, each connection judged against the policy's 30 s")
		Eventually(func() error { return agent.Pass(ctx) }).Should(Succeed())
		ref := "KeepalivePolicy/" + ns + "/db"
		var written v1alpha1.KeepaliveNodeReport
		Expect(k8sClient.Get(ctx, client.ObjectKey{Name: "audit-node-1"}, &written)).To(Succeed())
		Expect(written.OwnerReferences).To(ConsistOf(HaveField("UID", node.UID)), "owned by its node, to go with it")
		Expect(report("audit-node-1")()).To(And(
			HaveField("PodCount", BeEquivalentTo(2)),
			HaveField("IntervalSeconds", BeEquivalentTo(1)),
			HaveField("Total", v1alpha1.ConnectionCounts{Armed: 2, ArmedLate: 1, NotArmed: 1, Unknown: 1}),
			HaveField("Pods", []v1alpha1.PodConnections{
				{Namespace: ns, Name: "pool-a", Policies: []v1alpha1.PolicyConnections{{Policy: ref, TimeSeconds: 30,
					ConnectionCounts: v1alpha1.ConnectionCounts{Armed: 2, NotArmed: 1}}}},
				{Namespace: ns, Name: "pool-b", Policies: []v1alpha1.PolicyConnections{{Policy: ref, TimeSeconds: 30,
					ConnectionCounts: v1alpha1.ConnectionCounts{ArmedLate: 1, Unknown: 1}}}},
			}),
		))

		By("the policy sums them, and says that pool-c's node has no report")
		Eventually(func() v1alpha1.ConnectionAudit { return connections(status(policy)()) }).Should(Equal(v1alpha1.ConnectionAudit{
			ConnectionCounts: v1alpha1.ConnectionCounts{Armed: 2, ArmedLate: 1, NotArmed: 1, Unknown: 1}, PodsReported: 2, PodsUnaudited: 1}))
		c := condition(status(policy)(), ConditionKeepaliveNotEnabled)
		Expect(c.Status).To(Equal(metav1.ConditionTrue))
		Expect(c.Reason).To(Equal(ReasonConnectionsLack))
		Expect(c.Message).To(And(
			ContainSubstring("2 of 5 connections of 2 reported pods lack keepalive within 30 s"),
			ContainSubstring(ns+"/pool-a (1 not armed, 0 armed late)"), ContainSubstring(ns+"/pool-b (0 not armed, 1 armed late)"),
			ContainSubstring("#your-application-must-turn-keepalive-on"),
			ContainSubstring("1 selected pods are on nodes without a fresh audit report"), ContainSubstring("audit-node-2 (no report)"),
		))

		By("a pass that reads the same writes nothing")
		var before v1alpha1.KeepaliveNodeReport
		Expect(k8sClient.Get(ctx, client.ObjectKey{Name: "audit-node-1"}, &before)).To(Succeed())
		Expect(agent.Pass(ctx)).To(Succeed())
		var after v1alpha1.KeepaliveNodeReport
		Expect(k8sClient.Get(ctx, client.ObjectKey{Name: "audit-node-1"}, &after)).To(Succeed())
		Expect(after.ResourceVersion).To(Equal(before.ResourceVersion))

		By("the applications turn keepalive on at the policy's time: the next pass says so")
		proc.pod(101, a, procLine(0, 2, 1500), procLine(1, 2, 2990), procLine(2, 2, 3000))
		proc.pod(102, b, procLine(0, 2, 2500), procLine(1, 1, 40))
		Expect(agent.Pass(ctx)).To(Succeed())
		// pool-b's socket 0 is the same socket: its 2 h timer was seen, so
		// it stays armed late; a new socket is judged afresh.
		proc.pod(102, b, procLine(5, 2, 2500), procLine(1, 1, 40))
		Expect(agent.Pass(ctx)).To(Succeed())
		Eventually(func() v1alpha1.ConnectionAudit { return connections(status(policy)()) }).Should(HaveField("ConnectionCounts",
			v1alpha1.ConnectionCounts{Armed: 4, Unknown: 1}))

		By("a report that outlives its validSeconds is stale: its pods count as unaudited, with no other event")
		r2 := &v1alpha1.KeepaliveNodeReport{ObjectMeta: metav1.ObjectMeta{Name: "audit-node-2"}, Status: v1alpha1.KeepaliveNodeReportStatus{
			AuditTime: metav1.Now(), ValidSeconds: 3, IntervalSeconds: 1, PodCount: 1,
			Pods: []v1alpha1.PodConnections{{Namespace: ns, Name: "pool-c", Policies: []v1alpha1.PolicyConnections{{Policy: ref, TimeSeconds: 30,
				ConnectionCounts: v1alpha1.ConnectionCounts{Armed: 1}}}}},
		}}
		Expect(k8sClient.Create(ctx, r2)).To(Succeed())
		Eventually(func() v1alpha1.ConnectionAudit { return connections(status(policy)()) }).Should(Equal(v1alpha1.ConnectionAudit{
			ConnectionCounts: v1alpha1.ConnectionCounts{Armed: 5, Unknown: 1}, PodsReported: 3}))
		c = condition(status(policy)(), ConditionKeepaliveNotEnabled)
		Expect([]string{string(c.Status), c.Reason}).To(Equal([]string{"False", ReasonKeepaliveEnabled}))
		Eventually(func() v1alpha1.ConnectionAudit { return connections(status(policy)()) }, 10*time.Second).Should(Equal(v1alpha1.ConnectionAudit{
			ConnectionCounts: v1alpha1.ConnectionCounts{Armed: 4, Unknown: 1}, PodsReported: 2, PodsUnaudited: 1}))
		c = condition(status(policy)(), ConditionKeepaliveNotEnabled)
		Expect([]string{string(c.Status), c.Reason}).To(Equal([]string{"Unknown", ReasonAuditIncomplete}))
		Expect(c.Message).To(ContainSubstring("audit-node-2 (stale)"))

		By("with no report left, the policy says nothing of connections")
		Expect(k8sClient.Delete(ctx, r2)).To(Succeed())
		Expect(k8sClient.Delete(ctx, &after)).To(Succeed())
		Eventually(func() *v1alpha1.ConnectionAudit { return status(policy)().Connections }).Should(BeNil())
		Expect(apimeta.FindStatusCondition(status(policy)().Conditions, ConditionKeepaliveNotEnabled)).To(BeNil())
	})
})
