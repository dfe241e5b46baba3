package install

import (
	"bytes"
	"os/exec"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/keepalive-operator/keepalive-operator/internal/testenv"
)

var _ = It("runs make demo end to end", func() {
	cmd := exec.Command("make", "-C", testenv.Root(), "--no-print-directory", "demo")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	Expect(cmd.Run()).To(Succeed(), out.String())
	Expect(out.String()).To(And(
		MatchRegexp(`KeepalivePolicy\s+shop/behind-nlb\s+175\s+30\s+9\s+445\s+aws-nlb \(350 s\)\s+1\s+1\s+True \(Applied\)`),
		MatchRegexp(`KeepalivePolicy\s+shop/behind-alb\s+30\s+10\s+9\s+120\s+aws-alb \(60 s\).*True \(KeepaliveDoesNotResetProxyTimer\)`),
		MatchRegexp(`shop/api-0\s+net.ipv4.tcp_keepalive_time=175, net.ipv4.tcp_keepalive_intvl=30, net.ipv4.tcp_keepalive_probes=9\s+KeepalivePolicy/shop/behind-nlb`),
		ContainSubstring("template sysctls: net.ipv4.ip_local_port_range=1024 65535, net.ipv4.tcp_keepalive_time=30"),
		ContainSubstring("==> cleaning up"),
	))
})
