// Command tcpapp is the end-to-end test application: a TCP server and client
// that enable SO_KEEPALIVE and leave its timing to the pod's sysctls, as the
// README tells Go programs to.
//
//	tcpapp server -listen :8080        answer every line with "ok"
//	tcpapp client -connect HOST:PORT -idle 18s
//	                                   request, idle, request again; exit 0 if
//	                                   the connection survived, 1 if not
//	tcpapp hold -connect HOST:PORT -keepalive sysctls|off|idle=30s
//	                                   request once, then hold the connection
//	                                   idle until it breaks (exit 1) or the
//	                                   process is stopped; keepalive from the
//	                                   sysctls, off, or a per-socket idle time
//	tcpapp sysctls                     print the keepalive sysctls of the pod
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

// keepaliveFromSysctls turns keepalive on and leaves idle time, interval and
// count to the network namespace's sysctls.
var keepaliveFromSysctls = net.KeepAliveConfig{Enable: true, Idle: -1, Interval: -1, Count: -1}

func main() {
	if len(os.Args) < 2 {
		fail("usage: tcpapp server|client|hold|sysctls [flags]")
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	listen := fs.String("listen", ":8080", "server: address to listen on")
	connect := fs.String("connect", "", "client, hold: server address")
	idle := fs.Duration("idle", 18*time.Second, "client: how long the connection idles between requests")
	keepalive := fs.String("keepalive", "sysctls", "hold: sysctls (SO_KEEPALIVE on, timing from the sysctls), off (no SO_KEEPALIVE), or idle=DURATION (SO_KEEPALIVE with a per-socket TCP_KEEPIDLE)")
	_ = fs.Parse(os.Args[2:])
	switch os.Args[1] {
	case "server":
		serve(*listen)
	case "client":
		os.Exit(client(*connect, *idle))
	case "hold":
		os.Exit(hold(*connect, *keepalive))
	case "sysctls":
		for _, name := range []string{"tcp_keepalive_time", "tcp_keepalive_intvl", "tcp_keepalive_probes"} {
			v, err := os.ReadFile("/proc/sys/net/ipv4/" + name)
			if err != nil {
				fail(err.Error())
			}
			fmt.Printf("net.ipv4.%s=%s\n", name, strings.TrimSpace(string(v)))
		}
	default:
		fail("unknown command " + os.Args[1])
	}
}

func serve(addr string) {
	ln, err := (&net.ListenConfig{KeepAliveConfig: keepaliveFromSysctls}).Listen(context.Background(), "tcp", addr)
	if err != nil {
		fail(err.Error())
	}
	for {
		conn, err := ln.Accept()
		if err != nil {
			fail(err.Error())
		}
		go func() {
			defer conn.Close()
			r := bufio.NewReader(conn)
			for {
				if _, err := r.ReadString('\n'); err != nil {
					return
				}
				if _, err := conn.Write([]byte("ok\n")); err != nil {
					return
				}
			}
		}()
	}
}

func client(addr string, idle time.Duration) int {
	conn, err := (&net.Dialer{Timeout: 5 * time.Second, KeepAliveConfig: keepaliveFromSysctls}).Dial("tcp", addr)
	if err != nil {
		fmt.Println("connect:", err)
		return 1
	}
	defer conn.Close()
	r := bufio.NewReader(conn)
	request := func() error {
		_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := conn.Write([]byte("ping\n")); err != nil {
			return err
		}
		_, err := r.ReadString('\n')
		return err
	}
	if err := request(); err != nil {
		fmt.Println("first request:", err)
		return 1
	}
	time.Sleep(idle)
	if err := request(); err != nil {
		fmt.Printf("after %v idle: %v\n", idle, err)
		return 1
	}
	fmt.Printf("alive after %v idle\n", idle)
	return 0
}

// dialerFor is a dialer with the keepalive of a hold -keepalive value.
func dialerFor(keepalive string) (*net.Dialer, error) {
	d := &net.Dialer{Timeout: 5 * time.Second}
	switch {
	case keepalive == "sysctls":
		d.KeepAliveConfig = keepaliveFromSysctls
	case keepalive == "off":
		d.KeepAlive = -1
	case strings.HasPrefix(keepalive, "idle="):
		idle, err := time.ParseDuration(strings.TrimPrefix(keepalive, "idle="))
		if err != nil || idle < time.Second {
			return nil, fmt.Errorf("-keepalive %s: want idle=DURATION of at least 1s", keepalive)
		}
		d.KeepAliveConfig = net.KeepAliveConfig{Enable: true, Idle: idle, Interval: -1, Count: -1}
	default:
		return nil, fmt.Errorf("-keepalive %s: want sysctls, off or idle=DURATION", keepalive)
	}
	return d, nil
}

// hold opens one connection, makes one request, and leaves the connection
// idle: it reads, so that it sees the connection break, and never writes.
// It exits 0 when stopped with SIGTERM, 1 when the connection breaks.
func hold(addr, keepalive string) int {
	d, err := dialerFor(keepalive)
	if err != nil {
		fail(err.Error())
	}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		fmt.Println("connect:", err)
		return 1
	}
	defer conn.Close()
	r := bufio.NewReader(conn)
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Write([]byte("ping\n")); err != nil {
		fmt.Println("request:", err)
		return 1
	}
	if _, err := r.ReadString('\n'); err != nil {
		fmt.Println("response:", err)
		return 1
	}
	_ = conn.SetDeadline(time.Time{})
	fmt.Printf("holding %s -> %s idle, keepalive %s\n", conn.LocalAddr(), conn.RemoteAddr(), keepalive)
	broken := make(chan error, 1)
	go func() {
		_, err := r.ReadString('\n')
		broken <- err
	}()
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	select {
	case err := <-broken:
		fmt.Println("connection broke:", err)
		return 1
	case s := <-stop:
		fmt.Println("stopped by", s)
		return 0
	}
}

func fail(msg string) {
	fmt.Fprintln(os.Stderr, "tcpapp:", msg)
	os.Exit(2)
}
