//go:build integration

package agent

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/palisade-id/palisade/ca/admin"
	"github.com/palisade-id/palisade/test/harness"
	"github.com/palisade-id/palisade/test/netns"
	"github.com/palisade-id/palisade/test/testenv"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// The enforcement topology: the server node is the hub, with links to the
// good client, the rogue and the appliance; the good client has its own
// link to the appliance. palisade-server listens on its address on the
// server node's link; the good client reaches that address through its
// link (a host route), never through the server node.
//
//	good 10.77.1.2, fd00:77:1::2 ── 10.77.1.1, fd00:77:1::1 server node
//	rogue 10.77.2.2 ────────────── 10.77.2.1                server node
//	appliance 10.77.3.2 ────────── 10.77.3.1                server node
//	appliance 10.77.4.2 ────────── 10.77.4.1                good
const (
	applHost    = "10.77.3.2"
	webPort     = 8080 // the policy allows good → server on this port only
	closedPort  = 9090 // listening on the server node, not in the policy
	probeWindow = 100 * time.Millisecond
	// cutTarget is the target (a ban or revoke on the appliance
	// removes the peer's admission on every enforcer within 1 s) plus the
	// echo probe granularity: a cut is seen when the first probe after it
	// goes unanswered for probeWindow.
	cutTarget = time.Second + probeWindow
)

var (
	srv4   = netip.MustParseAddr("10.77.1.1")
	good4  = netip.MustParseAddr("10.77.1.2")
	srv6   = netip.MustParseAddr("fd00:77:1::1")
	rogueS = netip.MustParseAddr("10.77.2.1") // the server node, as the rogue sees it
)

type enforceNet struct {
	appl, srv, good, rogue *netns.NS
}

func newEnforceNet(t *testing.T) *enforceNet {
	t.Helper()
	n := &enforceNet{appl: netns.New(t, "appl"), srv: netns.New(t, "srv"), good: netns.New(t, "good"), rogue: netns.New(t, "rogue")}
	netns.Link(t, n.srv, "to-good", []string{"10.77.1.1/24", "fd00:77:1::1/64"}, n.good, "to-srv", []string{"10.77.1.2/24", "fd00:77:1::2/64"})
	netns.Link(t, n.srv, "to-rogue", []string{"10.77.2.1/24"}, n.rogue, "to-srv", []string{"10.77.2.2/24"})
	netns.Link(t, n.srv, "to-appl", []string{"10.77.3.1/24"}, n.appl, "to-srv", []string{applHost + "/24"})
	netns.Link(t, n.good, "to-appl", []string{"10.77.4.1/24"}, n.appl, "to-good", []string{"10.77.4.2/24"})
	n.good.IP(t, "route", "add", applHost+"/32", "via", "10.77.4.2", "dev", "to-appl")
	return n
}

// enforcerConfig is the agent configuration's enforcer part: the appliance
// (node API, CRLs and feed) is infrastructure on every interface.
func enforcerConfig(a *harness.Appliance, pins, policy string, ifaces, peers []string) string {
	q := func(ss []string) string {
		b, _ := json.Marshal(ss)
		return string(b)
	}
	return fmt.Sprintf(`appliance_url: http://%s
enforcer:
  interfaces: %s
  pin_dir: %s
  policy_file: %s
  infrastructure: %s
  peers: %s
`, a.HTTPAddr, q(ifaces), pins, policy, q([]string{a.NodeAddr, a.HTTPAddr}), q(peers))
}

// admissionRecord is an entry of the enforcer's admissions.json.
type admissionRecord struct {
	Addr  netip.Addr `json:"addr"`
	ID    string     `json:"spiffe_id"`
	Certs []struct {
		Serial string `json:"serial"`
	} `json:"certs"`
}

// admittedSerial is the leaf serial (hex) of the server node's admission
// of addr for id, "" without one.
func admittedSerial(t *testing.T, stateDir string, addr netip.Addr, id string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(stateDir, "admissions.json"))
	if errors.Is(err, os.ErrNotExist) {
		return ""
	}
	if err != nil {
		t.Fatal(err)
	}
	var recs []admissionRecord
	if err := json.Unmarshal(b, &recs); err != nil {
		t.Fatalf("admissions.json: %v", err)
	}
	for _, r := range recs {
		if r.Addr == addr && r.ID == id && len(r.Certs) > 0 {
			return r.Certs[0].Serial
		}
	}
	return ""
}

