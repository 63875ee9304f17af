package enforcer

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"maps"
	"math/big"
	"net"
	"net/netip"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/palisade-id/palisade/ca/tlspolicy"
	"github.com/palisade-id/palisade/test/testca"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"golang.org/x/sys/unix"
)

// fakeTable is an in-memory PeerTable: admission logic without root.
type fakeTable struct {
	mu       sync.Mutex
	peers    map[peerKey]PeerEntry
	policy   map[PolicyKey]bool
	capacity int // policy entries the "kernel" holds; 0: unlimited
	// watch, if set, sees the table after every single change, as a
	// packet arriving between two map writes would; f.mu is held.
	watch func(f *fakeTable)
}

func (f *fakeTable) changed() {
	if f.watch != nil {
		f.watch(f)
	}
}

func newFakeTable() *fakeTable {
	return &fakeTable{peers: map[peerKey]PeerEntry{}, policy: map[PolicyKey]bool{}}
}

// PutPeer refuses a past expiry, as Datapath.PutPeer does.
func (f *fakeTable) PutPeer(e PeerEntry) error {
	if !time.Now().Before(e.Expires) {
		return fmt.Errorf("%w: expiry %v is in the past", ErrExpired, e.Expires)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.peers[peerKey{e.Ifindex, e.Addr}] = e
	f.changed()
	return nil
}

func (f *fakeTable) DeletePeer(i int, a netip.Addr) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.peers, peerKey{i, a})
	f.changed()
	return nil
}

func (f *fakeTable) Peers() ([]PeerEntry, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []PeerEntry
	for _, e := range f.peers {
		out = append(out, e)
	}
	return out, nil
}

// SyncPolicy works like Datapath.SyncPolicy: adds before deletes, and
// fails part way, as the kernel does, once the map is full.
func (f *fakeTable) SyncPolicy(m map[PolicyKey]bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for k := range m {
		if f.policy[k] {
			continue
		}
		if f.capacity > 0 && len(f.policy) >= f.capacity {
			return fmt.Errorf("write policy entry %+v: %w", k, unix.E2BIG)
		}
		f.policy[k] = true
		f.changed()
	}
	for k := range f.policy {
		if !m[k] {
			delete(f.policy, k)
			f.changed()
		}
	}
	return nil
}

func (f *fakeTable) PolicyEntries() (map[PolicyKey]bool, error) { return f.policyEntries(), nil }

func (f *fakeTable) setCapacity(n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.capacity = n
}

func (f *fakeTable) policyEntries() map[PolicyKey]bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return maps.Clone(f.policy)
}

func (f *fakeTable) AdmissionIfindex(netip.AddrPort) (int, error) { return 1, nil }

func (f *fakeTable) get(a netip.Addr) (PeerEntry, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	e, ok := f.peers[peerKey{1, a}]
	return e, ok
}

// fakeRevocation is a revocation list plus a ban list.
type fakeRevocation struct {
	mu      sync.Mutex
	serials map[string]bool
	banned  map[string]bool
	fail    error
}

func newFakeRevocation() *fakeRevocation {
	return &fakeRevocation{serials: map[string]bool{}, banned: map[string]bool{}}
}

func (f *fakeRevocation) Revoked(serial *big.Int, _ []byte) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.serials[serial.String()], f.fail
}

func (f *fakeRevocation) Banned(id spiffeid.ID) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.banned[id.String()], nil
}

func (f *fakeRevocation) revoke(s *big.Int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.serials[s.String()] = true
}

const admissionPolicy = `version: 1
rules:
  - name: client-to-server
    from: spiffe://example.org/node/client
    to: spiffe://example.org/node/server
    protocol: tcp
    ports: ["8080"]
`

type side struct {
	a     *Admitter
	table *fakeTable
	rev   *fakeRevocation
}

func svidFor(t testing.TB, chain []*x509.Certificate, key crypto.Signer) *x509svid.SVID {
	t.Helper()
	id, err := x509svid.IDFromCert(chain[0])
	if err != nil {
		t.Fatal(err)
	}
	return &x509svid.SVID{ID: id, Certificates: chain, PrivateKey: key}
}

