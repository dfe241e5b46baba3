// Command tcpapp is the end-to-end test application: a TCP server and client
// that enable SO_KEEPALIVE and leave its timing to the pod's sysctls, as the
// README tells Go programs to.
//
//	tcpapp server -listen :8080        answer every line with "ok"
//	tcpapp client -connect HOST:PORT -idle 18s
//	                                   request, idle, request again; exit 0 if
//	                                   the connection survived, 1 if not
//	tcpapp sysctls                     print the keepalive sysctls of the pod
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"strings"
	"time"
)

// keepaliveFromSysctls turns keepalive on and leaves idle time, interval and
// count to the network namespace's sysctls.
var keepaliveFromSysctls = net.KeepAliveConfig{Enable: true, Idle: -1, Interval: -1, Count: -1}

func main() {
	if len(os.Args) < 2 {
		fail("usage: tcpapp server|client|sysctls [flags]")
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	listen := fs.String("listen", ":8080", "server: address to listen on")
	connect := fs.String("connect", "", "client: server address")
	idle := fs.Duration("idle", 18*time.Second, "client: how long the connection idles between requests")
	_ = fs.Parse(os.Args[2:])
	switch os.Args[1] {
	case "server":
		serve(*listen)
	case "client":
		os.Exit(client(*connect, *idle))
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

func fail(msg string) {
	fmt.Fprintln(os.Stderr, "tcpapp:", msg)
	os.Exit(2)
}
