package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strings"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/client-go/discovery"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/keepalive-operator/keepalive-operator/api/v1alpha1"
	"github.com/keepalive-operator/keepalive-operator/internal/keepalive"
)

// The names by which doctor finds the operator's objects.
const (
	webhookName   = "pods.keepalive.io"
	leaseName     = "keepalive-operator.keepalive.io"
	certSecretKey = "tls.crt"
)

// Finding is one thing doctor checked.
type Finding struct {
	Check  string `json:"check"`
	Status string `json:"status"` // ok, warning or error
	Detail string `json:"detail"`
	Fix    string `json:"fix,omitempty"`
}

const (
	statusOK      = "ok"
	statusWarning = "warning"
	statusError   = "error"
)

// doctorOptions are the flags of `kubectl keepalive doctor`, besides the
// cluster's.
type doctorOptions struct {
	operatorFlags
	output string
}

func runDoctor(ctx context.Context, o doctorOptions, f *clusterFlags, out io.Writer) error {
	if err := checkOutput("doctor", o.output); err != nil {
		return err
	}
	c, disco, _, err := f.connect()
	if err != nil {
		return fmt.Errorf("doctor: %w", err)
	}
	findings, err := doctor(ctx, c, disco, o, time.Now())
	if err != nil {
		return fmt.Errorf("doctor: %w", err)
	}
	if o.output != "" {
		return write(out, o.output, findings, nil)
	}
	var errs int
	for _, f := range findings {
		fmt.Fprintf(out, "[%s] %s: %s\n", f.Status, f.Check, f.Detail)
		if f.Fix != "" {
			fmt.Fprintf(out, "    fix: %s\n", f.Fix)
		}
		if f.Status == statusError {
			errs++
		}
	}
	if errs > 0 {
		return fmt.Errorf("doctor: %s", count(errs, "error", "errors"))
	}
	return nil
}