func freePort(t testing.TB) uint16 {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return uint16(ln.Addr().(*net.TCPAddr).Port)
}

func newSide(t *testing.T, ca *testca.CA, svid *x509svid.SVID, port uint16, state string) *side {
	t.Helper()
	p, err := ParsePolicy([]byte(admissionPolicy))
	if err != nil {
		t.Fatal(err)
	}
	s := &side{table: newFakeTable(), rev: newFakeRevocation()}
	s.a, err = NewAdmitter(AdmitterOptions{
		Table: s.table,
		SVID:  svid,
		Verifier: &Verifier{TrustDomain: spiffeid.RequireTrustDomainFromString("example.org"),
			Bundle:     x509bundle.FromX509Authorities(spiffeid.RequireTrustDomainFromString("example.org"), []*x509.Certificate{ca.Root()}),
			Revocation: s.rev, Bans: s.rev},
		Policy:        p,
		AdmissionPort: port,
		MaxAdmission:  time.Hour,
		StatePath:     state,
	})
	if err != nil {
		t.Fatal(err)
	}
	// Background state writes end before the temp dir goes.
	t.Cleanup(s.a.Flush)
	return s
}

func serve(t *testing.T, s *side, addr string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ln, err := ListenAdmission(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = s.a.Serve(ctx, ln) }()
	t.Cleanup(func() { cancel(); <-done })
}

var (
	clientAddr = netip.MustParseAddr("127.0.0.1")
	serverAddr = netip.MustParseAddr("127.0.0.2")
)

// pair is a serving server side and a client side with hour-long SVIDs.
type pair struct {
	ca       *testca.CA
	srv, cli *side
	client   *x509svid.SVID // cli's SVID
	port     uint16
	addr     netip.AddrPort // the server's admission address
}

// newPair calls tune before the server serves: Serve reads the options
// without a lock.
func newPair(t *testing.T, serverState string, tune func(srv *side)) *pair {
	t.Helper()
	ca := testca.New(t, "example.org")
	port := freePort(t)
	_, schain, skey := ca.MintX509SVID(t, "spiffe://example.org/node/server", time.Hour)
	_, cchain, ckey := ca.MintX509SVID(t, "spiffe://example.org/node/client", time.Hour)
	p := &pair{ca: ca, client: svidFor(t, cchain, ckey), port: port, addr: netip.AddrPortFrom(serverAddr, port)}
	p.srv = newSide(t, ca, svidFor(t, schain, skey), port, serverState)
	if tune != nil {
		tune(p.srv)
	}
	p.cli = newSide(t, ca, p.client, port, "")
	serve(t, p.srv, p.addr.String())
	return p
}

// admit admits the client to the server or fails the test.
func (p *pair) admit(t *testing.T) {
	t.Helper()
	if _, err := p.cli.a.Admit(context.Background(), p.addr); err != nil {
		t.Fatal(err)
	}
}

