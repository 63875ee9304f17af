//go:build integration

package enforcer

import (
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/palisade-id/palisade/test/netns"
)

// TestOnDemandAdmission: a client agent with no configured peers gets
// admitted when its workload's first SYN leaves; the SYN retransmission
// gets through.
func TestOnDemandAdmission(t *testing.T) {
	tp := newTopology(t)
	tp.srv.ListenEcho(t, openPort)
	_, schain, skey := tp.ca.MintX509SVID(t, serverID, time.Hour)
	_, cchain, ckey := tp.ca.MintX509SVID(t, clientID, time.Hour)
	srv := newAgent(t, tp.srv, tp.config(filepath.Join(tp.pins, "srv"), []string{tp.srvGoodIf}, nil), schain, skey)
	srv.start(t)
	cli := newAgent(t, tp.good, tp.config(filepath.Join(tp.pins, "good"), []string{"eth0"}, nil), cchain, ckey)
	cli.start(t)

	dst := netip.AddrPortFrom(tp.srv4, openPort)
	start := time.Now()
	c, err := tp.good.Dial(netip.Addr{}, dst, 5*time.Second)
	if err != nil {
		t.Fatalf("first connection: %v\nclient log:\n%s", err, cli.log())
	}
	defer c.Close()
	if err := netns.Echo(c, time.Second); err != nil {
		t.Fatal(err)
	}
	t.Logf("first connection took %v (one SYN retransmission expected)", time.Since(start))
	// Now admitted: the next connection is immediate.
	if err := tp.good.Reachable(netip.Addr{}, dst, 300*time.Millisecond); err != nil {
		t.Fatalf("second connection: %v", err)
	}
	// Still only what the policy allows.
	tp.good.MustUnreachable(t, netip.Addr{}, netip.AddrPortFrom(tp.srv4, closedPort))
}
