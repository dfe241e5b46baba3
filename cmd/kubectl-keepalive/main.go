// Command kubectl-keepalive is the operator's kubectl plugin (kubectl
// keepalive). Its answers come from the same decisions as the operator's
// (internal/keepalive), so that they are the operator's answers.
//
//	kubectl keepalive explain KIND/NAME [-n NAMESPACE] [-o json|yaml]
//	kubectl keepalive plan -f POLICY_FILE [-o json|yaml]
//	kubectl keepalive doctor [-o json|yaml]
//	kubectl keepalive render -f DIR_OR_FILE --policies FILE [--check | --write]
package main

import (
	"fmt"
	"io"
	"os"
	"strconv"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/keepalive-operator/keepalive-operator/internal/keepalive"
)

func main() {
	if err := newRoot(os.Stdin, os.Stdout, os.Stderr).Execute(); err != nil {
		os.Exit(1)
	}
}

func newRoot(stdin io.Reader, stdout, stderr io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:          "kubectl-keepalive",
		Short:        "Keepalive sysctls for pods, as keepalive-operator decides them",
		SilenceUsage: true,
	}
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.AddCommand(newRender(stdin, stdout, stderr), newExplain(stdout), newPlan(stdout), newDoctor(stdout))
	return root
}

func newExplain(stdout io.Writer) *cobra.Command {
	var o explainOptions
	var cluster *clusterFlags
	cmd := &cobra.Command{
		Use:   "explain KIND/NAME",
		Short: "Why a pod or workload has, or lacks, the keepalive values",
		Long: `explain reads the live cluster and decides as the operator does: the
policies in force that select the pod or workload, which one governs and
why it wins over the others, why it is left alone if it is, the keepalive
sysctls it has and those it would get (a pod's at admission, a workload's
template), the operator's record on a workload's template, and a pod's
connections as the audit of its node last saw them. It writes nothing.

KIND is pod, deploy, sts, ds, rs or cronjob (or their long names).`,
		Example: `  kubectl keepalive explain pod/api-7d9c5-x2x9q -n shop
  kubectl keepalive explain deploy/api -n shop -o yaml`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runExplain(cmd.Context(), args[0], o, cluster, stdout)
		},
	}
	f := cmd.Flags()
	cluster = addLiveFlags(f, &o.output, &o.operatorFlags)
	addOperatorFlags(f, &o.operatorFlags)
	return cmd
}

func newPlan(stdout io.Writer) *cobra.Command {
	var o planOptions
	var cluster *clusterFlags
	cmd := &cobra.Command{
		Use:   "plan -f POLICY_FILE",
		Short: "What applying policies would do, against the live cluster, writing nothing",
		Long: `plan reads policies from a file and the live cluster, and decides as the
operator would with them applied (in place of live policies of the same
names): the values each computes, the running pods they select and would
govern (compliant already, getting the values when next created, under
Audit, or blocked and why), and the workloads whose template the operator
would change, and so roll, in waves of at most --max-concurrent-rollouts.
It writes nothing.`,
		Example: `  kubectl keepalive plan -f behind-nlb.yaml
  kubectl keepalive plan -f policies.yaml -n shop -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runPlan(cmd.Context(), o, cluster, stdout) },
	}
	f := cmd.Flags()
	cluster = addLiveFlags(f, &o.output, &o.operatorFlags)
	f.StringVarP(&o.file, "filename", "f", "", "File of the KeepalivePolicies and ClusterKeepalivePolicies to plan (those without a namespace are in -n).")
	addOperatorFlags(f, &o.operatorFlags)
	f.IntVar(&o.maxRollouts, "max-concurrent-rollouts", 5, "The operator's --max-concurrent-rollouts: workloads rolled at once.")
	f.Int64Var(&o.chunkSize, "chunk-size", 500, "Read pods and workloads in pages of this many, as kubectl get does.")
	return cmd
}

func newDoctor(stdout io.Writer) *cobra.Command {
	var o doctorOptions
	var cluster *clusterFlags
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Is the cluster ready for the operator: versions, Pod Security, the webhook, the leader, policies, the audit",
		Long: `doctor checks what the operator needs of the cluster, each finding with what
to do: the Kubernetes version; nodes whose kubelet or kernel is too old for
the sysctls; namespaces whose Pod Security version refuses them; the
webhook configuration (failure policy, timeout, the CA bundle against the
certificate the webhook serves, ready endpoints behind its Service); the
replica elected to reconcile; policies that are not Ready; nodes without a
fresh audit report, where the audit runs. It writes nothing, and exits 1
when a finding is an error.`,
		Example: `  kubectl keepalive doctor
  kubectl keepalive doctor --context prod -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runDoctor(cmd.Context(), o, cluster, stdout) },
	}
	f := cmd.Flags()
	cluster = addLiveFlags(f, &o.output, &o.operatorFlags)
	f.StringVar(&o.operatorNS, "operator-namespace", "keepalive-system", "The operator's namespace, which holds its leader's Lease.")
	return cmd
}

