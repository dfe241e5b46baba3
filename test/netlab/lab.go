// Package netlab proves on real Linux TCP that keepalive values keep an idle
// connection alive through a middlebox that forgets idle flows. A lab is
// three network namespaces of its own, client, middlebox and server, joined
// by veth pairs; the middlebox forwards, forgets a flow after T idle seconds
// (its conntrack established timeout) and answers any packet of a flow it
// does not know with a TCP reset, as an AWS NLB, a NAT gateway or a stateful
// firewall does after its idle timeout. Traffic never leaves the namespaces:
// the addresses are documentation ranges (RFC 5737) that exist only there.
package netlab

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync/atomic"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
)

// The lab's addresses: the client side and the server side of the middlebox.
const (
	ClientIP     = "198.51.100.2"
	MiddleboxCIP = "198.51.100.1"
	MiddleboxSIP = "203.0.113.1"
	ServerIP     = "203.0.113.2"
)

// Requirements returns what this machine lacks to run a lab, or "".
func Requirements() string {
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root")
	}
	for _, tool := range []string{"ip", "nft", "sysctl", "ss"} {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	return strings.Join(missing, ", ")
}

// Lab is one set of namespaces.
type Lab struct {
	Client, Middlebox, Server string
	ownClient                 bool
}

var labs atomic.Int32

// New builds a lab whose middlebox forgets flows idle for idleTimeout
// seconds. Close removes it.
func New(idleTimeout int) (*Lab, error) {
	return build(idleTimeout, "", nil)
}

// NewBehind builds a lab whose client side is the existing namespace client,
// a Kubernetes node's say: the client reaches the server through the
// middlebox, and the middlebox routes clientNets (the node's pod range) back
// to it. Close leaves client in place, without the lab's link and route.
func NewBehind(client string, clientNets []string, idleTimeout int) (*Lab, error) {
	return build(idleTimeout, client, clientNets)
}

func build(idleTimeout int, client string, clientNets []string) (*Lab, error) {
	n := labs.Add(1)
	p := fmt.Sprintf("kl%d-%d", os.Getpid()%100000, n)
	l := &Lab{Client: client, Middlebox: p + "-m", Server: p + "-s"}
	var steps [][]string
	// A lab's own client sends everything through the middlebox; a node only
	// what goes to the server.
	clientDst := ServerIP + "/32"
	if client == "" {
		l.Client, l.ownClient, clientDst = p+"-c", true, "default"
		steps = append(steps, []string{"ip", "netns", "add", l.Client})
	}
	steps = append(steps, [][]string{
		{"ip", "netns", "add", l.Middlebox},
		{"ip", "netns", "add", l.Server},
		// veth pairs, created in the middlebox and moved to the ends.
		{"ip", "-n", l.Middlebox, "link", "add", "mc", "type", "veth", "peer", "name", "cm", "netns", l.Client},
		{"ip", "-n", l.Middlebox, "link", "add", "ms", "type", "veth", "peer", "name", "sm", "netns", l.Server},
		{"ip", "-n", l.Client, "addr", "add", ClientIP + "/24", "dev", "cm"},
		{"ip", "-n", l.Middlebox, "addr", "add", MiddleboxCIP + "/24", "dev", "mc"},
		{"ip", "-n", l.Middlebox, "addr", "add", MiddleboxSIP + "/24", "dev", "ms"},
		{"ip", "-n", l.Server, "addr", "add", ServerIP + "/24", "dev", "sm"},
	}...)
	for _, ns := range []string{l.Client, l.Middlebox, l.Server} {
		steps = append(steps, []string{"ip", "-n", ns, "link", "set", "lo", "up"})
	}
	steps = append(steps,
		[]string{"ip", "-n", l.Client, "link", "set", "cm", "up"},
		[]string{"ip", "-n", l.Middlebox, "link", "set", "mc", "up"},
		[]string{"ip", "-n", l.Middlebox, "link", "set", "ms", "up"},
		[]string{"ip", "-n", l.Server, "link", "set", "sm", "up"},
		[]string{"ip", "-n", l.Client, "route", "add", clientDst, "via", MiddleboxCIP},
		[]string{"ip", "-n", l.Server, "route", "add", "default", "via", MiddleboxSIP},
	)
	for _, cidr := range clientNets {
		steps = append(steps, []string{"ip", "-n", l.Middlebox, "route", "add", cidr, "via", ClientIP})
	}
	for _, s := range steps {
		if err := run(nil, s...); err != nil {
			l.Close()
			return nil, err
		}
	}
	// The middlebox: forward, track, forget after the timeout, and reset what
	// it does not know. nftables loads conntrack in the namespace first.
	rules := `table inet lab {
	chain forward {
		type filter hook forward priority filter; policy accept;
		ct state invalid reject with tcp reset
		ct state new tcp flags & (fin | syn | rst | ack) != syn reject with tcp reset
	}
}
`
	for _, s := range [][]string{
		{"nft", "-f", "-"},
		{"sysctl", "-q", "-w", "net.ipv4.ip_forward=1"},
		{"sysctl", "-q", "-w", "net.netfilter.nf_conntrack_tcp_loose=0"},
		{"sysctl", "-q", "-w", fmt.Sprintf("net.netfilter.nf_conntrack_tcp_timeout_established=%d", idleTimeout)},
	} {
		var in []byte
		if s[0] == "nft" {
			in = []byte(rules)
		}
		if err := run(in, append([]string{"ip", "netns", "exec", l.Middlebox}, s...)...); err != nil {
			l.Close()
			return nil, err
		}
	}
	return l, nil
}

