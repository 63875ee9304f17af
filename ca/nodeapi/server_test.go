package nodeapi

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"math"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/palisade-id/palisade/ca"
	"github.com/palisade-id/palisade/ca/nodeapi/nodev1"
	"github.com/palisade-id/palisade/ca/store"
	"github.com/palisade-id/palisade/test/memca"
	"github.com/palisade-id/palisade/test/testca"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
)

func newCA(t *testing.T, td string) (*ca.CA, *store.Store) {
	t.Helper()
	f := memca.New(t, td, memca.Discard{}, nil)
	return f.CA, f.Store
}

func csr(t *testing.T, id string) []byte {
	t.Helper()
	der, _ := testca.CSR(t, id)
	return der
}

// TestSignX509SVIDAuthorization drives the node API over a real mTLS
// listener on loopback: who may have which SVID comes only from the
// verified client SVID and the registration entries.
func TestSignX509SVIDAuthorization(t *testing.T) {
	ctx := context.Background()
	c, st := newCA(t, "example.org")
	td := c.TrustDomain()
	nodeID := spiffeid.RequireFromPath(td, NodePathPrefix+"n1")
	bannedID := spiffeid.RequireFromPath(td, NodePathPrefix+"n2")
	revokedID := spiffeid.RequireFromPath(td, NodePathPrefix+"n3")
	flakyID := spiffeid.RequireFromPath(td, NodePathPrefix+"n4")
	// Every caller has an entry for the workload: only the check under test
	// can refuse it.
	for _, parent := range []spiffeid.ID{nodeID, bannedID, revokedID, flakyID} {
		if _, err := st.CreateEntry(store.Entry{SPIFFEID: "spiffe://example.org/web", ParentID: parent.String(),
			Selectors: []store.Selector{{Type: "unix", Value: "uid:1000"}}, X509TTL: 10 * time.Minute}); err != nil {
			t.Fatal(err)
		}
	}
	// An entry with no TTL of its own: only the CA's cap bounds a request.
	if _, err := st.CreateEntry(store.Entry{SPIFFEID: "spiffe://example.org/api", ParentID: nodeID.String(),
		Selectors: []store.Selector{{Type: "unix", Value: "uid:1001"}}}); err != nil {
		t.Fatal(err)
	}
	addr := serve(t, Options{CA: c, Entries: st, Certs: st, Gate: testGate(bannedID, flakyID)})

	issue := func(c *ca.CA, id spiffeid.ID) *tls.Certificate {
		cert, err := IssueLocal(ctx, c, id, store.KindNodeSVID, "test")
		if err != nil {
			t.Fatal(err)
		}
		return cert
	}
	node := issue(c, nodeID)
	revoked := issue(c, revokedID)
	if _, err := st.Revoke(revoked.Leaf.SerialNumber, 1, time.Now()); err != nil {
		t.Fatal(err)
	}
	foreignCA, _ := newCA(t, "example.org") // same name, other root
	foreign := issue(foreignCA, nodeID)

	client := func(cert *tls.Certificate) nodev1.NodeClient {
		conn, err := Dial(addr, td, []*x509.Certificate{c.Root()}, func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			if cert == nil {
				return &tls.Certificate{}, nil
			}
			return cert, nil
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return nodev1.NewNodeClient(conn)
	}
	tests := []struct {
		name   string
		cert   *tls.Certificate
		csr    []byte
		ttl    int64
		code   codes.Code
		errHas string
	}{
		{name: "authorised", cert: node, csr: csr(t, "spiffe://example.org/web"), code: codes.OK},
		{name: "no client SVID", cert: nil, csr: csr(t, "spiffe://example.org/web"), code: codes.Unauthenticated, errHas: "no client X509-SVID"},
		{name: "SVID from another root", cert: foreign, csr: csr(t, "spiffe://example.org/web"), code: codes.Unauthenticated, errHas: "client X509-SVID"},
		{name: "revoked caller", cert: revoked, csr: csr(t, "spiffe://example.org/web"), code: codes.PermissionDenied, errHas: "revoked"},
		{name: "banned caller", cert: issue(c, bannedID), csr: csr(t, "spiffe://example.org/web"), code: codes.PermissionDenied, errHas: "ban list"},
		{name: "gate unavailable", cert: issue(c, flakyID), csr: csr(t, "spiffe://example.org/web"), code: codes.Unavailable, errHas: "store closed"},
		{name: "no entry for the ID", cert: node, csr: csr(t, "spiffe://example.org/db"), code: codes.PermissionDenied, errHas: "not authorised"},
		{name: "node identity", cert: node, csr: csr(t, nodeID.String()), code: codes.PermissionDenied, errHas: "only issued through attestation"},
		{name: "server identity", cert: node, csr: csr(t, "spiffe://example.org"+ServerPath), code: codes.PermissionDenied, errHas: "only issued through attestation"},
		{name: "malformed CSR", cert: node, csr: []byte("not a CSR"), code: codes.InvalidArgument, errHas: "CSR"},
		{name: "foreign trust domain", cert: node, csr: csr(t, "spiffe://other.org/web"), code: codes.InvalidArgument, errHas: "other.org"},
		{name: "SPIFFE ID over 2048 bytes", cert: node, csr: csr(t, "spiffe://example.org/"+strings.Repeat("a", 2048)), code: codes.InvalidArgument, errHas: "max 2048"},
		{name: "negative TTL", cert: node, csr: csr(t, "spiffe://example.org/web"), ttl: -1, code: codes.InvalidArgument, errHas: "negative"},
		{name: "TTL at the entry's", cert: node, csr: csr(t, "spiffe://example.org/web"), ttl: 600, code: codes.OK},
		{name: "TTL over the entry's", cert: node, csr: csr(t, "spiffe://example.org/web"), ttl: 601, code: codes.InvalidArgument, errHas: "entry's X509-SVID TTL of 10m0s"},
		{name: "TTL over the CA cap", cert: node, csr: csr(t, "spiffe://example.org/api"), ttl: 100 * 24 * 3600, code: codes.InvalidArgument, errHas: "exceeds the maximum"},
		// 18446744074 s is 2^64 ns plus 0.29 s: a wrapping product is a
		// short, valid TTL.
		{name: "TTL overflowing a Duration", cert: node, csr: csr(t, "spiffe://example.org/web"), ttl: 18446744074, code: codes.InvalidArgument, errHas: "out of range"},
		{name: "largest TTL in range", cert: node, csr: csr(t, "spiffe://example.org/api"), ttl: math.MaxInt64 / int64(time.Second), code: codes.InvalidArgument, errHas: "exceeds the maximum"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before, err := st.Stats()
			if err != nil {
				t.Fatal(err)
			}
			resp, err := client(tt.cert).SignX509SVID(ctx, &nodev1.SignX509SVIDRequest{Csr: tt.csr, TtlSeconds: tt.ttl})
			if got := status.Code(err); got != tt.code || !strings.Contains(status.Convert(err).Message(), tt.errHas) {
				t.Fatalf("%v (%v), want %v naming %q", got, err, tt.code, tt.errHas)
			}
			after, err := st.Stats()
			if err != nil {
				t.Fatal(err)
			}
			if tt.code != codes.OK {
				if after.Certs != before.Certs {
					t.Fatalf("a refused request recorded %d certificates", after.Certs-before.Certs)
				}
				return
			}
			var chain []*x509.Certificate
			for _, der := range resp.GetCertChain() {
				cert, err := x509.ParseCertificate(der)
				if err != nil {
					t.Fatal(err)
				}
				chain = append(chain, cert)
			}
			got, _, err := x509svid.Verify(chain, c.Bundle())
			if err != nil || got.String() != "spiffe://example.org/web" {
				t.Fatalf("issued SVID %v: %v", got, err)
			}
			// The entry's TTL applies when the request names none.
			if ttl := chain[0].NotAfter.Sub(chain[0].NotBefore); ttl > 11*time.Minute {
				t.Fatalf("SVID lives %s, entry says 10m", ttl)
			}
			rec, err := st.Cert(chain[0].SerialNumber)
			if err != nil || rec.NodeID != nodeID.String() || rec.EntryID == "" {
				t.Fatalf("store record %+v (%v): want node %s and the entry", rec, err, nodeID)
			}
		})
	}
}