// addLiveFlags adds the flags of a command that reads the live cluster:
// kubectl's, -o, and the operator's --unsafe-sysctls-allowed.
func addLiveFlags(f *pflag.FlagSet, output *string, o *operatorFlags) *clusterFlags {
	cluster := addClusterFlags(f)
	f.StringVarP(output, "output", "o", "", "Output format: json or yaml; a text for a person when empty.")
	f.BoolVar(&o.unsafe, "unsafe-sysctls-allowed", false, "The operator's --unsafe-sysctls-allowed: every kubelet allows the sysctls, which matters before 1.29.")
	return cluster
}

// operatorFlags are the operator's flags that its decisions read.
type operatorFlags struct {
	operatorNS   string
	excluded     []string
	namespaceSel string
	objectSel    string
	unsafe       bool
}

// addOperatorFlags adds the operator's flags that its decisions read, under
// the operator's names.
func addOperatorFlags(f *pflag.FlagSet, o *operatorFlags) {
	f.StringVar(&o.operatorNS, "operator-namespace", "keepalive-system", "The operator's namespace, which it never injects (its --operator-namespace).")
	f.StringSliceVar(&o.excluded, "excluded-namespaces", nil, "Namespaces the operator leaves alone (its --excluded-namespaces).")
	f.StringVar(&o.namespaceSel, "namespace-selector", "", "The operator's --namespace-selector (the chart's webhook.namespaceSelectorExpressions): namespaces it does not match are left alone.")
	f.StringVar(&o.objectSel, "object-selector", "", "The operator's --object-selector (the chart's webhook.objectSelectorExpressions): pods and templates it does not match are left alone.")
}

// cluster is the cluster of the given minor version as an operator with
// these flags sees it.
func (o operatorFlags) cluster(minor int) (keepalive.Cluster, error) {
	c := keepalive.Cluster{Minor: minor, OperatorNamespace: o.operatorNS, ExcludedNamespaces: o.excluded, UnsafeSysctlsAllowed: o.unsafe}
	for _, s := range []struct {
		flag, value string
		into        *labels.Selector
	}{{"--namespace-selector", o.namespaceSel, &c.NamespaceSelector}, {"--object-selector", o.objectSel, &c.PodSelector}} {
		sel, err := keepalive.ParseSelector(s.value)
		if err != nil {
			return keepalive.Cluster{}, fmt.Errorf("%s: %w", s.flag, err)
		}
		*s.into = sel
	}
	return c, nil
}

func newRender(stdin io.Reader, stdout, stderr io.Writer) *cobra.Command {
	var o renderOptions
	cmd := &cobra.Command{
		Use:   "render -f FILE_OR_DIR --policies FILE",
		Short: "Merge the policies' values into the pod templates of manifests, offline",
		Long: `render merges the keepalive sysctls into the pod templates of manifests
(Deployments, StatefulSets, DaemonSets, ReplicaSets, CronJobs, Pods), as the
operator would: the reconciler's decision for a workload's template, the
webhook's for a Pod. Entries keep their places and only the values that
change are rewritten; every other byte stays as it is. Put the result in
Git, and Argo CD and Flux find nothing to undo.

It needs no cluster: the policies come from --policies, the labels of a
namespace from a Namespace among the inputs (else it has only
kubernetes.io/metadata.name), and the objects without a namespace are in
--namespace. The values are written as the manifest's own, without the
operator's record.`,
		Example: `  kubectl keepalive render -f deploy/ --policies policies.yaml --write
  kustomize build overlays/prod | kubectl keepalive render -f - --policies policies.yaml
  helm template my-release ./chart | kubectl keepalive render -f - --policies policies.yaml --check`,
		Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error { return runRender(o, stdin, stdout, stderr) },
	}
	f := cmd.Flags()
	f.StringSliceVarP(&o.files, "filename", "f", nil, "Manifests: a file, a folder (its .yaml and .yml files, recursively) or - for standard input; repeatable.")
	f.StringVar(&o.policies, "policies", "", "File of the KeepalivePolicies and ClusterKeepalivePolicies to apply (Namespaces in it give their labels).")
	f.StringVarP(&o.namespace, "namespace", "n", "default", "Namespace of the objects and KeepalivePolicies that name none.")
	f.StringVar(&o.version, "kubernetes-version", "1."+strconv.Itoa(keepalive.FirstSafeMinor),
		"Kubernetes version of the cluster; before 1.29 the sysctls are unsafe and nothing is rendered. Every release from 1.29 on decides alike.")
	addOperatorFlags(f, &o.operatorFlags)
	f.BoolVar(&o.check, "check", false, "Write nothing; list what would change and exit 1 if anything would (for CI).")
	f.BoolVarP(&o.write, "write", "w", false, "Write the changes back into the files instead of printing the manifests.")
	return cmd
}