// Close removes the lab's namespaces, and with them the veth pairs, routes
// and rules.
func (l *Lab) Close() {
	namespaces := []string{l.Middlebox, l.Server}
	if l.ownClient {
		namespaces = append(namespaces, l.Client)
	}
	for _, ns := range namespaces {
		_ = run(nil, "ip", "netns", "del", ns)
	}
}

// SetSysctls writes sysctls into a namespace, as a container runtime
// applies a pod's sysctls to its sandbox.
func (l *Lab) SetSysctls(ns string, sysctls []corev1.Sysctl) error {
	args := []string{"ip", "netns", "exec", ns, "sysctl", "-q", "-w"}
	for _, s := range sysctls {
		args = append(args, s.Name+"="+s.Value)
	}
	return run(nil, args...)
}

// Blackhole makes the middlebox drop every forwarded packet, as a peer that
// vanished (or a box that drops instead of resetting) looks to the client.
func (l *Lab) Blackhole() error {
	return run(nil, "ip", "netns", "exec", l.Middlebox, "nft", "insert", "rule", "inet", "lab", "forward", "drop")
}

// Sockets runs ss in a namespace: the TCP sockets with their timers.
func (l *Lab) Sockets(ns string) (string, error) {
	var out bytes.Buffer
	cmd := exec.Command("ip", "netns", "exec", ns, "ss", "-tnoH", "state", "established")
	cmd.Stdout = &out
	err := cmd.Run()
	return out.String(), err
}

// In runs fn with the calling thread in the namespace ns, so that the
// sockets fn creates belong to ns; they stay there afterwards.
func In(ns string, fn func() error) error {
	target, err := os.Open("/var/run/netns/" + ns)
	if err != nil {
		return err
	}
	defer target.Close()
	runtime.LockOSThread()
	own, err := os.Open(fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), unix.Gettid()))
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer own.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter %s: %w", ns, err)
	}
	fnErr := fn()
	if err := unix.Setns(int(own.Fd()), unix.CLONE_NEWNET); err != nil {
		// The thread stays locked and dies with the goroutine.
		return fmt.Errorf("leave %s: %w", ns, err)
	}
	runtime.UnlockOSThread()
	return fnErr
}

func run(stdin []byte, args ...string) error {
	cmd := exec.Command(args[0], args[1:]...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}