// nodeSerial is the serial (hex) of the node SVID the agent published.
func nodeSerial(t *testing.T, n *node) string {
	t.Helper()
	return harness.ReadCerts(t, filepath.Join(n.dir, "data", "node-svid.pem"))[0].SerialNumber.Text(16)
}

// logRecord is the part of a JSON log line (agent or server) the test
// reads.
type logRecord struct {
	Msg, Peer, Node, Addr, Reason string
}

func logRecords(log, msg string) []logRecord {
	var out []logRecord
	sc := bufio.NewScanner(strings.NewReader(log))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var r logRecord
		if json.Unmarshal(sc.Bytes(), &r) == nil && r.Msg == msg {
			out = append(out, r)
		}
	}
	return out
}

// removals returns the reasons the server node's agent logged for removing
// its admission of id at addr.
func removals(p *agentProc, id string, addr netip.Addr) []string {
	var out []string
	for _, r := range logRecords(p.log(), "admission removed") {
		if r.Peer == id && r.Addr == addr.String() {
			out = append(out, r.Reason)
		}
	}
	return out
}

func anyContains(ss []string, sub string) bool {
	return slices.ContainsFunc(ss, func(s string) bool { return strings.Contains(s, sub) })
}

func waitLog(t *testing.T, p *agentProc, what string, d time.Duration) {
	t.Helper()
	for deadline := time.Now().Add(d); !strings.Contains(p.log(), what); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("agent did not log %s within %v:\n%s", what, d, p.log())
		}
	}
}

// measureCut runs action (an operator command on the appliance), logs how
// long after its start the established flow c stopped answering, and fails
// beyond cutTarget.
func measureCut(t *testing.T, c net.Conn, what string, action func()) {
	t.Helper()
	if err := netns.Echo(c, time.Second); err != nil {
		t.Fatalf("established flow not answering before %s: %v", what, err)
	}
	start := time.Now()
	action()
	cli := time.Since(start)
	cut, err := netns.TimeToCut(c, start, probeWindow, 5*time.Second)
	if err != nil {
		t.Fatalf("%s: established flow: %v", what, err)
	}
	t.Logf("%s → drop: %v (the CLI returned after %v; echo probe granularity %v)", what, cut.Round(time.Millisecond), cli.Round(time.Millisecond), probeWindow)
	if cut > cutTarget {
		t.Errorf("%s → drop took %v, want ≤ %v (1 s + probe granularity)", what, cut, cutTarget)
	}
}