func TestMutualAdmission(t *testing.T) {
	ca := testca.New(t, "example.org")
	port := freePort(t)
	_, schain, skey := ca.MintX509SVID(t, "spiffe://example.org/node/server", 10*time.Minute)
	_, cchain, ckey := ca.MintX509SVID(t, "spiffe://example.org/node/client", time.Hour)
	srv := newSide(t, ca, svidFor(t, schain, skey), port, "")
	cli := newSide(t, ca, svidFor(t, cchain, ckey), port, "")
	serve(t, srv, netip.AddrPortFrom(serverAddr, port).String())

	exp, err := cli.a.Admit(context.Background(), netip.AddrPortFrom(serverAddr, port))
	if err != nil {
		t.Fatalf("Admit: %v", err)
	}
	// The server's SVID expires first: both sides' earliest expiry.
	if d := exp.Sub(schain[0].NotAfter); d > time.Second || d < -time.Second {
		t.Fatalf("expiry = %v, want the server SVID's not-after %v", exp, schain[0].NotAfter)
	}
	se, ok := srv.table.get(clientAddr)
	if !ok {
		t.Fatal("server did not admit the client")
	}
	// Client SVID lives an hour; MaxAdmission is an hour: expiry ~ now+1h.
	if d := time.Until(se.Expires); d < 59*time.Minute || d > time.Hour {
		t.Fatalf("client entry expires in %v, want about an hour", d)
	}
	if !srv.table.policy[PolicyKey{se.Identity, 8080, ProtoTCP, Inbound}] {
		t.Fatalf("server policy map %v lacks inbound 8080 for identity %d", srv.table.policy, se.Identity)
	}
	ce, ok := cli.table.get(serverAddr)
	if !ok {
		t.Fatal("client did not admit the server (mutual admission)")
	}
	if !cli.table.policy[PolicyKey{ce.Identity, 8080, ProtoTCP, Reply}] || ce.Expires.After(schain[0].NotAfter) {
		t.Fatalf("client entry %+v / policy %v: want reply 8080 expiring by the server SVID", ce, cli.table.policy)
	}
	if id, ok := srv.a.PeerID(1, clientAddr); !ok || id.String() != "spiffe://example.org/node/client" {
		t.Fatalf("PeerID = %v, %v", id, ok)
	}

	// Revocation removes the admission at the next recheck.
	srv.rev.revoke(cchain[0].SerialNumber)
	if n := srv.a.Recheck(); n != 1 {
		t.Fatalf("Recheck removed %d, want 1", n)
	}
	if _, ok := srv.table.get(clientAddr); ok {
		t.Fatal("revoked client still admitted")
	}
	// And re-admission is refused.
	if _, err := cli.a.Admit(context.Background(), netip.AddrPortFrom(serverAddr, port)); !errors.Is(err, ErrNotAdmitted) {
		t.Fatalf("re-admission after revocation: %v, want ErrNotAdmitted", err)
	}
}

func TestAdmissionRefusals(t *testing.T) {
	ca := testca.New(t, "example.org")
	evil := testca.New(t, "evil.org")
	port := freePort(t)
	_, schain, skey := ca.MintX509SVID(t, "spiffe://example.org/node/server", time.Hour)
	srv := newSide(t, ca, svidFor(t, schain, skey), port, "")
	serve(t, srv, netip.AddrPortFrom(serverAddr, port).String())

	_, revokedChain, revokedKey := ca.MintX509SVID(t, "spiffe://example.org/node/client", time.Hour)
	srv.rev.revoke(revokedChain[0].SerialNumber)
	_, bannedChain, bannedKey := ca.MintX509SVID(t, "spiffe://example.org/node/banned", time.Hour)
	srv.rev.banned["spiffe://example.org/node/banned"] = true
	_, expChain, expKey := ca.MintX509SVIDWith(t, "spiffe://example.org/node/client", time.Hour,
		testca.SVIDOptions{NotBefore: time.Now().Add(-2 * time.Hour), NotAfter: time.Now().Add(-time.Minute)})
	_, foreignChain, foreignKey := evil.MintX509SVID(t, "spiffe://evil.org/node/client", time.Hour)
	// A foreign CA minting a name in our trust domain: chains to nothing we trust.
	_, spoofChain, spoofKey := testca.New(t, "example.org").MintX509SVID(t, "spiffe://example.org/node/client", time.Hour)
	selfCert, selfKey := testca.SelfSigned(t, "spiffe://example.org/node/client", time.Hour)
	_, nopolChain, nopolKey := ca.MintX509SVID(t, "spiffe://example.org/node/stranger", time.Hour)

	tests := []struct {
		name  string
		chain []*x509.Certificate
		key   crypto.Signer
	}{
		{"revoked SVID", revokedChain, revokedKey},
		{"banned node", bannedChain, bannedKey},
		{"expired SVID", expChain, expKey},
		{"foreign trust domain", foreignChain, foreignKey},
		{"foreign CA", spoofChain, spoofKey},
		{"self-signed look-alike", []*x509.Certificate{selfCert}, selfKey},
		{"no policy for the peer", nopolChain, nopolKey},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// A distinct loopback source per case, so entries cannot mask each other.
			src := netip.MustParseAddr("127.0.1." + strconv.Itoa(i+1))
			cli := &side{table: newFakeTable()}
			// The client side trusts everything (the server must refuse).
			cli.a = &Admitter{o: AdmitterOptions{Table: cli.table, SVID: svidFor(t, tt.chain, tt.key),
				Verifier: &Verifier{TrustDomain: spiffeid.RequireTrustDomainFromString("example.org"),
					Bundle:     x509bundle.FromX509Authorities(spiffeid.RequireTrustDomainFromString("example.org"), []*x509.Certificate{ca.Root()}),
					Revocation: newFakeRevocation()}, AdmissionPort: port, MaxAdmission: time.Hour},
				policy: srv.a.policy, admitted: map[peerKey]*admission{}}
			_, err := admitFrom(cli.a, src, netip.AddrPortFrom(serverAddr, port))
			if !errors.Is(err, ErrNotAdmitted) {
				t.Fatalf("Admit = %v, want ErrNotAdmitted", err)
			}
			t.Logf("refused: %v", err)
			if _, ok := srv.table.get(src); ok {
				t.Fatal("server admitted the peer")
			}
		})
	}
	if len(srv.table.peers) != 0 {
		t.Fatalf("server table = %v, want empty", srv.table.peers)
	}
}