// doctor checks what the operator needs of the cluster, as of now.
func doctor(ctx context.Context, c client.Client, disco discovery.ServerVersionInterface, o doctorOptions, now time.Time) ([]Finding, error) {
	var out []Finding
	add := func(check, status, detail, fix string) {
		out = append(out, Finding{Check: check, Status: status, Detail: detail, Fix: fix})
	}
	cluster, nodes, err := clusterOf(ctx, c, disco, o.operatorFlags)
	if err != nil {
		return nil, err
	}

	// The cluster and its nodes.
	switch {
	case cluster.Minor >= keepalive.FirstSafeMinor:
		add("kubernetes", statusOK, fmt.Sprintf("1.%d: the keepalive sysctls are safe sysctls", cluster.Minor), "")
	case o.unsafe:
		add("kubernetes", statusWarning, fmt.Sprintf("1.%d: the keepalive sysctls are unsafe before 1.29; checked with --unsafe-sysctls-allowed", cluster.Minor),
			"make sure every kubelet runs with --allowed-unsafe-sysctls=net.ipv4.tcp_keepalive_*, or upgrade to 1.29")
	default:
		add("kubernetes", statusError, fmt.Sprintf("1.%d: the keepalive sysctls are unsafe before 1.29, and the operator injects nothing", cluster.Minor),
			"upgrade to 1.29, or allow the sysctls on every kubelet and run the operator with --unsafe-sysctls-allowed")
	}
	var old []string
	for _, n := range cluster.OldNodes {
		old = append(old, fmt.Sprintf("%s (kubelet %s, kernel %s)", n.Name, n.Info.KubeletVersion, n.Info.KernelVersion))
	}
	if len(old) == 0 {
		add("nodes", statusOK, fmt.Sprintf("%s, every kubelet 1.29 or later and every kernel 4.5 or later", count(len(nodes), "node", "nodes")), "")
	} else {
		add("nodes", statusWarning, fmt.Sprintf("%s of %d too old for the sysctls: %s; the operator holds back the pods that could land there",
			count(len(old), "node", "nodes"), len(nodes), strings.Join(old, ", ")),
			"upgrade or drain them: pods get the values once no node they could land on is too old")
	}

	// Pod Security pins.
	var namespaces corev1.NamespaceList
	if err := c.List(ctx, &namespaces); err != nil {
		return nil, fmt.Errorf("list namespaces: %w", err)
	}
	var pinned []string
	for _, ns := range namespaces.Items {
		if level, version, blocked := keepalive.PodSecurityBlocks(ns.Labels, cluster.Minor); blocked {
			pinned = append(pinned, fmt.Sprintf("%s (%s at %s)", ns.Name, level, version))
		}
	}
	if len(pinned) == 0 {
		add("pod security", statusOK, "no namespace pins a Pod Security version that refuses the sysctls", "")
	} else {
		add("pod security", statusWarning, "namespaces whose enforced Pod Security version refuses the sysctls, where pods get none: "+strings.Join(pinned, ", "),
			"label them pod-security.kubernetes.io/enforce-version=v1.29 (or later, or latest)")
	}

	// The webhook.
	hooks, err := webhookFindings(ctx, c, now)
	if err != nil {
		return nil, err
	}
	out = append(out, hooks...)

	// The operator's leader.
	var lease coordinationv1.Lease
	switch err := c.Get(ctx, client.ObjectKey{Namespace: o.operatorNS, Name: leaseName}, &lease); {
	case err != nil && client.IgnoreNotFound(err) == nil:
		add("leader", statusError, fmt.Sprintf("no Lease %s/%s: no replica has been elected to reconcile", o.operatorNS, leaseName),
			"run the operator with --leader-elect (the chart does), in --operator-namespace")
	case err != nil:
		return nil, fmt.Errorf("get the leader's Lease: %w", err)
	default:
		holder := ""
		if lease.Spec.HolderIdentity != nil {
			holder = *lease.Spec.HolderIdentity
		}
		duration := 15 * time.Second
		if lease.Spec.LeaseDurationSeconds != nil {
			duration = time.Duration(*lease.Spec.LeaseDurationSeconds) * time.Second
		}
		switch {
		case holder == "" || lease.Spec.RenewTime == nil:
			add("leader", statusError, "the Lease has no holder: no replica reconciles", "check the operator's pods and their logs")
		case now.Sub(lease.Spec.RenewTime.Time) > 2*duration:
			add("leader", statusError, fmt.Sprintf("%s last renewed the Lease %s ago", holder, now.Sub(lease.Spec.RenewTime.Time).Round(time.Second)),
				"check the operator's pods: the leader stopped renewing")
		default:
			add("leader", statusOK, holder+" reconciles", "")
		}
	}

	// The policies.
	var kaps v1alpha1.KeepalivePolicyList
	var ckaps v1alpha1.ClusterKeepalivePolicyList
	if err := errors.Join(c.List(ctx, &kaps), c.List(ctx, &ckaps)); err != nil {
		return nil, fmt.Errorf("list the policies: %w", err)
	}
	var notReady []string
	total := 0
	check := func(ref string, generation int64, status v1alpha1.KeepalivePolicyStatus) {
		total++
		cond := meta.FindStatusCondition(status.Conditions, "Ready")
		switch {
		case cond == nil || status.ObservedGeneration != generation:
			notReady = append(notReady, ref+": not reconciled yet")
		case cond.Status != "True":
			notReady = append(notReady, fmt.Sprintf("%s: %s (%s)", ref, cond.Reason, cond.Message))
		}
	}
	for _, p := range kaps.Items {
		check("KeepalivePolicy/"+p.Namespace+"/"+p.Name, p.Generation, p.Status)
	}
	for _, p := range ckaps.Items {
		check("ClusterKeepalivePolicy/"+p.Name, p.Generation, p.Status)
	}
	if len(notReady) == 0 {
		add("policies", statusOK, count(total, "policy", "policies")+", all Ready", "")
	} else {
		add("policies", statusWarning, "not Ready: "+strings.Join(notReady, "; "), "kubectl describe the policy: its conditions and events say why")
	}

	// The connection audit, where it runs.
	var reports v1alpha1.KeepaliveNodeReportList
	if err := c.List(ctx, &reports); err != nil {
		return nil, fmt.Errorf("list the audit's reports: %w", err)
	}
	if len(reports.Items) > 0 {
		fresh := map[string]bool{}
		for _, r := range reports.Items {
			fresh[r.Name] = now.Sub(r.Status.AuditTime.Time) <= time.Duration(r.Status.ValidSeconds)*time.Second
		}
		var stale []string
		for _, n := range nodes {
			if !fresh[n.Name] && !n.Spec.Unschedulable {
				stale = append(stale, n.Name)
			}
		}
		if len(stale) == 0 {
			add("audit", statusOK, fmt.Sprintf("a fresh report from each of %s", count(len(nodes), "node", "nodes")), "")
		} else {
			add("audit", statusWarning, "nodes without a fresh audit report: "+strings.Join(stale, ", "),
				"check the audit agent's pod on each (the chart's audit DaemonSet) and its logs")
		}
	}
	return out, nil
}

