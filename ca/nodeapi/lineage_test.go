package nodeapi

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"testing"
	"time"

	"github.com/palisade-id/palisade/ca"
	"github.com/palisade-id/palisade/ca/nodeapi/nodev1"
	"github.com/palisade-id/palisade/ca/store"
	"github.com/palisade-id/palisade/test/testca"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// TestIssuedSVIDsRecordTheirNode has a node's workload, and that
// workload's own child, request SVIDs: each is recorded under the node, so
// revoking the node's certificates (as a ban does) revokes them all.
func TestIssuedSVIDsRecordTheirNode(t *testing.T) {
	ctx := context.Background()
	c, st := newCA(t, "example.org")
	nodeID := spiffeid.RequireFromPath(c.TrustDomain(), NodePathPrefix+"n1")
	const (
		web   = "spiffe://example.org/web"
		child = "spiffe://example.org/web/child"
		grand = "spiffe://example.org/web/child/grand"
		ops   = "spiffe://example.org/ops"
		opsCh = "spiffe://example.org/ops/child"
	)
	for _, e := range [][2]string{{web, nodeID.String()}, {child, web}, {grand, child}, {opsCh, ops}} {
		if _, err := st.CreateEntry(store.Entry{SPIFFEID: e[0], ParentID: e[1],
			Selectors: []store.Selector{{Type: "unix", Value: "uid:1000"}}}); err != nil {
			t.Fatal(err)
		}
	}
	addr := serve(t, Options{CA: c, Entries: st, Certs: st})
	node, err := IssueLocal(ctx, c, nodeID, store.KindNodeSVID, "test")
	if err != nil {
		t.Fatal(err)
	}
	// Issued by the operator, through no node: its children are its own.
	opsCert, err := IssueLocal(ctx, c, spiffeid.RequireFromString(ops), store.KindX509SVID, "operator")
	if err != nil {
		t.Fatal(err)
	}
	certs := map[string]*tls.Certificate{nodeID.String(): node, ops: opsCert}

	tests := []struct {
		name, caller, id, wantNode string
	}{
		{name: "node to its workload", caller: nodeID.String(), id: web, wantNode: nodeID.String()},
		{name: "workload to its child", caller: web, id: child, wantNode: nodeID.String()},
		{name: "child to its own child", caller: child, id: grand, wantNode: nodeID.String()},
		{name: "operator-issued caller is its own root", caller: ops, id: opsCh, wantNode: ops},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cert := certs[tt.caller]
			if cert == nil {
				t.Fatalf("no SVID for %s: an earlier step failed", tt.caller)
			}
			der, key := testca.CSR(t, tt.id)
			resp, err := dial(t, addr, c, cert).SignX509SVID(ctx, &nodev1.SignX509SVIDRequest{Csr: der})
			if err != nil {
				t.Fatal(err)
			}
			got := &tls.Certificate{Certificate: resp.GetCertChain(), PrivateKey: key}
			if got.Leaf, err = x509.ParseCertificate(got.Certificate[0]); err != nil {
				t.Fatal(err)
			}
			certs[tt.id] = got
			rec, err := st.Cert(got.Leaf.SerialNumber)
			if err != nil || rec.NodeID != tt.wantNode {
				t.Fatalf("record of %s: node %q (%v), want %s", tt.id, rec.NodeID, err, tt.wantNode)
			}
		})
	}

	if _, err := st.RevokeNode(nodeID.String(), 1, time.Now()); err != nil {
		t.Fatal(err)
	}
	for id, wantRevoked := range map[string]bool{nodeID.String(): true, web: true, child: true, grand: true, opsCh: false} {
		cert := certs[id]
		if cert == nil {
			t.Fatalf("no SVID for %s", id)
		}
		rec, err := st.Cert(cert.Leaf.SerialNumber)
		if err != nil || (rec.Status == store.CertRevoked) != wantRevoked {
			t.Errorf("after revoking node %s: %s is %v (%v), want revoked=%v", nodeID, id, rec.Status, err, wantRevoked)
		}
	}
}

// issueUnder has c issue an X509-SVID for id recorded under node, as the
// node API would have for one of node's workloads.
func issueUnder(t *testing.T, c *ca.CA, id, node spiffeid.ID) *tls.Certificate {
	t.Helper()
	der, key := testca.CSR(t, id.String())
	csr, err := ca.ParseCSR(der, c.TrustDomain())
	if err != nil {
		t.Fatal(err)
	}
	svid, err := c.SignX509SVID(context.Background(), ca.X509Request{CSR: csr, ID: id, NodeID: node.String(), Actor: "test"})
	if err != nil {
		t.Fatal(err)
	}
	out := &tls.Certificate{PrivateKey: key, Leaf: svid.Certificates[0]}
	for _, cert := range svid.Certificates {
		out.Certificate = append(out.Certificate, cert.Raw)
	}
	return out
}

// dial returns a node API client at addr presenting cert.
func dial(t *testing.T, addr string, c *ca.CA, cert *tls.Certificate) nodev1.NodeClient {
	t.Helper()
	conn, err := Dial(addr, c.TrustDomain(), []*x509.Certificate{c.Root()}, func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
		return cert, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return nodev1.NewNodeClient(conn)
}