// admitFrom is Admit from a chosen source address.
func admitFrom(a *Admitter, src netip.Addr, dst netip.AddrPort) (time.Time, error) {
	ctx, cancel := context.WithTimeout(context.Background(), handshakeTimeout)
	defer cancel()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: src.AsSlice()}}
	c, err := d.DialContext(ctx, "tcp", dst.String())
	if err != nil {
		return time.Time{}, err
	}
	defer c.Close()
	return a.admitConn(ctx, c, dst)
}

func TestAdmissionWithoutClientCertificate(t *testing.T) {
	ca := testca.New(t, "example.org")
	port := freePort(t)
	_, schain, skey := ca.MintX509SVID(t, "spiffe://example.org/node/server", time.Hour)
	srv := newSide(t, ca, svidFor(t, schain, skey), port, "")
	serve(t, srv, netip.AddrPortFrom(serverAddr, port).String())
	c, err := tls.Dial("tcp", netip.AddrPortFrom(serverAddr, port).String(),
		tlspolicy.Apply(&tls.Config{InsecureSkipVerify: true}))
	if err == nil {
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = c.Read(make([]byte, 1))
		c.Close()
	}
	if err == nil {
		t.Fatal("server answered a client without a certificate")
	}
	if len(srv.table.peers) != 0 {
		t.Fatal("server admitted a client without a certificate")
	}
}

