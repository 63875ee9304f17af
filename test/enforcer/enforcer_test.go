//go:build integration

package enforcer

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/palisade-id/palisade/enforcer"
	"github.com/palisade-id/palisade/test/netns"
	"github.com/palisade-id/palisade/test/testca"
	"github.com/palisade-id/palisade/test/testenv"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

const (
	td         = "example.org"
	serverID   = "spiffe://example.org/node/server"
	clientID   = "spiffe://example.org/node/client"
	admPort    = 7443
	openPort   = 8080 // the policy allows client → server
	closedPort = 9090 // listening, but not in the policy
	applPort   = 8443 // the appliance's service
)

const testPolicy = `version: 1
rules:
  - name: client-to-server-web
    from: spiffe://example.org/node/client
    to: spiffe://example.org/node/server
    protocol: tcp
    ports: ["8080"]
  - name: rogue-would-like-this
    from: spiffe://example.org/node/rogue
    to: spiffe://example.org/node/server
    protocol: tcp
    ports: ["8080"]
`

// topology: server with one veth to the good client and one to the
// rogue client. The appliance's revocation feed is the agents' revoked
// and banned files (the revocation package replaces them in production).
type topology struct {
	ca                    *testca.CA
	srv, good, rogue      *netns.NS
	appl                  *netns.NS
	srvGoodIf, srvRogueIf string
	srv4, good4, rogue4   netip.Addr
	srv6, good6           netip.Addr
	pins                  string
	policyPath            string
	bundlePath            string
}

