//go:build integration

package enforcer

import (
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/palisade-id/palisade/enforcer"
	"github.com/palisade-id/palisade/test/netns"
	"github.com/palisade-id/palisade/test/testenv"
)

// TestAttachModes drives the datapath in-process through both hooks:
// default deny, admission by map entry, adoption by a second loader while
// traffic flows, and detach.
func TestAttachModes(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.Require(t, "ip", "tc")
	for _, mode := range []enforcer.AttachMode{enforcer.AttachTCX, enforcer.AttachTC} {
		t.Run(string(mode), func(t *testing.T) {
			srv, cli := netns.New(t, "srv"), netns.New(t, "cli")
			netns.Link(t, srv, "eth0", []string{"10.78.0.1/24", "fd78::1/64"}, cli, "eth0", []string{"10.78.0.2/24", "fd78::2/64"})
			srv.ListenEcho(t, 8080)
			pins := filepath.Join(netns.BPFFS(t), "p")
			ifindex := srv.Ifindex(t, "eth0")
			dst4 := netip.MustParseAddrPort("10.78.0.1:8080")
			dst6 := netip.MustParseAddrPort("[fd78::1]:8080")
			if err := cli.Reachable(netip.Addr{}, dst4, time.Second); err != nil {
				t.Fatalf("before attach: %v", err)
			}

			open := func() *enforcer.Datapath {
				d, err := enforcer.OpenDatapath(enforcer.DatapathOptions{PinDir: pins})
				if err != nil {
					t.Fatal(err)
				}
				if err := d.SetConfig(enforcer.ModeEnforce, 7443); err != nil {
					t.Fatal(err)
				}
				if err := srv.Do(func() error {
					got, err := d.Attach(ifindex, mode)
					if err == nil && got != mode {
						t.Errorf("attached with %s, want %s", got, mode)
					}
					return err
				}); err != nil {
					t.Fatal(err)
				}
				return d
			}
			d := open()
			cli.MustUnreachable(t, netip.Addr{}, dst4)
			cli.MustUnreachable(t, netip.Addr{}, dst6)

			exp := time.Now().Add(time.Hour)
			for _, a := range []string{"10.78.0.2", "fd78::2"} {
				if err := d.PutPeer(enforcer.PeerEntry{Ifindex: ifindex, Addr: netip.MustParseAddr(a), Identity: 5, Expires: exp}); err != nil {
					t.Fatal(err)
				}
			}
			if err := d.SyncPolicy(map[enforcer.PolicyKey]bool{{Identity: 5, Port: 8080, Proto: enforcer.ProtoTCP}: true}); err != nil {
				t.Fatal(err)
			}
			c, err := cli.Dial(netip.Addr{}, dst4, time.Second)
			if err != nil {
				t.Fatalf("admitted peer: %v", err)
			}
			defer c.Close()
			if err := cli.Reachable(netip.Addr{}, dst6, time.Second); err != nil {
				t.Fatalf("admitted peer over IPv6: %v", err)
			}

			// The loader goes away: enforcement and state stay.
			d.Close()
			if err := netns.Echo(c, time.Second); err != nil {
				t.Fatalf("after the loader closed: %v", err)
			}
			// A new loader adopts maps and swaps the program under the
			// established connection.
			d = open()
			defer d.Close()
			if err := netns.Echo(c, time.Second); err != nil {
				t.Fatalf("after adoption: %v", err)
			}
			peers, err := d.Peers()
			if err != nil || len(peers) != 2 {
				t.Fatalf("adopted peers = %v, %v", peers, err)
			}
			if err := d.DeletePeer(ifindex, netip.MustParseAddr("10.78.0.2")); err != nil {
				t.Fatal(err)
			}
			if err := netns.Echo(c, 300*time.Millisecond); err == nil {
				t.Fatal("established flow survived removal of its admission")
			}
			if err := srv.Do(func() error { return d.Detach(ifindex) }); err != nil {
				t.Fatal(err)
			}
			if err := cli.Reachable(netip.Addr{}, dst4, time.Second); err != nil {
				t.Fatalf("after detach: %v", err)
			}
			if mode == enforcer.AttachTCX {
				if _, err := os.Stat(filepath.Join(pins, "links")); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}