func TestAdmissionStateSurvivesRestart(t *testing.T) {
	p := newPair(t, filepath.Join(t.TempDir(), "admissions.json"), nil)
	p.admit(t)
	// A kernel entry nobody recorded: its revocation cannot be checked.
	orphan := netip.MustParseAddr("127.0.9.9")
	if err := p.srv.table.PutPeer(PeerEntry{Ifindex: 1, Addr: orphan, Identity: 77, Expires: time.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	// "Restart": a new admitter over the same kernel table and state file.
	p.srv.a.Flush()
	p.srv.rev.revoke(big.NewInt(12345)) // unrelated
	again, err := NewAdmitter(p.srv.a.o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(again.Flush)
	if _, ok := p.srv.table.get(orphan); ok {
		t.Fatal("unrecorded kernel entry survived adoption")
	}
	e, ok := p.srv.table.get(clientAddr)
	if !ok {
		t.Fatal("recorded admission lost on restart")
	}
	if !p.srv.table.policy[PolicyKey{e.Identity, 8080, ProtoTCP, Inbound}] {
		t.Fatalf("policy %v lacks the adopted identity %d", p.srv.table.policy, e.Identity)
	}
	// Revocation still works for adopted admissions.
	p.srv.rev.revoke(p.client.Certificates[0].SerialNumber)
	if n := again.Recheck(); n != 1 {
		t.Fatalf("Recheck after adoption removed %d, want 1", n)
	}
}

// Restarting under a changed policy, an adopted peer's identity keeps
// its entries until the peer has moved: numbers a peer carries are never
// given another grant set, even between two map writes.
func TestAdoptionUnderNewPolicyKeepsCarriedIdentities(t *testing.T) {
	p := newPair(t, filepath.Join(t.TempDir(), "admissions.json"), nil)
	p.admit(t)
	p.srv.a.Flush()
	before, ok := p.srv.table.get(clientAddr)
	if !ok {
		t.Fatal("client not admitted")
	}
	wider, err := ParsePolicy([]byte(admissionPolicy + `  - name: client-metrics
    from: spiffe://example.org/node/client
    to: spiffe://example.org/node/server
    protocol: tcp
    ports: ["9090"]
`))
	if err != nil {
		t.Fatal(err)
	}
	// Entries of each identity a peer carries, fixed while carried.
	carried := map[uint32]map[PolicyKey]bool{}
	var violations []string
	p.srv.table.watch = func(f *fakeTable) {
		inUse := map[uint32]bool{}
		for _, e := range f.peers {
			inUse[e.Identity] = true
		}
		for id := range carried {
			if !inUse[id] {
				delete(carried, id)
			}
		}
		for id := range inUse {
			cur := map[PolicyKey]bool{}
			for k := range f.policy {
				if k.Identity == id {
					cur[k] = true
				}
			}
			if was, ok := carried[id]; ok && !maps.Equal(was, cur) {
				violations = append(violations, fmt.Sprintf("identity %d carried by a peer changed from %v to %v", id, was, cur))
			}
			carried[id] = cur
		}
	}
	p.srv.table.mu.Lock()
	p.srv.table.changed() // the state the restart starts from
	p.srv.table.mu.Unlock()
	o := p.srv.a.o
	o.Policy = wider
	again, err := NewAdmitter(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(again.Flush)
	for _, v := range violations {
		t.Error(v)
	}
	after, ok := p.srv.table.get(clientAddr)
	if !ok {
		t.Fatal("admission lost on restart")
	}
	if after.Identity <= before.Identity {
		t.Errorf("adopted peer numbered %d, not above the previous run's %d", after.Identity, before.Identity)
	}
	pol := p.srv.table.policyEntries()
	for _, port := range []uint16{8080, 9090} {
		if !pol[PolicyKey{after.Identity, port, ProtoTCP, Inbound}] {
			t.Errorf("identity %d lacks tcp/%d: %v", after.Identity, port, pol)
		}
	}
	for k := range pol {
		if k.Identity == before.Identity {
			t.Errorf("the previous run's identity %d outlived its last peer: %v", before.Identity, k)
		}
	}
}

func TestSetPolicyRemovesPeersWithoutRules(t *testing.T) {
	p := newPair(t, "", nil)
	p.admit(t)
	wider, err := ParsePolicy([]byte(admissionPolicy + `  - name: more
    from: spiffe://example.org/node/client
    to: spiffe://example.org/node/server
    protocol: udp
    ports: ["53"]
`))
	if err != nil {
		t.Fatal(err)
	}
	if err := p.srv.a.SetPolicy(wider); err != nil {
		t.Fatal(err)
	}
	if p.srv.a.currentPolicy() != wider {
		t.Fatal("currentPolicy is not the policy just set")
	}
	e, _ := p.srv.table.get(clientAddr)
	if !p.srv.table.policy[PolicyKey{e.Identity, 53, ProtoUDP, Inbound}] || !p.srv.table.policy[PolicyKey{e.Identity, 8080, ProtoTCP, Inbound}] || len(p.srv.table.policy) != 2 {
		t.Fatalf("policy after widening = %v (identity %d)", p.srv.table.policy, e.Identity)
	}
	empty, err := ParsePolicy([]byte("version: 1\nrules: []\n"))
	if err != nil {
		t.Fatal(err)
	}
	if err := p.srv.a.SetPolicy(empty); err != nil {
		t.Fatal(err)
	}
	if len(p.srv.table.peers) != 0 || len(p.srv.table.policy) != 0 {
		t.Fatalf("after empty policy: peers %v policy %v, want none", p.srv.table.peers, p.srv.table.policy)
	}
}

// A reload the kernel refuses (here: the policy map cannot hold old and
// new entries at once) must leave admission exactly as it was.
func TestSetPolicyRefusedKeepsOldPolicy(t *testing.T) {
	const otherRule = `  - name: other-to-server
    from: spiffe://example.org/node/other
    to: spiffe://example.org/node/server
    protocol: tcp
    ports: ["9090"]
`
	base, err := ParsePolicy([]byte(admissionPolicy + otherRule))
	if err != nil {
		t.Fatal(err)
	}
	wider, err := ParsePolicy([]byte(admissionPolicy + otherRule + `  - name: dns
    from: spiffe://example.org/node/client
    to: spiffe://example.org/node/server
    protocol: udp
    ports: ["53"]
`))
	if err != nil {
		t.Fatal(err)
	}
	p := newPair(t, "", nil)
	if err := p.srv.a.SetPolicy(base); err != nil {
		t.Fatal(err)
	}
	p.admit(t)
	before, ok := p.srv.table.get(clientAddr)
	if !ok {
		t.Fatal("client not admitted")
	}
	kernel := p.srv.table.policyEntries()
	clientKey := PolicyKey{before.Identity, 8080, ProtoTCP, Inbound}
	if !kernel[clientKey] {
		t.Fatalf("policy %v lacks the client's entry %v", kernel, clientKey)
	}

	// Room for one more entry: the client's new identity needs two.
	p.srv.table.setCapacity(len(kernel) + 1)
	err = p.srv.a.SetPolicy(wider)
	if !errors.Is(err, unix.E2BIG) {
		t.Fatalf("SetPolicy = %v, want the map-full error", err)
	}
	if p.srv.a.currentPolicy() != base {
		t.Error("refused policy is in force")
	}
	if got := p.srv.table.policyEntries(); !maps.Equal(got, kernel) {
		t.Errorf("policy map after refusal = %v, want it as before %v", got, kernel)
	}

	// Room again. A peer with grants of its own (a fresh identity, so the
	// policy map is rewritten) must not cost the client its entries.
	p.srv.table.setCapacity(0)
	other := Verified{ID: spiffeid.RequireFromString("spiffe://example.org/node/other"), NotAfter: time.Now().Add(time.Hour)}
	if _, err := p.srv.a.admitVerified(other, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.3"), 1)); err != nil {
		t.Fatalf("admitting another peer: %v", err)
	}
	if got := p.srv.table.policyEntries(); !got[clientKey] {
		t.Errorf("policy map %v lost the admitted client's entry %v", got, clientKey)
	}
	// Nor does the client re-admitting see the refused policy.
	p.admit(t)
	after, _ := p.srv.table.get(clientAddr)
	got := p.srv.table.policyEntries()
	if after.Identity != before.Identity || !got[clientKey] || got[PolicyKey{after.Identity, 53, ProtoUDP, Inbound}] {
		t.Errorf("client re-admitted as identity %d with policy %v, want identity %d with %v only", after.Identity, got, before.Identity, clientKey)
	}
}

func TestVerifierReasons(t *testing.T) {
	ca := testca.New(t, "example.org")
	rev := newFakeRevocation()
	td := spiffeid.RequireTrustDomainFromString("example.org")
	v := &Verifier{TrustDomain: td, Bundle: x509bundle.FromX509Authorities(td, []*x509.Certificate{ca.Root()}), Revocation: rev, Bans: rev}
	_, good, _ := ca.MintX509SVID(t, "spiffe://example.org/node/a", time.Hour)
	_, revoked, _ := ca.MintX509SVID(t, "spiffe://example.org/node/b", time.Hour)
	rev.revoke(revoked[0].SerialNumber)
	_, banned, _ := ca.MintX509SVID(t, "spiffe://example.org/node/banned", time.Hour)
	rev.banned["spiffe://example.org/node/banned"] = true
	_, interRevoked, _ := testca.New(t, "example.org").MintX509SVID(t, "spiffe://example.org/node/c", time.Hour)
	self, _ := testca.SelfSigned(t, "spiffe://example.org/node/a", time.Hour)
	tests := []struct {
		name    string
		chain   []*x509.Certificate
		wantErr error
	}{
		{"good", good, nil},
		{"revoked leaf", revoked, ErrRevoked},
		{"banned", banned, ErrRevoked},
		{"leaf only, intermediate missing", good[:1], ErrNotAdmitted},
		{"other CA, same trust domain", interRevoked, ErrNotAdmitted},
		{"self-signed", []*x509.Certificate{self}, ErrNotAdmitted},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := v.Verify(tt.chain)
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("Verify: %v", err)
				}
				if got.ID.String() != "spiffe://example.org/node/a" || len(got.Certs) != 2 || !got.NotAfter.Equal(good[0].NotAfter) {
					t.Fatalf("Verified = %+v", got)
				}
				return
			}
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Verify = %v, want %v", err, tt.wantErr)
			}
		})
	}
	// An intermediate's revocation counts too.
	rev.revoke(good[1].SerialNumber)
	if _, err := v.Verify(good); !errors.Is(err, ErrRevoked) {
		t.Fatalf("revoked intermediate: %v, want ErrRevoked", err)
	}
	// Unknown revocation status fails closed.
	rev.fail = errors.New("CRL stale")
	if _, err := v.Verify(banned); !errors.Is(err, ErrNotAdmitted) {
		t.Fatalf("unknown status: %v, want ErrNotAdmitted", err)
	}
}