// TestEnforcerWithAppliance runs the kernel enforcer with the real
// appliance: palisade-server in its own namespace, two nodes whose
// palisade-agents attest with their swtpm over the veths and enforce a
// policy allowing good client → server node on one TCP port, a rogue
// without agent or SVID, and the operator's revoke and ban reaching the
// server node's enforcer through the revocation feed.
func TestEnforcerWithAppliance(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.Require(t, "ip", "ss", "openssl", "swtpm", "softhsm2-util")
	nw := newEnforceNet(t)
	// Short SVIDs: the agents renew at half-life, so a node whose SVID was
	// revoked is admitted again with its next one within the test.
	a := harness.New(t, harness.Options{ExtraCA: "x509_svid_ttl: 12s\nbackdate: 1s", ListenHost: applHost, Netns: nw.appl.Name})
	a.Ceremony()
	a.Start()
	pins := netns.BPFFS(t)
	policy := filepath.Join(t.TempDir(), "policy.yaml")
	srv := newNode(t, a, enforcerConfig(a, filepath.Join(pins, "srv"), policy, []string{"to-good", "to-rogue", "to-appl"}, nil))
	good := newNode(t, a, enforcerConfig(a, filepath.Join(pins, "good"), policy, []string{"to-srv", "to-appl"}, []string{srv4.String(), srv6.String()}))
	srvID, goodID := srv.id(a), good.id(a)
	writeFile(t, policy, []byte(fmt.Sprintf(`version: 1
rules:
  - name: good-to-server-web
    from: %s
    to: %s
    protocol: tcp
    ports: ["%d"]
`, goodID, srvID, webPort)))
	nw.srv.ListenEcho(t, webPort, closedPort)
	srvState := filepath.Join(srv.dir, "data", "enforcer")
	open4 := netip.AddrPortFrom(srv4, webPort)
	open6 := netip.AddrPortFrom(srv6, webPort)

	admitNodes(t, a, srv, good)
	// Started here, not in a subtest: they run until the test ends.
	srvAgent := startAgent(t, srv.agentBin, srv.cfgPath, nw.srv.Name)
	goodAgent := startAgent(t, good.agentBin, good.cfgPath, nw.good.Name)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("server node agent log:\n%s\ngood client agent log:\n%s\nappliance log:\n%s", srvAgent.log(), goodAgent.log(), a.Log())
		}
	})

	if !t.Run("nodes attest over the veths and enforce", func(t *testing.T) {
		out, err := exec.Command("ip", "netns", "exec", nw.appl.Name, "ss", "-Htln").CombinedOutput()
		if err != nil {
			t.Fatalf("ss: %v\n%s", err, out)
		}
		for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			f := strings.Fields(l)
			if len(f) < 4 {
				continue
			}
			if ap, err := netip.ParseAddrPort(f[3]); err != nil || (ap.Addr().String() != applHost && !ap.Addr().IsLoopback()) {
				t.Errorf("palisade-server listens on %s: want the appliance's veth address or loopback only", f[3])
			}
		}
		waitLog(t, srvAgent, `"msg":"palisade-agent ready"`, 60*time.Second)
		waitLog(t, goodAgent, `"msg":"palisade-agent ready"`, 60*time.Second)
		// Each node attested from its own namespace, over its veth.
		for _, x := range []struct{ id, from string }{{srvID, "10.77.3.1"}, {goodID, "10.77.4.1"}} {
			if !slices.ContainsFunc(logRecords(a.Log(), "node attested"), func(r logRecord) bool {
				ap, err := netip.ParseAddrPort(r.Peer)
				return r.Node == x.id && err == nil && ap.Addr().String() == x.from
			}) {
				t.Errorf("appliance log shows no attestation of %s from %s", x.id, x.from)
			}
		}
		bundle := applianceBundle(t, a)
		for _, x := range []struct {
			n      *node
			id     string
			pins   string
			ifaces int
		}{{srv, srvID, "srv", 3}, {good, goodID, "good", 2}} {
			id, _, err := x509svid.Verify(harness.ReadCerts(t, filepath.Join(x.n.dir, "data", "node-svid.pem")), bundle)
			if err != nil || id.String() != x.id {
				t.Fatalf("published node SVID: %s %v, want %s", id, err, x.id)
			}
			// Ingress and (on-demand admission) egress on every interface,
			// pinned so that enforcement outlives the agent.
			if links, err := os.ReadDir(filepath.Join(pins, x.pins, "links")); err != nil || len(links) != 2*x.ifaces {
				t.Fatalf("%s: pinned links %v, %v; want %d", x.pins, links, err, 2*x.ifaces)
			}
		}
	}) {
		t.FailNow()
	}

	t.Run("good client reaches the allowed port only, rogue nothing", func(t *testing.T) {
		nw.good.WaitReachable(t, open4, 30*time.Second)
		nw.good.WaitReachable(t, open6, 30*time.Second)
		nw.good.MustUnreachable(t, netip.Addr{}, netip.AddrPortFrom(srv4, closedPort))
		nw.good.MustUnreachable(t, netip.Addr{}, netip.AddrPortFrom(srv6, closedPort))
		nw.rogue.MustUnreachable(t, netip.Addr{}, netip.AddrPortFrom(rogueS, webPort))
		nw.rogue.MustUnreachable(t, netip.Addr{}, netip.AddrPortFrom(rogueS, closedPort))
		if admittedSerial(t, srvState, good4, goodID) == "" {
			t.Fatal("server node's admissions.json has no admission of the good client")
		}
	})

	// Revoke comes before ban: a ban is final for the node.
	t.Run("revoked node SVID loses its admission within a second", func(t *testing.T) {
		// Revoke the serial the server node enforces on, right after the
		// client was (re-)admitted with its current SVID: its next
		// re-admission is then seconds away (at two thirds of the remaining
		// admission, which ends with an SVID that has at least half its
		// life left).
		before := admittedSerial(t, srvState, good4, goodID)
		var serial string
		waitFor(t, 30*time.Second, "a fresh admission of the good client under its current SVID", func() bool {
			s := admittedSerial(t, srvState, good4, goodID)
			if s != "" && s != before && s == nodeSerial(t, good) {
				serial = s
				return true
			}
			return false
		})
		c, err := nw.good.Dial(netip.Addr{}, open4, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		logged := len(removals(srvAgent, goodID, good4))
		// The client's agent re-attests within a fraction of a second of
		// learning that its SVID was revoked, and its flows resume under
		// the new SVID. Held stopped meanwhile, it cannot: the cut is
		// measured alone. Its pinned enforcement keeps working.
		pid := goodAgent.cmd.Process.Pid
		if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		resumed := false
		resume := func() {
			if !resumed {
				resumed = true
				if err := syscall.Kill(pid, syscall.SIGCONT); err != nil {
					t.Error(err)
				}
			}
		}
		defer resume()
		measureCut(t, c, "revoke", func() {
			a.MustCLIFor(t, "revoke", "-serial", serial, "-reason", "keyCompromise")
		})
		if r := removals(srvAgent, goodID, good4)[logged:]; !anyContains(r, "SVID revoked: serial "+serial) {
			t.Fatalf("server node's removals of the good client since the revocation: %q, want one for serial %s", r, serial)
		}
		nw.good.MustUnreachable(t, netip.Addr{}, open4)
		// The node is not banned: its agent learns from the feed that its
		// own SVID was revoked and attests again at once (not at
		// half-life), and the client is admitted again under another serial.
		resume()
		start := time.Now()
		waitLog(t, goodAgent, "node SVID revoked; attesting again", 5*time.Second)
		nw.good.WaitReachable(t, open4, 40*time.Second)
		t.Logf("admitted again %v after the revocation", time.Since(start).Round(time.Millisecond))
		if s := admittedSerial(t, srvState, good4, goodID); s == "" || s == serial {
			t.Fatalf("re-admission under serial %q, want a new one (revoked %s)", s, serial)
		}
		if s := nodeSerial(t, good); s == serial {
			t.Fatalf("the agent still publishes the revoked serial %s", s)
		}
	})

	t.Run("ban cuts established and new flows within a second", func(t *testing.T) {
		nw.good.WaitReachable(t, open4, 30*time.Second)
		nw.good.WaitReachable(t, open6, 30*time.Second)
		c4, err := nw.good.Dial(netip.Addr{}, open4, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c4.Close()
		c6, err := nw.good.Dial(netip.Addr{}, open6, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c6.Close()
		if err := netns.Echo(c6, time.Second); err != nil {
			t.Fatal(err)
		}
		logged := len(removals(srvAgent, goodID, good4))
		var ban admin.BanResponse
		measureCut(t, c4, "ban", func() {
			out := a.MustCLIFor(t, "node", "ban", "-node", goodID, "-reason", "e2e: enforcer")
			if err := json.Unmarshal([]byte(out), &ban); err != nil {
				t.Fatal(err)
			}
		})
		if !ban.Node.Banned || ban.Revoked < 1 {
			t.Fatalf("ban: %+v", ban)
		}
		if err := netns.Echo(c6, 300*time.Millisecond); err == nil {
			t.Fatal("established IPv6 flow survived the ban")
		}
		// Removed for the revocation the ban made, not by expiry.
		if r := removals(srvAgent, goodID, good4)[logged:]; !anyContains(r, "SVID revoked") {
			t.Fatalf("server node's removals of the good client after the ban: %q", r)
		}
		nw.good.MustUnreachable(t, netip.Addr{}, open4)
		nw.good.MustUnreachable(t, netip.Addr{}, open6)
	})
}