// serve runs the node API with o on a loopback mTLS listener until the
// test ends and returns its address.
func serve(t *testing.T, o Options) string {
	t.Helper()
	id, err := NewIdentity(context.Background(), o.CA)
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(grpc.Creds(credentials.NewTLS(ServerTLS(id.GetCertificate))))
	New(o).Register(g)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go g.Serve(ln)
	t.Cleanup(g.Stop)
	return ln.Addr().String()
}

// TestMintJWTSVIDRequests checks a JWT-SVID request's TTL, audience and ID
// bounds, and that the Gate is asked about the caller's node.
func TestMintJWTSVIDRequests(t *testing.T) {
	ctx := context.Background()
	c, st := newCA(t, "example.org")
	td := c.TrustDomain()
	nodeID := spiffeid.RequireFromPath(td, NodePathPrefix+"n1")
	bannedID := spiffeid.RequireFromPath(td, NodePathPrefix+"n2")
	flakyID := spiffeid.RequireFromPath(td, NodePathPrefix+"n3")
	for _, e := range [][2]string{
		{"spiffe://example.org/web", nodeID.String()},
		{"spiffe://example.org/web", flakyID.String()},
		{"spiffe://example.org/web/child", "spiffe://example.org/web"},
	} {
		if _, err := st.CreateEntry(store.Entry{SPIFFEID: e[0], ParentID: e[1],
			Selectors: []store.Selector{{Type: "unix", Value: "uid:1000"}}, JWTTTL: time.Minute}); err != nil {
			t.Fatal(err)
		}
	}
	addr := serve(t, Options{CA: c, Entries: st, Certs: st, Gate: testGate(bannedID, flakyID)})
	node, err := IssueLocal(ctx, c, nodeID, store.KindNodeSVID, "test")
	if err != nil {
		t.Fatal(err)
	}
	flaky, err := IssueLocal(ctx, c, flakyID, store.KindNodeSVID, "test")
	if err != nil {
		t.Fatal(err)
	}
	// A workload SVID issued through the banned node (not yet revoked).
	bannedWorkload := issueUnder(t, c, spiffeid.RequireFromString("spiffe://example.org/web"), bannedID)

	aud := []string{"db"}
	tests := []struct {
		name   string
		cert   *tls.Certificate
		id     string
		aud    []string
		ttl    int64
		code   codes.Code
		errHas string
	}{
		{name: "entry TTL by default", cert: node, id: "spiffe://example.org/web", aud: aud, code: codes.OK},
		{name: "TTL at the entry's", cert: node, id: "spiffe://example.org/web", aud: aud, ttl: 60, code: codes.OK},
		{name: "TTL over the entry's", cert: node, id: "spiffe://example.org/web", aud: aud, ttl: 3600, code: codes.InvalidArgument, errHas: "entry's JWT-SVID TTL of 1m0s"},
		{name: "TTL overflowing a Duration", cert: node, id: "spiffe://example.org/web", aud: aud, ttl: 18446744074, code: codes.InvalidArgument, errHas: "out of range"},
		{name: "negative TTL", cert: node, id: "spiffe://example.org/web", aud: aud, ttl: -1, code: codes.InvalidArgument, errHas: "negative"},
		{name: "no audience", cert: node, id: "spiffe://example.org/web", code: codes.InvalidArgument, errHas: "audience"},
		{name: "too many audiences", cert: node, id: "spiffe://example.org/web", aud: slices.Repeat(aud, ca.MaxAudiences+1), code: codes.InvalidArgument, errHas: "max 32"},
		{name: "64 KiB audience", cert: node, id: "spiffe://example.org/web", aud: []string{strings.Repeat("a", 64<<10)}, code: codes.InvalidArgument, errHas: "max 256"},
		{name: "SPIFFE ID over 2048 bytes", cert: node, id: "spiffe://example.org/" + strings.Repeat("a", 2048), aud: aud, code: codes.InvalidArgument, errHas: "max 2048"},
		{name: "gate unavailable", cert: flaky, id: "spiffe://example.org/web", aud: aud, code: codes.Unavailable, errHas: "store closed"},
		{name: "workload of a banned node", cert: bannedWorkload, id: "spiffe://example.org/web/child", aud: aud, code: codes.PermissionDenied, errHas: "ban list"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := dial(t, addr, c, tt.cert).MintJWTSVID(ctx, &nodev1.MintJWTSVIDRequest{SpiffeId: tt.id, Audience: tt.aud, TtlSeconds: tt.ttl})
			if got := status.Code(err); got != tt.code || !strings.Contains(status.Convert(err).Message(), tt.errHas) {
				t.Fatalf("%v (%v), want %v naming %q", got, err, tt.code, tt.errHas)
			}
			if tt.code != codes.OK {
				return
			}
			if left := time.Until(time.Unix(resp.GetExpiresAt(), 0)); left > time.Minute+time.Second {
				t.Fatalf("JWT-SVID lives %s, entry says 1m", left)
			}
		})
	}
}

// testGate bans banned and cannot decide for flaky.
func testGate(banned, flaky spiffeid.ID) func(context.Context, spiffeid.ID) error {
	return func(_ context.Context, node spiffeid.ID) error {
		switch node {
		case banned:
			return errors.New("node is on the ban list")
		case flaky:
			return fmt.Errorf("%w: ban list: store closed", ErrGateUnavailable)
		}
		return nil
	}
}