func TestInfrastructureEntries(t *testing.T) {
	ca := testca.New(t, "example.org")
	_, schain, skey := ca.MintX509SVID(t, "spiffe://example.org/node/server", time.Hour)
	s := newSide(t, ca, svidFor(t, schain, skey), freePort(t), "")
	appliance := netip.MustParseAddrPort("10.0.0.1:8443")
	o := s.a.o
	o.Infrastructure = []Service{{appliance, ProtoTCP}, {netip.MustParseAddrPort("10.0.0.1:53"), ProtoUDP}}
	o.Ifindexes = []int{1, 2}
	// A stale infrastructure entry from an older config.
	if err := s.table.PutPeer(PeerEntry{Ifindex: 1, Addr: netip.MustParseAddr("10.0.0.9"), Identity: InfrastructureIdentity, Expires: time.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	a, err := NewAdmitter(o)
	if err != nil {
		t.Fatal(err)
	}
	for _, ifindex := range []int{1, 2} {
		e, ok := s.table.peers[peerKey{ifindex, appliance.Addr()}]
		if !ok || e.Identity != InfrastructureIdentity || time.Until(e.Expires) < 24*time.Hour {
			t.Fatalf("ifindex %d: infrastructure entry %+v, %v", ifindex, e, ok)
		}
	}
	if _, ok := s.table.peers[peerKey{1, netip.MustParseAddr("10.0.0.9")}]; ok {
		t.Fatal("stale infrastructure entry kept")
	}
	want := PolicyKey{InfrastructureIdentity, 8443, ProtoTCP, Reply}
	wantUDP := PolicyKey{InfrastructureIdentity, 53, ProtoUDP, Reply}
	if !s.table.policy[want] || !s.table.policy[wantUDP] || len(s.table.policy) != 2 {
		t.Fatalf("policy = %v, want only %v and %v", s.table.policy, want, wantUDP)
	}
	// Rechecks and restarts keep them; nobody can be admitted on that address.
	a.Recheck()
	if _, err := NewAdmitter(o); err != nil {
		t.Fatal(err)
	}
	if _, ok := s.table.peers[peerKey{2, appliance.Addr()}]; !ok {
		t.Fatal("infrastructure entry lost on restart")
	}
	if _, err := a.admitVerified(Verified{ID: spiffeid.RequireFromString("spiffe://example.org/node/client"), NotAfter: time.Now().Add(time.Hour)},
		netip.AddrPortFrom(appliance.Addr(), 7443)); !errors.Is(err, ErrNotAdmitted) {
		t.Fatalf("admission on an infrastructure address: %v, want ErrNotAdmitted", err)
	}
}

// maintain runs cli's Maintain towards the server side on port until the
// test ends.
func maintain(t *testing.T, cli *side, port uint16) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); cli.a.Maintain(ctx, []netip.AddrPort{netip.AddrPortFrom(serverAddr, port)}) }()
	t.Cleanup(func() { cancel(); <-done })
}

