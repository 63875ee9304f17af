package nodeapi

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
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
	// Every caller has an entry for the workload: only the check under test
	// can refuse it.
	for _, parent := range []spiffeid.ID{nodeID, bannedID, revokedID} {
		if _, err := st.CreateEntry(store.Entry{SPIFFEID: "spiffe://example.org/web", ParentID: parent.String(),
			Selectors: []store.Selector{{Type: "unix", Value: "uid:1000"}}, X509TTL: 10 * time.Minute}); err != nil {
			t.Fatal(err)
		}
	}
	addr := serve(t, Options{CA: c, Entries: st, Certs: st, Gate: func(_ context.Context, caller spiffeid.ID) error {
		if caller == bannedID {
			return errors.New("node is on the ban list")
		}
		return nil
	}})

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
		{name: "no entry for the ID", cert: node, csr: csr(t, "spiffe://example.org/db"), code: codes.PermissionDenied, errHas: "not authorised"},
		{name: "node identity", cert: node, csr: csr(t, nodeID.String()), code: codes.PermissionDenied, errHas: "only issued through attestation"},
		{name: "server identity", cert: node, csr: csr(t, "spiffe://example.org"+ServerPath), code: codes.PermissionDenied, errHas: "only issued through attestation"},
		{name: "malformed CSR", cert: node, csr: []byte("not a CSR"), code: codes.InvalidArgument, errHas: "CSR"},
		{name: "foreign trust domain", cert: node, csr: csr(t, "spiffe://other.org/web"), code: codes.InvalidArgument, errHas: "other.org"},
		{name: "negative TTL", cert: node, csr: csr(t, "spiffe://example.org/web"), ttl: -1, code: codes.InvalidArgument, errHas: "negative"},
		{name: "TTL over the cap", cert: node, csr: csr(t, "spiffe://example.org/web"), ttl: 100 * 24 * 3600, code: codes.InvalidArgument, errHas: "TTL"},
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
