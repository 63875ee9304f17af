package crl_test

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"math/big"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ocsp"
	"gopkg.in/yaml.v3"

	"github.com/palisade-id/palisade/crl"
	"github.com/palisade-id/palisade/test/testca"
)

func TestIssuerRotation(t *testing.T) {
	e := newEnv(t, crl.Config{})
	old := e.mint(t, "n")
	ca2 := testca.New(t, "example.org")
	iss2 := crl.Issuer{KeyID: hex.EncodeToString(ca2.Intermediate().SubjectKeyId), Cert: ca2.Intermediate(), Signer: ca2.IssuerSigner(), Active: true}
	var mu sync.Mutex
	list := []crl.Issuer{e.iss}
	// Swap the Issuers source: a second service over the same store.
	svc, err := crl.New(crl.Config{DataDir: t.TempDir()}, crl.Options{Store: e.store, Audit: e.audit, Keys: e.keys,
		Issuers: crl.IssuersFunc(func() []crl.Issuer { mu.Lock(); defer mu.Unlock(); return append([]crl.Issuer(nil), list...) })})
	if err != nil {
		t.Fatal(err)
	}
	srv := newServer(t, svc)
	waitFor(t, "ready", func() bool { return svc.Ready() == nil })

	mu.Lock()
	old1 := e.iss
	old1.Active = false
	list = []crl.Issuer{old1, iss2}
	mu.Unlock()
	svc.IssuersChanged()
	waitFor(t, "second issuer", func() bool { return svc.Ready() == nil })
	leaf2, _, _ := ca2.MintX509SVID(t, "spiffe://example.org/new", time.Hour)
	e.store.Add(crl.CertInfo{Serial: leaf2.SerialNumber, IssuerKeyID: iss2.KeyID, NotBefore: leaf2.NotBefore, NotAfter: leaf2.NotAfter})

	check := func(leafIssuer *testca.CA, leafSerial []byte, want int, req []byte) {
		t.Helper()
		resp, body := postOCSP(t, srv, req)
		if resp.StatusCode != 200 {
			t.Fatalf("HTTP %d", resp.StatusCode)
		}
		r, err := ocsp.ParseResponse(body, leafIssuer.Intermediate())
		if err != nil || r.Status != want || !bytes.Equal(r.SerialNumber.Bytes(), leafSerial) {
			t.Fatalf("status %v %v", r, err)
		}
	}
	reqOld, _ := ocsp.CreateRequest(old, e.ca.Intermediate(), nil)
	reqNew, _ := ocsp.CreateRequest(leaf2, ca2.Intermediate(), nil)
	check(e.ca, old.SerialNumber.Bytes(), ocsp.Good, reqOld)
	check(ca2, leaf2.SerialNumber.Bytes(), ocsp.Good, reqNew)
	// Asking issuer 2 about issuer 1's serial: unknown, not good.
	cross, _ := ocsp.CreateRequest(old, ca2.Intermediate(), nil)
	check(ca2, old.SerialNumber.Bytes(), ocsp.Unknown, cross)

	for _, id := range []string{e.iss.KeyID, iss2.KeyID} {
		resp, err := http.Get(srv + "/crl/" + id + ".crl")
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("CRL of %s: %v %v", id, resp.StatusCode, err)
		}
		resp.Body.Close()
	}
	der, _, _ := svc.CRL(iss2.KeyID, false)
	resp, _ := http.Get(srv + "/crl/current.crl")
	var cur bytes.Buffer
	cur.ReadFrom(resp.Body)
	resp.Body.Close()
	if !bytes.Equal(cur.Bytes(), der) {
		t.Fatal("current.crl is not the active issuer's CRL")
	}
	// The old generation expires out of the list: its CRL is gone.
	mu.Lock()
	list = []crl.Issuer{iss2}
	mu.Unlock()
	svc.IssuersChanged()
	waitFor(t, "old issuer dropped", func() bool {
		resp, err := http.Get(srv + "/crl/" + e.iss.KeyID + ".crl")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 404
	})
}

func TestConfigYAML(t *testing.T) {
	tests := []struct {
		name, doc string
		ok        bool
	}{
		{"minimal", "data_dir: /var/lib/palisade/crl\n", true},
		{"durations", "data_dir: /d\ncrl_validity: 30m\nocsp_validity: 10m\nfull_crl_min_interval: 5s\n", true},
		{"unknown key", "data_dir: /d\ncrl_valdity: 1h\n", false},
		{"no data dir", "crl_validity: 1h\n", false},
		{"tiny validity", "data_dir: /d\nocsp_validity: 1s\n", false},
		{"negative", "data_dir: /d\nlong_poll_timeout: -1s\n", false},
		{"huge body cap", "data_dir: /d\nmax_request_bytes: 99999999\n", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var c crl.Config
			dec := yaml.NewDecoder(strings.NewReader(tc.doc))
			dec.KnownFields(true)
			err := dec.Decode(&c)
			if err == nil {
				c.Defaults()
				err = c.Validate()
			}
			if (err == nil) != tc.ok {
				t.Fatalf("err = %v, want ok=%v", err, tc.ok)
			}
		})
	}
}

