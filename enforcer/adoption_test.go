package enforcer

import (
	"crypto/x509"
	"encoding/json"
	"math/big"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/palisade-id/palisade/test/testca"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// fixedIngress is the datapath with every admission arriving on ifIn:
// the admitter over the kernel's maps, without admission connections.
type fixedIngress struct{ *Datapath }

func (fixedIngress) AdmissionIfindex(netip.AddrPort) (int, error) { return ifIn, nil }

// adoptionTables: the fake, and the kernel's maps (whose expiries go
// through CLOCK_BOOTTIME and back).
var adoptionTables = []struct {
	name string
	open func(t *testing.T) PeerTable
}{
	{"fake", func(*testing.T) PeerTable { return newFakeTable() }},
	{"datapath", func(t *testing.T) PeerTable { return fixedIngress{openTestDatapath(t)} }},
}

// newAdmitterOver is the server side of admissionPolicy over table.
func newAdmitterOver(t *testing.T, table PeerTable) (*Admitter, AdmitterOptions) {
	t.Helper()
	ca := testca.New(t, "example.org")
	_, chain, key := ca.MintX509SVID(t, "spiffe://example.org/node/server", time.Hour)
	p, err := ParsePolicy([]byte(admissionPolicy))
	if err != nil {
		t.Fatal(err)
	}
	td := spiffeid.RequireTrustDomainFromString("example.org")
	rev := newFakeRevocation()
	o := AdmitterOptions{
		Table: table,
		SVID:  svidFor(t, chain, key),
		Verifier: &Verifier{TrustDomain: td, Revocation: rev, Bans: rev,
			Bundle: x509bundle.FromX509Authorities(td, []*x509.Certificate{ca.Root()})},
		Policy:        p,
		AdmissionPort: 7443,
		MaxAdmission:  time.Hour,
		StatePath:     filepath.Join(t.TempDir(), "admissions.json"),
	}
	a, err := NewAdmitter(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Flush)
	return a, o
}

// admitClient admits the client at addr until notAfter (the earlier of
// it and MaxAdmission).
func admitClient(t *testing.T, a *Admitter, addr netip.Addr, notAfter time.Time) {
	t.Helper()
	v := Verified{ID: spiffeid.RequireFromString("spiffe://example.org/node/client"), NotAfter: notAfter,
		Certs: []CertRef{{Serial: big.NewInt(1), IssuerSKI: []byte{1}}}}
	if _, err := a.admitVerified(v, netip.AddrPortFrom(addr, 40000)); err != nil {
		t.Fatal(err)
	}
}

func peerIn(t *testing.T, table PeerTable, addr netip.Addr) (PeerEntry, bool) {
	t.Helper()
	ps, err := table.Peers()
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ps {
		if e.Addr == addr {
			return e, true
		}
	}
	return PeerEntry{}, false
}

// An admission that expired while nobody looked is removed, not a
// failure: neither a restart nor a policy reload may fail on it.
func TestExpiredAdmissionIsARemoval(t *testing.T) {
	live := netip.MustParseAddr("127.0.0.3")
	steps := []struct {
		name string
		run  func(t *testing.T, a *Admitter, o AdmitterOptions) error
	}{
		{"restart", func(t *testing.T, _ *Admitter, o AdmitterOptions) error {
			again, err := NewAdmitter(o)
			if err == nil {
				t.Cleanup(again.Flush)
			}
			return err
		}},
		{"policy reload", func(_ *testing.T, a *Admitter, o AdmitterOptions) error { return a.SetPolicy(o.Policy) }},
	}
	for _, tbl := range adoptionTables {
		for _, step := range steps {
			t.Run(tbl.name+"/"+step.name, func(t *testing.T) {
				table := tbl.open(t)
				a, o := newAdmitterOver(t, table)
				exp := time.Now().Add(300 * time.Millisecond)
				admitClient(t, a, clientAddr, exp)
				admitClient(t, a, live, time.Now().Add(time.Hour))
				a.Flush()
				time.Sleep(time.Until(exp) + 50*time.Millisecond)
				if err := step.run(t, a, o); err != nil {
					t.Fatalf("%s with an expired admission: %v", step.name, err)
				}
				if e, ok := peerIn(t, table, clientAddr); ok {
					t.Errorf("expired admission still in the kernel: %+v", e)
				}
				if _, ok := peerIn(t, table, live); !ok {
					t.Error("live admission lost")
				}
			})
		}
	}
}

// A crash between a kernel write and the state write leaves a record
// of an earlier admission: adopting it would re-check the wrong
// certificates, so the entry goes and the peer re-admits.
func TestAdoptionDropsEntriesItsRecordDoesNotDescribe(t *testing.T) {
	cases := []struct {
		name    string
		kernel  func(e *PeerEntry)       // the entry written after the record
		record  func(rec map[string]any) // the record as saved
		adopted bool
	}{
		{name: "matching", adopted: true},
		{name: "re-admitted, record lost", kernel: func(e *PeerEntry) { e.Expires = e.Expires.Add(10 * time.Minute) }},
		{name: "address taken by another identity", kernel: func(e *PeerEntry) { e.Identity++ }},
		{name: "record without identity (older file)", record: func(rec map[string]any) { delete(rec, "identity") }},
	}
	for _, tbl := range adoptionTables {
		for _, tc := range cases {
			t.Run(tbl.name+"/"+tc.name, func(t *testing.T) {
				table := tbl.open(t)
				a, o := newAdmitterOver(t, table)
				admitClient(t, a, clientAddr, time.Now().Add(30*time.Minute))
				a.Flush()
				if tc.kernel != nil {
					e, _ := peerIn(t, table, clientAddr)
					tc.kernel(&e)
					if err := table.PutPeer(e); err != nil {
						t.Fatal(err)
					}
				}
				if tc.record != nil {
					editState(t, o.StatePath, tc.record)
				}
				again, err := NewAdmitter(o)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(again.Flush)
				_, inKernel := peerIn(t, table, clientAddr)
				ifindex, _ := table.AdmissionIfindex(netip.AddrPort{})
				_, known := again.PeerID(ifindex, clientAddr)
				if inKernel != tc.adopted || known != tc.adopted {
					t.Fatalf("after restart: in kernel %v, known %v; want %v", inKernel, known, tc.adopted)
				}
			})
		}
	}
}

func editState(t *testing.T, path string, edit func(map[string]any)) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var recs []map[string]any
	if err := json.Unmarshal(b, &recs); err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		edit(r)
	}
	if b, err = json.Marshal(recs); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}
