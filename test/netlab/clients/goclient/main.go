// Command goclient is the lab's Go client for the keepalive audit: it
// connects with one of the net.Dialer recipes of the README, requests, says
// "ready", waits for a line on stdin while the connection idles, requests
// again and exits 0 if the connection survived, 1 if not.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"net"
	"os"
	"time"
)

func main() {
	addr := flag.String("addr", "", "host:port of the server")
	recipe := flag.String("keepalive", "default", "default: net.Dialer{}; off: KeepAlive -1; sysctls: KeepAliveConfig with -1 idle, interval and count")
	flag.Parse()
	d := net.Dialer{Timeout: 5 * time.Second}
	switch *recipe {
	case "default":
	case "off":
		d.KeepAlive = -1
	case "sysctls":
		d.KeepAliveConfig = net.KeepAliveConfig{Enable: true, Idle: -1, Interval: -1, Count: -1}
	default:
		fail(fmt.Errorf("unknown -keepalive %q", *recipe))
	}
	conn, err := d.Dial("tcp", *addr)
	if err != nil {
		fail(err)
	}
	r := bufio.NewReader(conn)
	if err := request(conn, r); err != nil {
		fail(fmt.Errorf("first request: %w", err))
	}
	fmt.Println("ready")
	if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
		fail(fmt.Errorf("stdin: %w", err))
	}
	if err := request(conn, r); err != nil {
		fail(fmt.Errorf("request after idling: %w", err))
	}
	fmt.Println("alive")
}

func request(conn net.Conn, r *bufio.Reader) error {
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Write([]byte("ping\n")); err != nil {
		return err
	}
	line, err := r.ReadString('\n')
	if err == nil && line != "ok\n" {
		err = fmt.Errorf("unexpected answer %q", line)
	}
	return err
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}