// webhookFindings checks the operator's webhook configuration: failure
// policy and timeout, the CA bundle against the serving certificate, and
// the endpoints behind its Service.
func webhookFindings(ctx context.Context, c client.Client, now time.Time) ([]Finding, error) {
	var configs admissionregistrationv1.MutatingWebhookConfigurationList
	if err := c.List(ctx, &configs); err != nil {
		return nil, fmt.Errorf("list mutating webhook configurations: %w", err)
	}
	var out []Finding
	found := false
	for _, cfg := range configs.Items {
		for _, wh := range cfg.Webhooks {
			if wh.Name != webhookName {
				continue
			}
			found = true
			check := "webhook " + cfg.Name
			add := func(status, detail, fix string) {
				out = append(out, Finding{Check: check, Status: status, Detail: detail, Fix: fix})
			}
			if wh.FailurePolicy != nil && *wh.FailurePolicy == admissionregistrationv1.Fail {
				add(statusError, "failurePolicy Fail: while the operator is down no pod can be created",
					"set failurePolicy: Ignore, as the chart and config/ do")
			}
			if wh.TimeoutSeconds != nil && *wh.TimeoutSeconds > 5 {
				add(statusWarning, fmt.Sprintf("timeoutSeconds %d: an operator that does not answer delays each pod creation that long", *wh.TimeoutSeconds),
					"set timeoutSeconds: 2")
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(wh.ClientConfig.CABundle) {
				add(statusError, "no CA certificate in caBundle: the API server cannot trust the webhook, and pods are admitted without values",
					"let cert-manager's CA injector or the operator's --cert-rotation fill it")
				continue
			}
			serving, name, err := servingCertificate(ctx, c, wh.ClientConfig)
			if err != nil {
				add(statusError, "the serving certificate: "+err.Error(), "check the webhook's Secret, or that the operator serves")
				continue
			}
			if _, err := serving.Verify(x509.VerifyOptions{Roots: pool, DNSName: name, CurrentTime: now}); err != nil {
				add(statusError, "caBundle does not verify the serving certificate for "+name+": "+err.Error(),
					"the CA in caBundle must have signed the certificate the operator serves; let the CA injector or --cert-rotation fill caBundle")
				continue
			}
			detail := fmt.Sprintf("caBundle verifies the serving certificate for %s, valid until %s", name, serving.NotAfter.UTC().Format(time.RFC3339))
			if svc := wh.ClientConfig.Service; svc != nil {
				ready, err := readyEndpoints(ctx, c, svc.Namespace, svc.Name)
				if err != nil {
					return nil, err
				}
				if ready == 0 {
					add(statusError, fmt.Sprintf("Service %s/%s has no ready endpoint: pods are admitted without values", svc.Namespace, svc.Name),
						"check the operator's pods")
					continue
				}
				detail += fmt.Sprintf("; %s ready behind Service %s/%s", count(ready, "endpoint", "endpoints"), svc.Namespace, svc.Name)
				if ready < 2 {
					add(statusWarning, detail, "run 2 replicas (the chart's default), so that a restart or a node drain leaves one serving")
					continue
				}
			}
			add(statusOK, detail, "")
		}
	}
	if !found {
		out = append(out, Finding{Check: "webhook", Status: statusError,
			Detail: "no MutatingWebhookConfiguration has the webhook " + webhookName + ": no pod gets values at admission",
			Fix:    "install the operator with its chart or config/default"})
	}
	return out, nil
}

// servingCertificate returns the certificate the webhook serves and the
// name the API server checks it for: read from the webhook's Service's
// Secret in cluster (the operator's --webhook-secret-name, or cert-manager's),
// or from the server itself when the webhook is reached by URL.
func servingCertificate(ctx context.Context, c client.Client, cc admissionregistrationv1.WebhookClientConfig) (*x509.Certificate, string, error) {
	if cc.URL != nil {
		u, err := url.Parse(*cc.URL)
		if err != nil {
			return nil, "", err
		}
		dialer := &tls.Dialer{NetDialer: &net.Dialer{Timeout: 5 * time.Second},
			Config: &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12}} //nolint:gosec // the certificate is verified against caBundle below
		conn, err := dialer.DialContext(ctx, "tcp", u.Host)
		if err != nil {
			return nil, "", fmt.Errorf("dial %s: %w", u.Host, err)
		}
		defer conn.Close()
		certs := conn.(*tls.Conn).ConnectionState().PeerCertificates
		if len(certs) == 0 {
			return nil, "", fmt.Errorf("%s served no certificate", u.Host)
		}
		return certs[0], u.Hostname(), nil
	}
	if cc.Service == nil {
		return nil, "", errors.New("the webhook names neither a URL nor a Service")
	}
	svc := cc.Service
	var secrets corev1.SecretList
	if err := c.List(ctx, &secrets, client.InNamespace(svc.Namespace)); err != nil {
		return nil, "", fmt.Errorf("list the Secrets of %s: %w", svc.Namespace, err)
	}
	name := svc.Name + "." + svc.Namespace + ".svc"
	for _, s := range secrets.Items {
		block, _ := pem.Decode(s.Data[certSecretKey])
		if block == nil {
			continue
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err == nil && cert.VerifyHostname(name) == nil {
			return cert, name, nil
		}
	}
	return nil, "", fmt.Errorf("no TLS Secret in %s holds a certificate for %s", svc.Namespace, name)
}

// readyEndpoints counts the ready endpoints of a Service.
func readyEndpoints(ctx context.Context, c client.Client, namespace, service string) (int, error) {
	var list discoveryv1.EndpointSliceList
	if err := c.List(ctx, &list, client.InNamespace(namespace), client.MatchingLabels{discoveryv1.LabelServiceName: service}); err != nil {
		return 0, fmt.Errorf("list the endpoints of %s/%s: %w", namespace, service, err)
	}
	n := 0
	for _, s := range list.Items {
		for _, e := range s.Endpoints {
			if e.Conditions.Ready == nil || *e.Conditions.Ready {
				n++
			}
		}
	}
	return n, nil
}
