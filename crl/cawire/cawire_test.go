package cawire_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/crypto/ocsp"

	"github.com/palisade-id/palisade/ca"
	"github.com/palisade-id/palisade/ca/store"
	"github.com/palisade-id/palisade/crl"
	"github.com/palisade-id/palisade/crl/castore"
	"github.com/palisade-id/palisade/crl/cawire"
	"github.com/palisade-id/palisade/test/memca"
	"github.com/palisade-id/palisade/test/testca"
)

// TestRealCA issues SVIDs with the real CA (in-memory keys, bbolt store),
// wired to the revocation service as palisade-server does, and checks the
// CDP/AIA URLs, pre-signed OCSP and revocation through both.
func TestRealCA(t *testing.T) {
	var svc *crl.Service
	mux := http.NewServeMux()
	srv := httptest.NewServer(mux)
	defer srv.Close()
	f := memca.New(t, "example.org", memca.Discard{}, func(o *ca.Options) {
		o.CRLURL = func(kid string) string { return crl.CRLURL(srv.URL, kid) }
		o.OCSPURL = crl.OCSPURL(srv.URL)
		o.OnIssued = func(r store.CertRecord) { castore.OnIssued(svc)(r) }
	})
	c, st, keys, dir := f.CA, f.Store, f.Keys, t.TempDir()
	var err error
	svc, err = crl.New(crl.Config{DataDir: filepath.Join(dir, "crl"), FullCRLMinInterval: 10 * time.Millisecond},
		crl.Options{Store: castore.New(st), Audit: memca.Discard{}, Keys: keys, Issuers: cawire.Issuers(c), BaseURL: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	mux.Handle("/", svc.Handler())
	ctx := runReady(t, svc)

	csrDER, _ := testca.CSR(t, "spiffe://example.org/w")
	csr, err := ca.ParseCSR(csrDER, c.TrustDomain())
	if err != nil {
		t.Fatal(err)
	}
	svid, err := c.SignX509SVID(ctx, ca.X509Request{CSR: csr, NodeID: "spiffe://example.org/node/1"})
	if err != nil {
		t.Fatal(err)
	}
	leaf, inter := svid.Certificates[0], svid.Certificates[1]
	active, _ := c.ActiveIssuer()
	if len(leaf.CRLDistributionPoints) != 1 || leaf.CRLDistributionPoints[0] != crl.CRLURL(srv.URL, active.KeyID) ||
		len(leaf.OCSPServer) != 1 || leaf.OCSPServer[0] != crl.OCSPURL(srv.URL) {
		t.Fatalf("CDP %v AIA %v", leaf.CRLDistributionPoints, leaf.OCSPServer)
	}
	ask := func() *ocsp.Response {
		req, _ := ocsp.CreateRequest(leaf, inter, nil)
		resp, err := http.Post(leaf.OCSPServer[0], "application/ocsp-request", bytes.NewReader(req))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		r, err := ocsp.ParseResponseForCert(body, leaf, inter)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	for deadline := time.Now().Add(5 * time.Second); svc.Metrics().Signatures.Load() == 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("OnIssued did not pre-sign")
		}
	}
	if r := ask(); r.Status != ocsp.Good {
		t.Fatalf("status %d", r.Status)
	}
	if n, err := svc.RevokeNode(ctx, "op", "spiffe://example.org/node/1", crl.ReasonKeyCompromise); err != nil || n != 1 {
		t.Fatalf("RevokeNode: %d %v", n, err)
	}
	if r := ask(); r.Status != ocsp.Revoked {
		t.Fatalf("status after ban %d", r.Status)
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		resp, err := http.Get(leaf.CRLDistributionPoints[0])
		if err != nil {
			t.Fatal(err)
		}
		der, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		rl, err := x509.ParseRevocationList(der)
		if err != nil || rl.CheckSignatureFrom(inter) != nil {
			t.Fatalf("CRL: %v", err)
		}
		if len(rl.RevokedCertificateEntries) == 1 && rl.RevokedCertificateEntries[0].SerialNumber.Cmp(leaf.SerialNumber) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("CDP CRL never listed the revoked SVID")
		}
	}
}

// runReady runs svc until the test ends and waits until it is ready; the
// context it returns ends with the test.
func runReady(t *testing.T, svc *crl.Service) context.Context {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { svc.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	for deadline := time.Now().Add(5 * time.Second); svc.Ready() != nil; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal(svc.Ready())
		}
	}
	return ctx
}
