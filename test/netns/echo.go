//go:build linux

package netns

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"testing"
	"time"
)

// ListenEcho opens TCP echo servers in n on each port ([::], so IPv4 and
// IPv6), closed at cleanup.
func (n *NS) ListenEcho(t testing.TB, ports ...int) {
	t.Helper()
	for _, p := range ports {
		var ln net.Listener
		if err := n.Do(func() (err error) {
			ln, err = net.Listen("tcp", "[::]:"+strconv.Itoa(p))
			return err
		}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
			}
		}()
	}
}

// Dial connects from n to dst, from src when it is valid.
func (n *NS) Dial(src netip.Addr, dst netip.AddrPort, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := n.Do(func() (err error) {
		d := net.Dialer{Timeout: timeout}
		if src.IsValid() {
			d.LocalAddr = &net.TCPAddr{IP: src.AsSlice()}
		}
		c, err = d.Dial("tcp", dst.String())
		return err
	})
	return c, err
}

// Reachable reports whether a TCP echo round trip from n to dst works
// within timeout.
func (n *NS) Reachable(src netip.Addr, dst netip.AddrPort, timeout time.Duration) error {
	c, err := n.Dial(src, dst, timeout)
	if err != nil {
		return err
	}
	defer c.Close()
	return Echo(c, timeout)
}

var probe = []byte("ping")

// Echo sends a probe on an echo connection and waits for its answer.
func Echo(c net.Conn, timeout time.Duration) error {
	_ = c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write(probe); err != nil {
		return err
	}
	buf := make([]byte, len(probe))
	_, err := io.ReadFull(c, buf)
	return err
}

// WaitReachable waits up to within for dst to answer from n.
func (n *NS) WaitReachable(t testing.TB, dst netip.AddrPort, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		err := n.Reachable(netip.Addr{}, dst, 300*time.Millisecond)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%v never became reachable from %s: %v", dst, n.Name, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// MustUnreachable fails t unless a connection from n (from src when valid)
// to dst times out: a silent drop. A refusal (RST) would mean the packet
// reached the destination's stack.
func (n *NS) MustUnreachable(t testing.TB, src netip.Addr, dst netip.AddrPort) {
	t.Helper()
	err := n.Reachable(src, dst, 400*time.Millisecond)
	if err == nil {
		t.Fatalf("%v reachable from %s (src %v), want dropped", dst, n.Name, src)
	}
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("%v from %s: %v, want a timeout (silent drop)", dst, n.Name, err)
	}
}

// lateAnswer is how long an unanswered probe's answer may still arrive
// before the flow counts as cut: a busy host can delay an answer past the
// probe timeout without anything dropping it.
const lateAnswer = time.Second

// TimeToCut measures when the established echo connection c stops
// answering: it sends probes back to back, each given probeTimeout for its
// answer, and returns the time from start to the end of the first probe
// left unanswered (or reset). That is an upper bound: the cut happened at
// most probeTimeout (the probe granularity) earlier. A probe answered late,
// within lateAnswer, does not count. It fails when c still answers limit
// after start.
func TimeToCut(c net.Conn, start time.Time, probeTimeout, limit time.Duration) (time.Duration, error) {
	buf := make([]byte, len(probe))
	for time.Since(start) < limit {
		_ = c.SetDeadline(time.Now().Add(probeTimeout))
		if _, err := c.Write(probe); err != nil {
			return time.Since(start), nil
		}
		n, err := io.ReadFull(c, buf)
		if err == nil {
			continue
		}
		cut := time.Since(start)
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			return cut, nil // reset or closed
		}
		_ = c.SetDeadline(time.Now().Add(lateAnswer))
		if _, err := io.ReadFull(c, buf[n:]); err == nil {
			continue // late, not cut
		}
		return cut, nil
	}
	return 0, fmt.Errorf("flow still answers %v after start", limit)
}