func TestMaintainReadmitsBeforeExpiry(t *testing.T) {
	p := newPair(t, "", func(srv *side) { srv.a.o.MaxAdmission = 3 * time.Second }) // re-admits at ≈2 s: 1 s of slack
	maintain(t, p.cli, p.port)
	var first time.Time
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if e, ok := p.srv.table.get(clientAddr); ok {
			if first.IsZero() {
				first = e.Expires
			} else if e.Expires.After(first) {
				if time.Now().After(first) {
					t.Fatalf("re-admitted only after the first admission expired (%v)", first)
				}
				return
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no re-admission seen (first expiry %v)", first)
}

// swapSource is an x509svid.Source whose SVID the test replaces.
type swapSource struct{ p atomic.Pointer[x509svid.SVID] }

func (s *swapSource) GetX509SVID() (*x509svid.SVID, error) { return s.p.Load(), nil }

func TestMaintainReadmitsWithANewSVID(t *testing.T) {
	p := newPair(t, "", nil)
	src := &swapSource{}
	src.p.Store(p.client)
	p.cli.a.o.SVID = src // nothing runs on the client side yet
	maintain(t, p.cli, p.port)
	waitUntil(t, 5*time.Second, func() bool { _, ok := p.srv.table.get(clientAddr); return ok })

	// The client's SVID is revoked and replaced (re-attestation): the
	// server drops the admission, and Maintain re-admits under the new
	// SVID long before its hour-long re-admission timer.
	_, nchain, nkey := p.ca.MintX509SVID(t, "spiffe://example.org/node/client", time.Hour)
	p.srv.rev.revoke(p.client.Certificates[0].SerialNumber)
	if n := p.srv.a.Recheck(); n != 1 {
		t.Fatalf("Recheck removed %d admissions, want 1", n)
	}
	if _, ok := p.srv.table.get(clientAddr); ok {
		t.Fatal("revoked client still admitted")
	}
	src.p.Store(svidFor(t, nchain, nkey))
	start := time.Now()
	waitUntil(t, 3*time.Second, func() bool { _, ok := p.srv.table.get(clientAddr); return ok })
	t.Logf("re-admitted %v after the SVID changed", time.Since(start))
}

func waitUntil(t *testing.T, d time.Duration, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(d); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v", d)
		}
	}
}

