package netlab

import (
	"encoding/binary"
	"fmt"
	"net"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Packet is a TCP segment seen on a middlebox interface.
type Packet struct {
	At       time.Time
	Src, Dst string
	Flags    uint8
	Payload  int
}

// TCP flags.
const (
	FlagFIN = 0x01
	FlagSYN = 0x02
	FlagRST = 0x04
	FlagPSH = 0x08
	FlagACK = 0x10
)

// PureACK reports whether the segment is an ACK with nothing else: on an
// idle connection, a keepalive probe or its answer.
func (p Packet) PureACK() bool { return p.Flags == FlagACK && p.Payload == 0 }

func (p Packet) String() string {
	return fmt.Sprintf("%s %s > %s flags=%#02x len=%d", p.At.Format("15:04:05.000"), p.Src, p.Dst, p.Flags, p.Payload)
}

// Capture records the TCP segments that a namespace receives, on any of its
// interfaces: each segment the middlebox forwards is seen once, as it comes in.
type Capture struct {
	fd      int
	mu      sync.Mutex
	packets []Packet
	done    chan struct{}
	stopped chan struct{}
}

// Capture starts recording in namespace ns.
func (l *Lab) Capture(ns string) (*Capture, error) {
	c := &Capture{fd: -1, done: make(chan struct{}), stopped: make(chan struct{})}
	err := In(ns, func() error {
		proto := htons(unix.ETH_P_IP)
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM, int(proto))
		if err != nil {
			return fmt.Errorf("packet socket: %w", err)
		}
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: proto}); err != nil {
			unix.Close(fd)
			return err
		}
		c.fd = fd
		return unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 100000})
	})
	if err != nil {
		if c.fd >= 0 {
			unix.Close(c.fd)
		}
		return nil, err
	}
	go c.loop()
	return c, nil
}

func (c *Capture) loop() {
	defer close(c.stopped)
	buf := make([]byte, 65536)
	for {
		select {
		case <-c.done:
			return
		default:
		}
		n, from, err := unix.Recvfrom(c.fd, buf, 0)
		if err != nil || n < 20 {
			continue
		}
		if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
			continue
		}
		if p, ok := parse(buf[:n]); ok {
			c.mu.Lock()
			c.packets = append(c.packets, p)
			c.mu.Unlock()
		}
	}
}

// parse reads an IPv4 TCP segment.
func parse(b []byte) (Packet, bool) {
	if b[0]>>4 != 4 || b[9] != unix.IPPROTO_TCP {
		return Packet{}, false
	}
	ihl := int(b[0]&0x0f) * 4
	total := int(binary.BigEndian.Uint16(b[2:4]))
	if len(b) < ihl+20 || total > len(b) {
		return Packet{}, false
	}
	tcp := b[ihl:]
	off := int(tcp[12]>>4) * 4
	return Packet{
		At:      time.Now(),
		Src:     fmt.Sprintf("%s:%d", net.IP(b[12:16]), binary.BigEndian.Uint16(tcp[0:2])),
		Dst:     fmt.Sprintf("%s:%d", net.IP(b[16:20]), binary.BigEndian.Uint16(tcp[2:4])),
		Flags:   tcp[13] & 0x3f,
		Payload: total - ihl - off,
	}, true
}

// Stop ends the capture and returns what it saw.
func (c *Capture) Stop() []Packet {
	close(c.done)
	<-c.stopped
	unix.Close(c.fd)
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.packets
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
