//go:build e2e

// Package e2e runs the operator as its Helm chart installs it, on a real
// single-node cluster (hack/local-cluster.sh): a real kubelet, containerd,
// runc and CNI apply the sysctls to running pods, and the real
// controller-manager rolls the workloads. `make test-e2e` starts the cluster,
// runs this suite in the node's network namespace and removes the cluster.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"text/tabwriter"
	"time"

	. "github.com/onsi/ginkgo/v2"
	"github.com/onsi/ginkgo/v2/types"
	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/keepalive-operator/keepalive-operator/api/v1alpha1"
)

const (
	operatorNamespace = "keepalive-system"
	release           = "keepalive-operator"
	leaseName         = "keepalive-operator.keepalive.io"
	tcpappImage       = "docker.io/keepalive-e2e/tcpapp:1"
	// The node of hack/local-cluster.sh.
	nodeName   = "keepalive-node"
	nodeNetns  = "keepalive-node"
	nodePodNet = "10.244.0.0/24"
	// The audit agent's DaemonSet, which the suite runs with a short
	// interval so that its reports come within seconds: four times as
	// often as the chart's 60 s. Each pass costs the agent some 15 ms of
	// kernel time per audited pod on this machine (each read of
	// /proc/<pid>/net/tcp or tcp6 walks the whole TCP hash table, shared by
	// every network namespace), so at 5 s the suite's 6 audited pods alone
	// would exceed the 10m CPU request that the chart sizes for 60 s.
	auditAgent    = release + "-audit"
	auditInterval = 15 * time.Second
)

// Labels of the chart's pods: the operator's replicas, and the audit agent's.
var (
	operatorPodLabels = client.MatchingLabels{"app.kubernetes.io/name": "keepalive-operator", "app.kubernetes.io/instance": release}
	agentPodLabels    = client.MatchingLabels{"app.kubernetes.io/name": "keepalive-operator-audit", "app.kubernetes.io/instance": release}
)

var (
	ctx = context.Background()
	k8s client.Client
)

func TestE2E(t *testing.T) {
	RegisterFailHandler(Fail)
	SetDefaultEventuallyTimeout(2 * time.Minute)
	SetDefaultEventuallyPollingInterval(250 * time.Millisecond)
	RunSpecs(t, "e2e suite")
}

var _ = BeforeSuite(func() {
	for _, v := range []string{"KUBECONFIG", "HELM", "KUBECTL", "TCPAPP"} {
		Expect(os.Getenv(v)).NotTo(BeEmpty(), v+" is not set: run `make test-e2e`")
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", os.Getenv("KUBECONFIG"))
	Expect(err).NotTo(HaveOccurred())
	scheme := runtime.NewScheme()
	Expect(clientgoscheme.AddToScheme(scheme)).To(Succeed())
	Expect(v1alpha1.AddToScheme(scheme)).To(Succeed())
	k8s, err = client.New(cfg, client.Options{Scheme: scheme})
	Expect(err).NotTo(HaveOccurred())

	// The audit agent runs with hostPID, which only the privileged Pod
	// Security level allows: the namespace says so, as the README tells users
	// to (this cluster's API server has no admission configuration, so its
	// default level is privileged anyway).
	createNamespace(operatorNamespace, map[string]string{"pod-security.kubernetes.io/enforce": "privileged"})

	By("installing the chart with Helm: the local image, the operator's own certificates, 2 replicas, the audit agent")
	start := time.Now()
	helm(append([]string{"install", release, chartPath(), "--namespace", operatorNamespace, "--wait", "--timeout", "5m"},
		currentChartValues()...)...)
	AddReportEntry("helm install --wait", time.Since(start).Round(100*time.Millisecond).String())

	deploy := &appsv1.Deployment{}
	Expect(k8s.Get(ctx, client.ObjectKey{Namespace: operatorNamespace, Name: release}, deploy)).To(Succeed())
	Expect(deploy.Status.ReadyReplicas).To(BeEquivalentTo(2))
	agent := &appsv1.DaemonSet{}
	Expect(k8s.Get(ctx, client.ObjectKey{Namespace: operatorNamespace, Name: auditAgent}, agent)).To(Succeed())
	Expect(agent.Status.NumberReady).To(BeEquivalentTo(1), "the audit agent is not ready on the node")
	Eventually(leaderPod).ShouldNot(BeEmpty(), "no replica took the leader lease")
})

// The suite's figures, for BENCHMARKS.md; entries of several lines, such
// as kubectl's output, follow the table.
var _ = ReportAfterSuite("e2e timings", func(r Report) {
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "\nE2E\tSECONDS")
	var long []types.ReportEntry
	for _, s := range r.SpecReports {
		if s.LeafNodeType == types.NodeTypeIt || s.LeafNodeType == types.NodeTypeBeforeSuite {
			name := s.LeafNodeText
			if name == "" {
				name = s.LeafNodeType.String()
			}
			fmt.Fprintf(w, "%s\t%.1f\n", name, s.RunTime.Seconds())
		}
		for _, e := range s.ReportEntries {
			if strings.Contains(e.StringRepresentation(), "\n") {
				long = append(long, e)
				continue
			}
			fmt.Fprintf(w, "%s\t%s\n", e.Name, e.StringRepresentation())
		}
	}
	fmt.Fprintf(w, "whole suite\t%.1f\n", r.RunTime.Seconds())
	_ = w.Flush()
	for _, e := range long {
		fmt.Printf("\n%s:\n%s\n", e.Name, e.StringRepresentation())
	}
})