func TestRevocationUnknownGrace(t *testing.T) {
	p := newPair(t, "", func(srv *side) { srv.a.o.RevocationGrace = 300 * time.Millisecond })
	p.admit(t)
	p.srv.rev.mu.Lock()
	p.srv.rev.fail = errors.New("no CRL")
	p.srv.rev.mu.Unlock()
	if n := p.srv.a.Recheck(); n != 0 {
		t.Fatalf("removed %d within the grace period", n)
	}
	// New admissions need a known status.
	if _, err := p.cli.a.Admit(context.Background(), p.addr); !errors.Is(err, ErrNotAdmitted) {
		t.Fatalf("admission with unknown status: %v", err)
	}
	// Status known again: the clock resets.
	p.srv.rev.mu.Lock()
	p.srv.rev.fail = nil
	p.srv.rev.mu.Unlock()
	p.srv.a.Recheck()
	p.srv.rev.mu.Lock()
	p.srv.rev.fail = errors.New("no CRL")
	p.srv.rev.mu.Unlock()
	p.srv.a.Recheck()
	time.Sleep(350 * time.Millisecond)
	if n := p.srv.a.Recheck(); n != 1 {
		t.Fatalf("removed %d after the grace period, want 1", n)
	}
	if _, ok := p.srv.table.get(clientAddr); ok {
		t.Fatal("admission kept past the grace period")
	}
}