func TestCheckerLearnsIssuersFromRoots(t *testing.T) {
	e := newEnv(t, crl.Config{})
	leaf := e.mint(t, "n")
	// A second live issuer under a root the checker does not trust.
	rogue := testca.New(t, "example.org")
	riss := crl.Issuer{KeyID: hex.EncodeToString(rogue.Intermediate().SubjectKeyId), Cert: rogue.Intermediate(), Signer: rogue.IssuerSigner()}
	svc, err := crl.New(crl.Config{DataDir: t.TempDir()}, crl.Options{Store: e.store, Audit: e.audit, Keys: e.keys,
		Issuers: crl.IssuersFunc(func() []crl.Issuer { return []crl.Issuer{e.iss, riss} })})
	if err != nil {
		t.Fatal(err)
	}
	url := newServer(t, svc)
	waitFor(t, "ready", func() bool { return svc.Ready() == nil })
	chk, err := crl.NewChecker(crl.CheckerConfig{BaseURL: url, Roots: e.ca.Pool()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go chk.Run(ctx)
	waitFor(t, "issuer learnt", func() bool {
		_, err := chk.Revoked(leaf.SerialNumber, e.ca.Intermediate().SubjectKeyId)
		return err == nil
	})
	time.Sleep(50 * time.Millisecond)
	if _, err := chk.Revoked(leaf.SerialNumber, rogue.Intermediate().SubjectKeyId); !errors.Is(err, crl.ErrNoCRL) {
		t.Fatalf("followed an issuer outside the trust bundle: %v", err)
	}
	// The intermediates themselves (no CRL for the root): good while live
	// and chaining to the bundle, unknown otherwise.
	if r, err := chk.Revoked(e.ca.Intermediate().SerialNumber, e.ca.Root().SubjectKeyId); r || err != nil {
		t.Fatalf("live intermediate: revoked=%v, %v", r, err)
	}
	if _, err := chk.Revoked(rogue.Intermediate().SerialNumber, rogue.Root().SubjectKeyId); !errors.Is(err, crl.ErrNoCRL) {
		t.Fatalf("intermediate outside the trust bundle: %v", err)
	}
	if _, err := chk.Revoked(big.NewInt(12345), e.ca.Root().SubjectKeyId); !errors.Is(err, crl.ErrNoCRL) {
		t.Fatalf("intermediate the appliance does not list: %v", err)
	}
	if _, err := svc.Revoke(ctx, "op", leaf.SerialNumber, crl.ReasonKeyCompromise); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "revocation", func() bool {
		r, err := chk.Revoked(leaf.SerialNumber, e.ca.Intermediate().SubjectKeyId)
		return err == nil && r
	})
}

// Requests naming a serial under another live issuer get that issuer's
// answer and leave this issuer's pre-signed one in place; answers for
// serials nobody issued are signed but never cached.
func TestOCSPAnswersKeyedByIssuer(t *testing.T) {
	e := newEnv(t, crl.Config{})
	other := testca.New(t, "example.org")
	oiss := crl.Issuer{KeyID: hex.EncodeToString(other.Intermediate().SubjectKeyId), Cert: other.Intermediate(), Signer: other.IssuerSigner(), Active: true}
	svc, err := crl.New(crl.Config{DataDir: t.TempDir()}, crl.Options{Store: e.store, Audit: e.audit, Keys: e.keys,
		Issuers: crl.IssuersFunc(func() []crl.Issuer { return []crl.Issuer{e.iss, oiss} })})
	if err != nil {
		t.Fatal(err)
	}
	url := newServer(t, svc)
	waitFor(t, "ready", func() bool { return svc.Ready() == nil })
	leaf, _, _ := e.ca.MintX509SVID(t, "spiffe://example.org/w", time.Hour)
	e.store.Add(crl.CertInfo{Serial: leaf.SerialNumber, IssuerKeyID: e.iss.KeyID, NotBefore: leaf.NotBefore, NotAfter: leaf.NotAfter})
	svc.Issued(leaf.SerialNumber, e.iss.KeyID, leaf.NotAfter)
	waitFor(t, "pre-signed", func() bool { return svc.Metrics().Signatures.Load() >= 1 })

	own, _ := ocsp.CreateRequest(leaf, e.ca.Intermediate(), nil)
	// The same serial under the other issuer's names and key.
	forged := *leaf
	forged.Issuer = other.Intermediate().Subject
	cross, _ := ocsp.CreateRequest(&forged, other.Intermediate(), nil)
	signed := svc.Metrics().Signatures.Load()
	for range 5 {
		_, body := postOCSP(t, url, cross)
		if r, err := ocsp.ParseResponse(body, other.Intermediate()); err != nil || r.Status != ocsp.Unknown {
			t.Fatalf("cross-issuer request: %v %v, want unknown from the other issuer", r, err)
		}
		_, body = postOCSP(t, url, own)
		if r, err := ocsp.ParseResponseForCert(body, leaf, e.ca.Intermediate()); err != nil || r.Status != ocsp.Good {
			t.Fatalf("own request: %v %v, want good", r, err)
		}
	}
	// Five unknown answers signed (none cached), the pre-signed good one
	// served from the cache every time.
	if got := svc.Metrics().Signatures.Load() - signed; got != 5 {
		t.Fatalf("%d signatures for 5 cross-issuer and 5 own requests, want 5", got)
	}
}