func newTopology(t *testing.T) *topology {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.Require(t, "ip", "tc")
	tp := &topology{
		ca:  testca.New(t, td),
		srv: netns.New(t, "srv"), good: netns.New(t, "good"), rogue: netns.New(t, "rogue"),
		srvGoodIf: "to-good", srvRogueIf: "to-rogue",
		srv4: netip.MustParseAddr("10.77.1.1"), good4: netip.MustParseAddr("10.77.1.2"),
		rogue4: netip.MustParseAddr("10.77.2.2"),
		srv6:   netip.MustParseAddr("fd77:1::1"), good6: netip.MustParseAddr("fd77:1::2"),
	}
	netns.Link(t, tp.srv, tp.srvGoodIf, []string{"10.77.1.1/24", "fd77:1::1/64"}, tp.good, "eth0", []string{"10.77.1.2/24", "fd77:1::2/64"})
	netns.Link(t, tp.srv, tp.srvRogueIf, []string{"10.77.2.1/24"}, tp.rogue, "eth0", []string{"10.77.2.2/24"})
	// The appliance (CA, attestation, CRLs): reached as infrastructure (TCP; UDP with the /udp suffix).
	tp.appl = netns.New(t, "appl")
	netns.Link(t, tp.srv, "to-appl", []string{"10.77.3.1/24"}, tp.appl, "eth0", []string{"10.77.3.2/24"})
	// The rogue can route to the good client's subnet through the server's
	// rogue-facing link: the path a spoofed source takes.
	tp.rogue.IP(t, "route", "add", "10.77.1.0/24", "dev", "eth0")
	tp.pins = netns.BPFFS(t)
	dir := t.TempDir()
	tp.policyPath = filepath.Join(dir, "policy.yaml")
	tp.bundlePath = filepath.Join(dir, "bundle.pem")
	if err := os.WriteFile(tp.policyPath, []byte(testPolicy), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(tp.bundlePath, tp.ca.BundlePEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	return tp
}

func (tp *topology) config(pinDir string, ifaces []string, peers []string) enforcer.Config {
	c := enforcer.Config{
		Interfaces: ifaces, PinDir: pinDir, AdmissionPort: admPort,
		TrustDomain: td, TrustBundle: tp.bundlePath, PolicyFile: tp.policyPath, Peers: peers,
		RecheckInterval: 100 * time.Millisecond,
	}
	c.SetDefaults()
	return c
}

func hasFlow(recs []enforcer.FlowRecord, pred func(enforcer.FlowRecord) bool) bool {
	for _, r := range recs {
		if pred(r) {
			return true
		}
	}
	return false
}

// nullTable lets a rogue run admission without a kernel of its own.
type nullTable struct{}

func (nullTable) PutPeer(enforcer.PeerEntry) error                    { return nil }
func (nullTable) DeletePeer(int, netip.Addr) error                    { return nil }
func (nullTable) Peers() ([]enforcer.PeerEntry, error)                { return nil, nil }
func (nullTable) PolicyEntries() (map[enforcer.PolicyKey]bool, error) { return nil, nil }
func (nullTable) SyncPolicy(map[enforcer.PolicyKey]bool) error        { return nil }
func (nullTable) AdmissionIfindex(netip.AddrPort) (int, error)        { return 1, nil }

type allowAll struct{}

func (allowAll) Revoked(*big.Int, []byte) (bool, error) { return false, nil }

// rogueAdmit tries admission to the server from the rogue namespace with
// the given SVID; the rogue itself trusts anything from the CA.
func (tp *topology) rogueAdmit(t *testing.T, id string, chain []*x509.Certificate, key crypto.Signer) error {
	t.Helper()
	pol, err := enforcer.ParsePolicy([]byte(testPolicy))
	if err != nil {
		t.Fatal(err)
	}
	sid, err := x509svid.IDFromCert(chain[0])
	if err != nil {
		t.Fatal(err)
	}
	tdd := spiffeid.RequireTrustDomainFromString(td)
	a, err := enforcer.NewAdmitter(enforcer.AdmitterOptions{
		Table: nullTable{}, SVID: &x509svid.SVID{ID: sid, Certificates: chain, PrivateKey: key},
		Verifier: &enforcer.Verifier{TrustDomain: tdd, Bundle: x509bundle.FromX509Authorities(tdd, []*x509.Certificate{tp.ca.Root()}),
			Revocation: allowAll{}},
		Policy: pol, AdmissionPort: admPort, MaxAdmission: time.Hour,
	})
	if err != nil {
		t.Fatal(err)
	}
	return tp.rogue.Do(func() error {
		_, err := a.Admit(context.Background(), netip.AddrPortFrom(netip.MustParseAddr("10.77.2.1"), admPort))
		return err
	})
}

func TestEnforcerEndToEnd(t *testing.T) {
	tp := newTopology(t)
	tp.srv.ListenEcho(t, openPort, closedPort)

	_, schain, skey := tp.ca.MintX509SVID(t, serverID, time.Hour)
	_, cchain, ckey := tp.ca.MintX509SVID(t, clientID, time.Hour)
	srvPins := filepath.Join(tp.pins, "srv")
	tp.appl.ListenEcho(t, applPort)
	srvCfg := tp.config(srvPins, []string{tp.srvGoodIf, tp.srvRogueIf, "to-appl"}, nil)
	srvCfg.Infrastructure = []string{"10.77.3.2:" + strconv.Itoa(applPort)}
	srv := newAgent(t, tp.srv, srvCfg, schain, skey)
	srv.start(t)
	// Nothing passes until the client admits itself.
	tp.good.MustUnreachable(t, netip.Addr{}, netip.AddrPortFrom(tp.srv4, openPort))

	cli := newAgent(t, tp.good, tp.config(filepath.Join(tp.pins, "good"), []string{"eth0"},
		[]string{tp.srv4.String(), tp.srv6.String()}), cchain, ckey)
	cli.start(t)

	open4 := netip.AddrPortFrom(tp.srv4, openPort)
	open6 := netip.AddrPortFrom(tp.srv6, openPort)
	fromRogue := netip.AddrPortFrom(netip.MustParseAddr("10.77.2.1"), openPort)

	t.Run("good client reaches only allowed ports", func(t *testing.T) {
		tp.good.WaitReachable(t, open4, 10*time.Second)
		tp.good.WaitReachable(t, open6, 10*time.Second)
		tp.good.MustUnreachable(t, netip.Addr{}, netip.AddrPortFrom(tp.srv4, closedPort))
		tp.good.MustUnreachable(t, netip.Addr{}, netip.AddrPortFrom(tp.srv6, closedPort))
	})

	t.Run("appliance reachable as infrastructure only", func(t *testing.T) {
		if err := tp.srv.Reachable(netip.Addr{}, netip.MustParseAddrPort("10.77.3.2:"+strconv.Itoa(applPort)), time.Second); err != nil {
			t.Fatalf("server node cannot reach the appliance: %v", err)
		}
		// The appliance cannot open flows to the node, not even from its
		// service port.
		tp.appl.MustUnreachable(t, netip.Addr{}, netip.MustParseAddrPort("10.77.3.1:8080"))
		var c net.Conn
		err := tp.appl.Do(func() (err error) {
			d := net.Dialer{Timeout: 400 * time.Millisecond, LocalAddr: &net.TCPAddr{Port: applPort + 1}}
			c, err = d.Dial("tcp", "10.77.3.1:8080")
			return err
		})
		if err == nil {
			c.Close()
			t.Fatal("appliance opened a flow to the node")
		}
	})

	t.Run("no SVID", func(t *testing.T) {
		tp.rogue.MustUnreachable(t, netip.Addr{}, fromRogue)
	})

	t.Run("bad SVIDs refused at admission", func(t *testing.T) {
		_, expChain, expKey := tp.ca.MintX509SVIDWith(t, "spiffe://example.org/node/rogue", time.Hour,
			testca.SVIDOptions{NotBefore: time.Now().Add(-2 * time.Hour), NotAfter: time.Now().Add(-time.Minute)})
		_, revChain, revKey := tp.ca.MintX509SVID(t, "spiffe://example.org/node/rogue", time.Hour)
		srv.revoke(t, revChain[0].SerialNumber)
		_, banChain, banKey := tp.ca.MintX509SVID(t, "spiffe://example.org/node/rogue", time.Hour)
		_ = banChain
		_, forChain, forKey := testca.New(t, "evil.org").MintX509SVID(t, "spiffe://evil.org/node/rogue", time.Hour)
		_, lookChain, lookKey := testca.New(t, td).MintX509SVID(t, "spiffe://example.org/node/rogue", time.Hour)
		selfCert, selfKey := testca.SelfSigned(t, "spiffe://example.org/node/rogue", time.Hour)
		cases := []struct {
			name  string
			chain []*x509.Certificate
			key   crypto.Signer
			setup func()
		}{
			{"expired SVID", expChain, expKey, nil},
			{"revoked SVID", revChain, revKey, nil},
			{"foreign trust domain", forChain, forKey, nil},
			{"look-alike CA for our trust domain", lookChain, lookKey, nil},
			{"self-signed look-alike", []*x509.Certificate{selfCert}, selfKey, nil},
			{"banned node", banChain, banKey, func() { srv.ban(t, "spiffe://example.org/node/rogue") }},
		}
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				if c.setup != nil {
					c.setup()
				}
				err := tp.rogueAdmit(t, "", c.chain, c.key)
				if !errors.Is(err, enforcer.ErrNotAdmitted) {
					t.Fatalf("admission = %v, want ErrNotAdmitted", err)
				}
				tp.rogue.MustUnreachable(t, netip.Addr{}, fromRogue)
			})
		}
	})

	t.Run("spoofed source address", func(t *testing.T) {
		// The rogue claims the admitted good client's address; it arrives
		// on the server's rogue-facing interface, which has no admission.
		tp.rogue.IP(t, "addr", "add", tp.good4.String()+"/32", "dev", "eth0")
		tp.rogue.MustUnreachable(t, tp.good4, open4)
		ifc := tp.srv.Ifindex(t, tp.srvRogueIf)
		if !hasFlow(srv.flows(t), func(r enforcer.FlowRecord) bool {
			return r.FromAddr == tp.good4 && r.Ifindex == ifc && r.Verdict == "drop" && r.Reason == "not-admitted"
		}) {
			t.Fatalf("no drop record for the spoofed source on ifindex %d", ifc)
		}
	})

	t.Run("flow log records allowed and dropped flows", func(t *testing.T) {
		recs := srv.flows(t)
		if !hasFlow(recs, func(r enforcer.FlowRecord) bool {
			return r.From == clientID && r.To == serverID && r.Port == openPort && r.Verdict == "pass"
		}) {
			t.Fatal("no pass record for client → server:8080")
		}
		if !hasFlow(recs, func(r enforcer.FlowRecord) bool {
			return r.From == clientID && r.Port == closedPort && r.Verdict == "drop" && r.Reason == "no-policy"
		}) {
			t.Fatal("no drop record for client → server:9090")
		}
		pol, err := enforcer.LoadPolicy(tp.policyPath)
		if err != nil {
			t.Fatal(err)
		}
		d := enforcer.Drift(pol, recs)
		if len(d.NotAllowed) == 0 || d.NotAllowed[0].Port != closedPort || len(d.UnusedRules) != 1 || d.UnusedRules[0] != "rogue-would-like-this" {
			t.Fatalf("drift = %+v", d)
		}
	})

	t.Run("daemon killed: still enforced", func(t *testing.T) {
		srv.kill9(t)
		if err := tp.good.Reachable(netip.Addr{}, open4, time.Second); err != nil {
			t.Fatalf("admitted client lost access when the daemon died: %v", err)
		}
		tp.good.MustUnreachable(t, netip.Addr{}, netip.AddrPortFrom(tp.srv4, closedPort))
		tp.rogue.MustUnreachable(t, netip.Addr{}, fromRogue)
	})

	t.Run("audit mode passes and logs would-be drops", func(t *testing.T) {
		srv.cfg.Mode = "audit"
		srv.writeConfig(t)
		defer func() {
			srv.kill9(t)
			srv.cfg.Mode = "enforce"
			srv.writeConfig(t)
		}()
		srv.start(t)
		if err := tp.rogue.Reachable(netip.Addr{}, fromRogue, time.Second); err != nil {
			t.Fatalf("audit mode dropped: %v", err)
		}
		waitFlow(t, srv, func(r enforcer.FlowRecord) bool {
			return r.FromAddr == tp.rogue4 && r.Port == openPort && r.Verdict == "audit" && r.Reason == "not-admitted"
		})
	})

	var established net.Conn
	t.Run("daemon restarted: adopts pinned state", func(t *testing.T) {
		srv.start(t)
		// The client did not re-admit (max admission is an hour): access
		// comes from the adopted kernel entry and saved admission record.
		var err error
		established, err = tp.good.Dial(netip.Addr{}, open4, time.Second)
		if err != nil {
			st, _ := os.ReadFile(filepath.Join(srv.cfg.StateDir, "admissions.json"))
			t.Fatalf("%v\nstate: %s\nlog:\n%s", err, st, srv.log())
		}
		if err := netns.Echo(established, time.Second); err != nil {
			t.Fatal(err)
		}
		tp.rogue.MustUnreachable(t, netip.Addr{}, fromRogue)
		links, err := os.ReadDir(filepath.Join(srvPins, "links"))
		if err != nil || len(links) != 6 {
			t.Fatalf("pinned links = %v, %v; want ingress and egress on 3 interfaces", links, err)
		}
		if err := tp.srv.Reachable(netip.Addr{}, netip.MustParseAddrPort("10.77.3.2:"+strconv.Itoa(applPort)), time.Second); err != nil {
			t.Fatalf("appliance unreachable after restart: %v", err)
		}
	})

	t.Run("revocation cuts established flows within a second", func(t *testing.T) {
		if established == nil {
			t.Skip("no established connection")
		}
		defer established.Close()
		start := time.Now()
		srv.revoke(t, cchain[0].SerialNumber)
		cut, err := netns.TimeToCut(established, start, 100*time.Millisecond, 5*time.Second)
		if err != nil {
			t.Fatalf("established flow survived revocation: %v", err)
		}
		t.Logf("revoke → drop: %v (echo probe granularity 100 ms)", cut)
		if cut > time.Second+100*time.Millisecond { // target 1 s, plus the probe granularity
			t.Fatalf("revoke → drop took %v", cut)
		}
		tp.good.MustUnreachable(t, netip.Addr{}, open4)
	})
}

func waitFlow(t *testing.T, a *agentProc, pred func(enforcer.FlowRecord) bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if hasFlow(a.flows(t), pred) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatal("flow record not found")
}