// command runs a program and returns its combined output.
func command(name string, args ...string) (string, error) {
	var out bytes.Buffer
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

func kubectl(args ...string) (string, error) {
	return command(os.Getenv("KUBECTL"), args...)
}

// leaderPod is the operator pod holding the leader lease, or "".
func leaderPod() string {
	lease := &coordinationv1.Lease{}
	if err := k8s.Get(ctx, client.ObjectKey{Namespace: operatorNamespace, Name: leaseName}, lease); err != nil {
		return ""
	}
	if lease.Spec.HolderIdentity == nil {
		return ""
	}
	// The identity is the pod's hostname (its name), "_" and a unique suffix.
	name, _, _ := strings.Cut(*lease.Spec.HolderIdentity, "_")
	return name
}

// podUsage is what the kubelet's summary API says one pod uses.
type podUsage struct {
	WorkingSetBytes uint64
	// NanoCores is the CPU rate over the kubelet's last two samples, nil
	// until it has two; CoreNanoSeconds is the CPU time used since the
	// pod's cgroup was made, at CPUTime.
	NanoCores       *uint64
	CoreNanoSeconds uint64
	CPUTime         time.Time
}

// podUsages reads the summary API of the node, by pod name, for the pods
// of the operator's namespace.
func podUsages() (map[string]podUsage, error) {
	raw, err := kubectl("get", "--raw", "/api/v1/nodes/"+nodeName+"/proxy/stats/summary")
	if err != nil {
		return nil, fmt.Errorf("%w: %s", err, raw)
	}
	var summary struct {
		Pods []struct {
			PodRef struct{ Name, Namespace string }
			CPU    struct {
				Time                 time.Time `json:"time"`
				UsageNanoCores       *uint64   `json:"usageNanoCores"`
				UsageCoreNanoSeconds uint64    `json:"usageCoreNanoSeconds"`
			}
			Memory struct {
				WorkingSetBytes uint64 `json:"workingSetBytes"`
			}
		}
	}
	if err := json.Unmarshal([]byte(raw), &summary); err != nil {
		return nil, err
	}
	usage := map[string]podUsage{}
	for _, p := range summary.Pods {
		if p.PodRef.Namespace == operatorNamespace {
			usage[p.PodRef.Name] = podUsage{WorkingSetBytes: p.Memory.WorkingSetBytes, NanoCores: p.CPU.UsageNanoCores,
				CoreNanoSeconds: p.CPU.UsageCoreNanoSeconds, CPUTime: p.CPU.Time}
		}
	}
	return usage, nil
}

// chartPods names the running pods of the chart with these labels: the
// operator's or the audit agent's.
func chartPods(labels client.MatchingLabels) ([]string, error) {
	pods := &corev1.PodList{}
	if err := k8s.List(ctx, pods, client.InNamespace(operatorNamespace), labels); err != nil {
		return nil, err
	}
	var names []string
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil && p.Status.Phase == corev1.PodRunning {
			names = append(names, p.Name)
		}
	}
	return names, nil
}

// operatorMemory reads the operator pods' working sets from the kubelet's
// summary API, by pod name; the audit agent's pod is not one of them.
func operatorMemory() (map[string]uint64, error) {
	names, err := chartPods(operatorPodLabels)
	if err != nil {
		return nil, err
	}
	all, err := podUsages()
	if err != nil {
		return nil, err
	}
	usage := map[string]uint64{}
	for _, name := range names {
		if u, ok := all[name]; ok {
			usage[name] = u.WorkingSetBytes
		}
	}
	return usage, nil
}

// createNamespace makes a namespace for one spec, with labels.
func createNamespace(name string, labels map[string]string) {
	Expect(k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}})).To(Succeed())
}
