package crl_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/ocsp"

	"github.com/palisade-id/palisade/crl"
	"github.com/palisade-id/palisade/crl/memsource"
	"github.com/palisade-id/palisade/test/testca"
)

// flakySigner fails every Sign while *down is set, like an HSM whose token
// went away.
type flakySigner struct {
	crypto.Signer
	down *atomic.Bool
}

var errHSMDown = errors.New("test HSM: CKR_DEVICE_REMOVED")

func (f flakySigner) Sign(r io.Reader, d []byte, o crypto.SignerOpts) ([]byte, error) {
	if f.down.Load() {
		return nil, errHSMDown
	}
	return f.Signer.Sign(r, d, o)
}

type memKeys struct {
	mu   sync.Mutex
	keys map[string]crypto.Signer
	down *atomic.Bool
	gens int
}

func (k *memKeys) Signer(label string) (crypto.Signer, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	s, ok := k.keys[label]
	if !ok {
		return nil, errors.New("no such key")
	}
	return flakySigner{s, k.down}, nil
}

func (k *memKeys) GenerateSigner(label string) (crypto.Signer, error) {
	if k.down.Load() {
		return nil, errHSMDown
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	k.keys[label] = key
	k.gens++
	return flakySigner{key, k.down}, nil
}

type memAudit struct {
	mu    sync.Mutex
	kinds []string
	data  []any // data[i] is the record of kinds[i]
	err   error // set: every Append fails with it
	// before, if set, runs at the start of every Append (set it before
	// the service runs).
	before func(kind string)
}

func (a *memAudit) Append(_ context.Context, kind, actor string, data any) error {
	if a.before != nil {
		a.before(kind)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.err != nil {
		return a.err
	}
	a.kinds = append(a.kinds, kind+":"+actor)
	a.data = append(a.data, data)
	return nil
}

// fail makes every Append fail with err (nil: succeed again).
func (a *memAudit) fail(err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.err = err
}

// records returns the data of the records of kind, oldest first.
func (a *memAudit) records(kind string) []map[string]any {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []map[string]any
	for i, k := range a.kinds {
		if strings.HasPrefix(k, kind+":") {
			m, _ := a.data[i].(map[string]any)
			out = append(out, m)
		}
	}
	return out
}

// revocations returns the recorded kinds other than the responder
// certificates' issuance.
func (a *memAudit) revocations() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []string
	for _, k := range a.kinds {
		if !strings.HasPrefix(k, "ocsp-signer.issued:") {
			out = append(out, k)
		}
	}
	return out
}

type env struct {
	ca    *testca.CA
	store *memsource.Store
	keys  *memKeys
	audit *memAudit
	down  *atomic.Bool
	svc   *crl.Service
	url   string
	http  *crl.HTTPServer
	cfg   crl.Config
	iss   crl.Issuer
}

func newEnv(t testing.TB, cfg crl.Config) *env {
	t.Helper()
	e := &env{ca: testca.New(t, "example.org"), store: memsource.New(), audit: &memAudit{}, down: &atomic.Bool{}}
	e.keys = &memKeys{keys: map[string]crypto.Signer{}, down: e.down}
	if cfg.DataDir == "" {
		cfg.DataDir = t.TempDir()
	}
	if cfg.FullCRLMinInterval == 0 {
		cfg.FullCRLMinInterval = 50 * time.Millisecond
	}
	e.cfg = cfg
	inter := e.ca.Intermediate()
	e.iss = crl.Issuer{KeyID: hex.EncodeToString(inter.SubjectKeyId), Cert: inter,
		Signer: flakySigner{e.ca.IssuerSigner(), e.down}, Active: true}
	e.start(t)
	return e
}

// start serves the service the way palisade-server does: HTTPServer's
// lean OCSP path, net/http for the rest.
func (e *env) start(t testing.TB) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.url = "http://" + ln.Addr().String()
	e.svc, err = crl.New(e.cfg, crl.Options{
		Store: e.store, Audit: e.audit, Keys: e.keys, BaseURL: e.url,
		Issuers: crl.IssuersFunc(func() []crl.Issuer { return []crl.Issuer{e.iss} }),
	})
	if err != nil {
		t.Fatal(err)
	}
	e.http = e.svc.NewHTTPServer(&http.Server{Handler: e.svc.Handler()})
	served := make(chan error, 1)
	go func() { served <- e.http.Serve(ln) }()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { e.svc.Run(ctx); close(done) }()
	t.Cleanup(func() {
		cancel()
		<-done
		e.http.Close()
		if err := <-served; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("Serve: %v", err)
		}
	})
	waitFor(t, "ready", func() bool { return e.svc.Ready() == nil })
}

func (e *env) mint(t testing.TB, node string) *x509.Certificate {
	t.Helper()
	leaf, _, _ := e.ca.MintX509SVID(t, "spiffe://example.org/w/"+node, time.Hour)
	e.store.Add(crl.CertInfo{Serial: leaf.SerialNumber, SPIFFEID: leaf.URIs[0].String(), NodeID: node,
		IssuerKeyID: e.iss.KeyID, NotBefore: leaf.NotBefore, NotAfter: leaf.NotAfter})
	e.svc.Issued(leaf.SerialNumber, e.iss.KeyID, leaf.NotAfter)
	return leaf
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func postOCSP(t *testing.T, url string, body []byte) (*http.Response, []byte) {
	t.Helper()
	resp, err := http.Post(url+"/ocsp", "application/ocsp-request", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

// withNonce adds a nonce extension to a DER OCSPRequest from ocsp.CreateRequest.
func withNonce(t testing.TB, req []byte, nonce []byte) []byte {
	t.Helper()
	var r struct {
		TBS struct {
			Raw  asn1.RawContent
			List asn1.RawValue
		}
	}
	if _, err := asn1.Unmarshal(req, &r); err != nil {
		t.Fatal(err)
	}
	val, _ := asn1.Marshal(nonce)
	ext, _ := asn1.Marshal([]pkix.Extension{{Id: asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 48, 1, 2}, Value: val}})
	exts, _ := asn1.Marshal(asn1.RawValue{Class: 2, Tag: 2, IsCompound: true, Bytes: ext})
	tbs, _ := asn1.Marshal(asn1.RawValue{Tag: 16, IsCompound: true, Bytes: append(append([]byte{}, r.TBS.List.FullBytes...), exts...)})
	out, _ := asn1.Marshal(asn1.RawValue{Tag: 16, IsCompound: true, Bytes: tbs})
	return out
}

// nonceOf digs the nonce out of responseExtensions (x/crypto/ocsp only
// exposes singleExtensions).
func nonceOf(t *testing.T, resp []byte) []byte {
	t.Helper()
	var outer struct {
		Status asn1.Enumerated
		Bytes  struct {
			Type asn1.ObjectIdentifier
			Resp []byte
		} `asn1:"explicit,tag:0"`
	}
	if _, err := asn1.Unmarshal(resp, &outer); err != nil {
		t.Fatal(err)
	}
	var basic struct {
		TBS struct {
			Raw        asn1.RawContent
			ID         asn1.RawValue
			Produced   time.Time `asn1:"generalized"`
			Responses  asn1.RawValue
			Extensions []pkix.Extension `asn1:"explicit,tag:1,optional"`
		}
		Alg   asn1.RawValue
		Sig   asn1.BitString
		Certs asn1.RawValue `asn1:"explicit,tag:0,optional"`
	}
	if _, err := asn1.Unmarshal(outer.Bytes.Resp, &basic); err != nil {
		t.Fatal(err)
	}
	for _, x := range basic.TBS.Extensions {
		if x.Id.Equal(asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 48, 1, 2}) {
			var n []byte
			if _, err := asn1.Unmarshal(x.Value, &n); err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	return nil
}

func TestOCSPStatuses(t *testing.T) {
	e := newEnv(t, crl.Config{})
	good := e.mint(t, "n1")
	revoked := e.mint(t, "n1")
	unknown, _, _ := e.ca.MintX509SVID(t, "spiffe://example.org/never-recorded", time.Hour)
	if _, err := e.svc.Revoke(context.Background(), "op", revoked.SerialNumber, crl.ReasonKeyCompromise); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		cert   *x509.Certificate
		hash   crypto.Hash
		status int
	}{
		{"good", good, crypto.SHA1, ocsp.Good},
		{"good sha256", good, crypto.SHA256, ocsp.Good},
		{"revoked", revoked, crypto.SHA1, ocsp.Revoked},
		{"unknown", unknown, crypto.SHA1, ocsp.Unknown},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req, err := ocsp.CreateRequest(tc.cert, e.ca.Intermediate(), &ocsp.RequestOptions{Hash: tc.hash})
			if err != nil {
				t.Fatal(err)
			}
			resp, body := postOCSP(t, e.url, req)
			if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/ocsp-response" {
				t.Fatalf("HTTP %d %q", resp.StatusCode, resp.Header.Get("Content-Type"))
			}
			r, err := ocsp.ParseResponseForCert(body, tc.cert, e.ca.Intermediate())
			if err != nil {
				t.Fatalf("parse/verify: %v", err)
			}
			if r.Status != tc.status {
				t.Fatalf("status %d, want %d", r.Status, tc.status)
			}
			if r.Certificate == nil || r.Certificate.ExtKeyUsage[0] != x509.ExtKeyUsageOCSPSigning {
				t.Fatal("no delegated OCSP signing certificate")
			}
			if err := r.Certificate.CheckSignatureFrom(e.ca.Intermediate()); err != nil {
				t.Fatalf("responder cert not signed by issuer: %v", err)
			}
			if tc.status == ocsp.Revoked && (r.RevocationReason != ocsp.KeyCompromise || r.RevokedAt.IsZero()) {
				t.Fatalf("revocation info: %d %v", r.RevocationReason, r.RevokedAt)
			}
			if !r.NextUpdate.After(time.Now()) || r.ThisUpdate.After(time.Now()) {
				t.Fatalf("times %v %v", r.ThisUpdate, r.NextUpdate)
			}
		})
	}
}

func TestOCSPErrors(t *testing.T) {
	e := newEnv(t, crl.Config{MaxRequestBytes: 1024})
	leaf := e.mint(t, "n")
	other := testca.New(t, "other.org")
	foreign, _, _ := other.MintX509SVID(t, "spiffe://other.org/x", time.Hour)
	foreignReq, _ := ocsp.CreateRequest(foreign, other.Intermediate(), nil)
	goodReq, _ := ocsp.CreateRequest(leaf, e.ca.Intermediate(), nil)
	tests := []struct {
		name string
		body []byte
		code int
		want ocsp.ResponseStatus
	}{
		{"garbage", []byte("hello"), 200, ocsp.Malformed},
		{"empty", nil, 200, ocsp.Malformed},
		{"truncated", goodReq[:len(goodReq)-3], 200, ocsp.Malformed},
		{"trailing", append(append([]byte{}, goodReq...), 0), 200, ocsp.Malformed},
		{"unknown issuer", foreignReq, 200, ocsp.Unauthorized},
		{"oversized", bytes.Repeat([]byte{0x30}, 4096), 413, ocsp.Malformed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := postOCSP(t, e.url, tc.body)
			if resp.StatusCode != tc.code {
				t.Fatalf("HTTP %d, want %d", resp.StatusCode, tc.code)
			}
			_, err := ocsp.ParseResponse(body, nil)
			var re ocsp.ResponseError
			if !errors.As(err, &re) || re.Status != tc.want {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
	t.Run("method", func(t *testing.T) {
		req, _ := http.NewRequest(http.MethodPut, e.url+"/ocsp", nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusMethodNotAllowed {
			t.Fatalf("HTTP %d", resp.StatusCode)
		}
	})
}

func TestOCSPGetCaching(t *testing.T) {
	e := newEnv(t, crl.Config{})
	leaf := e.mint(t, "n")
	req, _ := ocsp.CreateRequest(leaf, e.ca.Intermediate(), nil)
	for _, enc := range []string{
		base64.StdEncoding.EncodeToString(req),
		strings.NewReplacer("+", "%2B", "/", "%2F", "=", "%3D").Replace(base64.StdEncoding.EncodeToString(req)),
		base64.RawURLEncoding.EncodeToString(req),
	} {
		resp, err := http.Get(e.url + "/ocsp/" + enc)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		r, err := ocsp.ParseResponseForCert(body, leaf, e.ca.Intermediate())
		if err != nil || r.Status != ocsp.Good {
			t.Fatalf("GET %s: %v", enc, err)
		}
		h := resp.Header
		if !strings.Contains(h.Get("Cache-Control"), "max-age=") || h.Get("ETag") == "" {
			t.Fatalf("caching headers: %v", h)
		}
		exp, err := http.ParseTime(h.Get("Expires"))
		if err != nil || !exp.Equal(r.NextUpdate) {
			t.Fatalf("Expires %q vs nextUpdate %v", h.Get("Expires"), r.NextUpdate)
		}
		lm, err := http.ParseTime(h.Get("Last-Modified"))
		if err != nil || !lm.Equal(r.ThisUpdate) {
			t.Fatalf("Last-Modified %q vs thisUpdate %v", h.Get("Last-Modified"), r.ThisUpdate)
		}
		cond, _ := http.NewRequest(http.MethodGet, e.url+"/ocsp/"+enc, nil)
		cond.Header.Set("If-None-Match", h.Get("ETag"))
		resp2, err := http.DefaultClient.Do(cond)
		if err != nil {
			t.Fatal(err)
		}
		resp2.Body.Close()
		if resp2.StatusCode != http.StatusNotModified {
			t.Fatalf("conditional GET: HTTP %d", resp2.StatusCode)
		}
	}
}

// The pre-sign worker must not replace an answer a client was already sent
// (its ETag would stop revalidating), but must replace an "unknown" cached
// before the certificate was recorded. The worker is FIFO: once the marker
// queued after the leaf is signed, the leaf's turn has passed.
func TestOCSPPresignAfterOnDemand(t *testing.T) {
	tests := []struct {
		name        string
		recordFirst bool // store the leaf before the first request
		firstStatus int
		wantSame    bool // the worker keeps the first answer
	}{
		{"known answer kept", true, ocsp.Good, true},
		{"unknown answer replaced", false, ocsp.Unknown, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, crl.Config{})
			leaf, _, _ := e.ca.MintX509SVID(t, "spiffe://example.org/w/n", time.Hour)
			record := func() {
				e.store.Add(crl.CertInfo{Serial: leaf.SerialNumber, SPIFFEID: leaf.URIs[0].String(), NodeID: "n",
					IssuerKeyID: e.iss.KeyID, NotBefore: leaf.NotBefore, NotAfter: leaf.NotAfter})
			}
			if tc.recordFirst {
				record()
			}
			req, _ := ocsp.CreateRequest(leaf, e.ca.Intermediate(), nil)
			ask := func() (string, *ocsp.Response) {
				resp, body := postOCSP(t, e.url, req)
				r, err := ocsp.ParseResponseForCert(body, leaf, e.ca.Intermediate())
				if err != nil {
					t.Fatal(err)
				}
				return resp.Header.Get("ETag"), r
			}
			etag1, r1 := ask()
			if r1.Status != tc.firstStatus {
				t.Fatalf("first answer: status %d, want %d", r1.Status, tc.firstStatus)
			}
			signed := e.svc.Metrics().Signatures.Load()
			if !tc.recordFirst {
				record()
			}
			e.svc.Issued(leaf.SerialNumber, e.iss.KeyID, leaf.NotAfter)
			e.mint(t, "marker")
			want := signed + 1 // the marker
			if !tc.wantSame {
				want++
			}
			waitFor(t, "pre-signing", func() bool { return e.svc.Metrics().Signatures.Load() >= want })
			etag2, r2 := ask()
			if r2.Status != ocsp.Good {
				t.Fatalf("after pre-signing: status %d, want good", r2.Status)
			}
			if (etag2 == etag1) != tc.wantSame {
				t.Fatalf("ETag %s then %s; want same: %v", etag1, etag2, tc.wantSame)
			}
			if got := e.svc.Metrics().Signatures.Load(); got != want {
				t.Fatalf("%d signatures, want %d", got, want)
			}
		})
	}
}

// An answer is re-signed once half its validity has passed since it was
// signed. Counted from the backdated thisUpdate, short validities were
// re-signed at every refresh tick.
func TestOCSPRefreshAtHalfLife(t *testing.T) {
	e := newEnv(t, crl.Config{OCSPValidity: 8 * time.Second}) // ticks every second
	e.mint(t, "n")
	waitFor(t, "pre-signed", func() bool { return e.svc.Metrics().Signatures.Load() >= 1 })
	n := e.svc.Metrics().Signatures.Load()
	time.Sleep(2500 * time.Millisecond) // two ticks, before the half-life (4 s)
	if got := e.svc.Metrics().Signatures.Load(); got != n {
		t.Fatalf("%d signatures before the half-life, want %d", got, n)
	}
	waitFor(t, "re-signed past the half-life", func() bool { return e.svc.Metrics().Signatures.Load() > n })
}

func TestOCSPNonce(t *testing.T) {
	e := newEnv(t, crl.Config{})
	leaf := e.mint(t, "n")
	req, _ := ocsp.CreateRequest(leaf, e.ca.Intermediate(), nil)
	nonce := []byte("0123456789abcdef")
	resp, body := postOCSP(t, e.url, withNonce(t, req, nonce))
	if got := nonceOf(t, body); !bytes.Equal(got, nonce) {
		t.Fatalf("nonce %x, want %x", got, nonce)
	}
	if resp.Header.Get("Cache-Control") != "no-store" {
		t.Fatalf("nonce answer cacheable: %q", resp.Header.Get("Cache-Control"))
	}
	if _, err := ocsp.ParseResponseForCert(body, leaf, e.ca.Intermediate()); err != nil {
		t.Fatal(err)
	}
	// Too long a nonce is malformed (RFC 8954).
	_, body = postOCSP(t, e.url, withNonce(t, req, bytes.Repeat([]byte{1}, 64)))
	var re ocsp.ResponseError
	if _, err := ocsp.ParseResponse(body, nil); !errors.As(err, &re) || re.Status != ocsp.Malformed {
		t.Fatalf("long nonce: %v", err)
	}
	// HSM down: the pre-signed answer, without nonce.
	waitFor(t, "pre-signed", func() bool { return e.svc.Metrics().Signatures.Load() >= 2 })
	e.down.Store(true)
	_, body = postOCSP(t, e.url, withNonce(t, req, nonce))
	if r, err := ocsp.ParseResponseForCert(body, leaf, e.ca.Intermediate()); err != nil || r.Status != ocsp.Good {
		t.Fatalf("fallback: %v", err)
	}
	if got := nonceOf(t, body); got != nil {
		t.Fatal("fallback carries a nonce")
	}
}

func TestRevokeUpdatesCRLAndOCSP(t *testing.T) {
	e := newEnv(t, crl.Config{})
	a, b, c := e.mint(t, "node-a"), e.mint(t, "node-a"), e.mint(t, "node-b")
	_, n0, _ := e.svc.CRL(e.iss.KeyID, false)
	req, _ := ocsp.CreateRequest(a, e.ca.Intermediate(), nil)
	waitFor(t, "pre-signed good", func() bool {
		_, body := postOCSP(t, e.url, req)
		r, err := ocsp.ParseResponse(body, e.ca.Intermediate())
		return err == nil && r.Status == ocsp.Good
	})
	n, err := e.svc.RevokeNode(context.Background(), "op", "node-a", crl.ReasonPrivilegeWithdrawn)
	if err != nil || n != 2 {
		t.Fatalf("RevokeNode: %d %v", n, err)
	}
	// OCSP flips immediately: the cached good answer is gone.
	_, body := postOCSP(t, e.url, req)
	if r, err := ocsp.ParseResponse(body, e.ca.Intermediate()); err != nil || r.Status != ocsp.Revoked || r.RevocationReason != ocsp.PrivilegeWithdrawn {
		t.Fatalf("after revoke: %+v %v", r, err)
	}
	for _, delta := range []bool{true, false} {
		waitFor(t, "CRL with both serials", func() bool {
			der, _, err := e.svc.CRL(e.iss.KeyID, delta)
			if err != nil {
				return false
			}
			rl, err := x509.ParseRevocationList(der)
			if err != nil || rl.CheckSignatureFrom(e.ca.Intermediate()) != nil {
				t.Fatalf("CRL: %v", err)
			}
			got := map[string]bool{}
			for _, x := range rl.RevokedCertificateEntries {
				got[x.SerialNumber.String()] = true
			}
			if got[c.SerialNumber.String()] {
				t.Fatal("node-b's certificate revoked")
			}
			return got[a.SerialNumber.String()] && got[b.SerialNumber.String()]
		})
	}
	_, n1, _ := e.svc.CRL(e.iss.KeyID, false)
	if n1 <= n0 {
		t.Fatalf("CRL number did not grow: %d -> %d", n0, n1)
	}
	// Bad input changes nothing.
	for _, bad := range []struct {
		serial *big.Int
		reason int
	}{{big.NewInt(-5), 1}, {c.SerialNumber, 7}, {c.SerialNumber, 8}, {nil, 1}} {
		if _, err := e.svc.Revoke(context.Background(), "op", bad.serial, bad.reason); err == nil {
			t.Fatalf("Revoke(%v, %d) accepted", bad.serial, bad.reason)
		}
	}
	if _, err := e.svc.RevokeNode(context.Background(), "op", " ", 1); !errors.Is(err, crl.ErrBadNodeID) {
		t.Fatalf("empty node: %v", err)
	}
	if info, _, _ := e.store.Status(c.SerialNumber); info.Revoked {
		t.Fatal("bad input revoked a certificate")
	}
	if _, err := e.svc.Revoke(context.Background(), "op", big.NewInt(12345), 1); !errors.Is(err, memsource.ErrNotFound) {
		t.Fatalf("unknown serial: %v", err)
	}
	if kinds := e.audit.revocations(); len(kinds) != 1 || kinds[0] != "node.revoked:op" {
		t.Fatalf("audit: %v", kinds)
	}
}

func TestCRLHTTP(t *testing.T) {
	e := newEnv(t, crl.Config{})
	leaf := e.mint(t, "n")
	e.svc.Revoke(context.Background(), "op", leaf.SerialNumber, crl.ReasonSuperseded)
	for _, p := range []struct {
		path  string
		code  int
		delta bool
	}{
		{"/crl/" + e.iss.KeyID + ".crl", 200, false},
		{"/crl/current.crl", 200, false},
		{"/crl/" + e.iss.KeyID + "-delta.crl", 200, true},
		{"/crl/abcdef.crl", 404, false},
		{"/crl/x", 404, false},
	} {
		resp, err := http.Get(e.url + p.path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != p.code {
			t.Fatalf("%s: HTTP %d", p.path, resp.StatusCode)
		}
		if p.code != 200 {
			continue
		}
		rl, err := x509.ParseRevocationList(body)
		if err != nil || rl.CheckSignatureFrom(e.ca.Intermediate()) != nil {
			t.Fatalf("%s: %v", p.path, err)
		}
		isDelta := false
		for _, x := range rl.Extensions {
			isDelta = isDelta || x.Id.Equal(asn1.ObjectIdentifier{2, 5, 29, 27})
		}
		if isDelta != p.delta || resp.Header.Get("Content-Type") != "application/pkix-crl" || resp.Header.Get("ETag") == "" {
			t.Fatalf("%s: delta=%v headers=%v", p.path, isDelta, resp.Header)
		}
		// thisUpdate has one-second resolution while deltas change with
		// every revocation: a date must never make a changed CRL look
		// unmodified, only the ETag decides.
		if lm := resp.Header.Get("Last-Modified"); lm != "" {
			t.Fatalf("%s: Last-Modified %q", p.path, lm)
		}
		cond, _ := http.NewRequest(http.MethodGet, e.url+p.path, nil)
		cond.Header.Set("If-Modified-Since", time.Now().Add(time.Hour).UTC().Format(http.TimeFormat))
		cresp, err := http.DefaultClient.Do(cond)
		if err != nil {
			t.Fatal(err)
		}
		cresp.Body.Close()
		if cresp.StatusCode != http.StatusOK {
			t.Fatalf("%s with If-Modified-Since: HTTP %d, want 200", p.path, cresp.StatusCode)
		}
	}
	if got := crl.CRLURL(e.url+"/", e.iss.KeyID); got != e.url+"/crl/"+e.iss.KeyID+".crl" {
		t.Fatalf("CRLURL %s", got)
	}
	if got := crl.OCSPURL(e.url); got != e.url+"/ocsp" {
		t.Fatalf("OCSPURL %s", got)
	}
}

func TestCRLNumberSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	e := newEnv(t, crl.Config{DataDir: dir})
	_, n1, _ := e.svc.CRL(e.iss.KeyID, true)
	// A second service over the same data dir (the first one still
	// running is harmless: numbers only grow).
	e2 := &env{ca: e.ca, store: e.store, keys: e.keys, audit: e.audit, down: e.down, cfg: e.cfg, iss: e.iss}
	e2.start(t)
	_, n2, _ := e2.svc.CRL(e.iss.KeyID, false)
	if n2 <= n1 {
		t.Fatalf("CRL number after restart %d, before %d", n2, n1)
	}
}

func TestHSMDownKeepsServingUntilNextUpdate(t *testing.T) {
	e := newEnv(t, crl.Config{OCSPValidity: 4 * time.Second, CRLValidity: 2 * time.Second}) // ≈2 s between the refresh failure and nextUpdate
	leaf := e.mint(t, "n")
	req, _ := ocsp.CreateRequest(leaf, e.ca.Intermediate(), nil)
	var first *ocsp.Response
	waitFor(t, "pre-signed", func() bool {
		_, body := postOCSP(t, e.url, req)
		r, err := ocsp.ParseResponse(body, e.ca.Intermediate())
		first = r
		return err == nil && r.Status == ocsp.Good
	})
	e.down.Store(true)
	// Refresh at half-life fails loudly (metric), the answer is still served.
	waitFor(t, "refresh failure", func() bool { return e.svc.Metrics().RefreshFailures.Load() > 0 })
	_, body := postOCSP(t, e.url, req)
	if r, err := ocsp.ParseResponse(body, e.ca.Intermediate()); err != nil || !r.ThisUpdate.Equal(first.ThisUpdate) {
		t.Fatalf("pre-signed answer not served while HSM down: %v", err)
	}
	// Past nextUpdate: tryLater, never a stale answer.
	time.Sleep(time.Until(first.NextUpdate) + 100*time.Millisecond)
	_, body = postOCSP(t, e.url, req)
	var re ocsp.ResponseError
	if _, err := ocsp.ParseResponse(body, nil); !errors.As(err, &re) || re.Status != ocsp.TryLater {
		t.Fatalf("after nextUpdate with HSM down: %v", err)
	}
	if e.svc.Metrics().CRLBuildErrors.Load() == 0 {
		t.Fatal("CRL refresh failure not counted")
	}
	// HSM back: answers resume.
	e.down.Store(false)
	waitFor(t, "recovery", func() bool {
		_, body := postOCSP(t, e.url, req)
		r, err := ocsp.ParseResponse(body, e.ca.Intermediate())
		return err == nil && r.Status == ocsp.Good
	})
}

func TestCheckerFollowsRevocationsWithinASecond(t *testing.T) {
	e := newEnv(t, crl.Config{})
	leaf := e.mint(t, "n")
	other := e.mint(t, "n2")
	updates := make(chan struct{}, 16)
	chk, err := crl.NewChecker(crl.CheckerConfig{BaseURL: e.url,
		Issuers:  func() []*x509.Certificate { return []*x509.Certificate{e.ca.Intermediate()} },
		OnUpdate: func() { updates <- struct{}{} }})
	if err != nil {
		t.Fatal(err)
	}
	ski := e.ca.Intermediate().SubjectKeyId
	if _, err := chk.Revoked(leaf.SerialNumber, ski); !errors.Is(err, crl.ErrNoCRL) {
		t.Fatalf("before sync: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go chk.Run(ctx)
	waitFor(t, "checker sync", func() bool { _, err := chk.Revoked(leaf.SerialNumber, ski); return err == nil })
	if r, _ := chk.Revoked(leaf.SerialNumber, ski); r {
		t.Fatal("revoked before revocation")
	}
	time.Sleep(100 * time.Millisecond) // let the long-poll settle on the current seq
	for len(updates) > 0 {             // the first page resets the feed position
		<-updates
	}
	start := time.Now()
	if _, err := e.svc.Revoke(context.Background(), "op", leaf.SerialNumber, crl.ReasonKeyCompromise); err != nil {
		t.Fatal(err)
	}
	for {
		if r, err := chk.Revoked(leaf.SerialNumber, ski); err == nil && r {
			break
		}
		if time.Since(start) > time.Second {
			t.Fatal("revocation did not reach the checker within 1s")
		}
		time.Sleep(2 * time.Millisecond)
	}
	t.Logf("revocation reached the checker in %v", time.Since(start))
	select {
	case <-updates:
	case <-time.After(time.Second):
		t.Fatal("OnUpdate not called after the revocation was applied")
	}
	if r, _ := chk.Revoked(other.SerialNumber, ski); r {
		t.Fatal("unrelated serial reported revoked")
	}
	// A CRL from a foreign issuer is refused.
	foreign := testca.New(t, "example.org").Intermediate()
	bad, _ := crl.NewChecker(crl.CheckerConfig{BaseURL: e.url,
		Issuers: func() []*x509.Certificate {
			c := *foreign
			c.SubjectKeyId = ski // claims the same key ID, different key
			return []*x509.Certificate{&c}
		}})
	if err := bad.Sync(context.Background()); !errors.Is(err, crl.ErrBadCRL) {
		t.Fatalf("foreign-signed CRL: %v", err)
	}
}

func TestFeedReset(t *testing.T) {
	e := newEnv(t, crl.Config{})
	resp, err := http.Get(e.url + "/revocations?epoch=nope&after=5")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), `"reset":true`) {
		t.Fatalf("stale epoch: %s", body)
	}
	resp, _ = http.Get(e.url + "/revocations?after=x")
	resp.Body.Close()
	if resp.StatusCode != 400 {
		t.Fatalf("bad after: HTTP %d", resp.StatusCode)
	}
}

// newServer serves svc over loopback HTTP and runs it until the test ends.
func newServer(t testing.TB, svc *crl.Service) string {
	t.Helper()
	srv := httptest.NewServer(svc.Handler())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { svc.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done; srv.Close() })
	return srv.URL
}

func TestHSMDownAtStart(t *testing.T) {
	e := &env{ca: testca.New(t, "example.org"), store: memsource.New(), audit: &memAudit{}, down: &atomic.Bool{}}
	e.keys = &memKeys{keys: map[string]crypto.Signer{}, down: e.down}
	inter := e.ca.Intermediate()
	e.iss = crl.Issuer{KeyID: hex.EncodeToString(inter.SubjectKeyId), Cert: inter, Signer: flakySigner{e.ca.IssuerSigner(), e.down}, Active: true}
	e.down.Store(true)
	svc, err := crl.New(crl.Config{DataDir: t.TempDir()}, crl.Options{Store: e.store, Audit: e.audit, Keys: e.keys,
		Issuers: crl.IssuersFunc(func() []crl.Issuer { return []crl.Issuer{e.iss} }), IssuerPoll: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	url := newServer(t, svc)
	leaf, _, _ := e.ca.MintX509SVID(t, "spiffe://example.org/w", time.Hour)
	req, _ := ocsp.CreateRequest(leaf, inter, nil)
	waitFor(t, "failures counted", func() bool { return svc.Metrics().RefreshFailures.Load() > 0 })
	if svc.Ready() == nil {
		t.Fatal("ready with the HSM down")
	}
	_, body := postOCSP(t, url, req)
	var re ocsp.ResponseError
	if _, err := ocsp.ParseResponse(body, nil); !errors.As(err, &re) || re.Status != ocsp.TryLater {
		t.Fatalf("with the HSM down at start: %v", err)
	}
	e.down.Store(false)
	waitFor(t, "ready after the HSM returns", func() bool { return svc.Ready() == nil })
	_, body = postOCSP(t, url, req)
	if r, err := ocsp.ParseResponse(body, inter); err != nil || r.Status != ocsp.Unknown {
		t.Fatalf("after recovery: %v", err)
	}
}

func TestPrefillPreSignsAtStart(t *testing.T) {
	ca := testca.New(t, "example.org")
	st := memsource.New()
	inter := ca.Intermediate()
	iss := crl.Issuer{KeyID: hex.EncodeToString(inter.SubjectKeyId), Cert: inter, Signer: ca.IssuerSigner(), Active: true}
	var reqs [][]byte
	for i := 0; i < 20; i++ {
		leaf, _, _ := ca.MintX509SVID(t, fmt.Sprintf("spiffe://example.org/w/%d", i), time.Hour)
		st.Add(crl.CertInfo{Serial: leaf.SerialNumber, IssuerKeyID: iss.KeyID, NotBefore: leaf.NotBefore, NotAfter: leaf.NotAfter})
		r, _ := ocsp.CreateRequest(leaf, inter, nil)
		reqs = append(reqs, r)
	}
	// One expired certificate is not pre-signed.
	old, _, _ := ca.MintX509SVIDWith(t, "spiffe://example.org/old", time.Hour, testca.SVIDOptions{
		NotBefore: time.Now().Add(-2 * time.Hour), NotAfter: time.Now().Add(-time.Hour)})
	st.Add(crl.CertInfo{Serial: old.SerialNumber, IssuerKeyID: iss.KeyID, NotBefore: old.NotBefore, NotAfter: old.NotAfter})
	down := &atomic.Bool{}
	svc, err := crl.New(crl.Config{DataDir: t.TempDir()}, crl.Options{Store: st, Audit: &memAudit{},
		Keys: &memKeys{keys: map[string]crypto.Signer{}, down: down}, Issuers: crl.IssuersFunc(func() []crl.Issuer { return []crl.Issuer{iss} })})
	if err != nil {
		t.Fatal(err)
	}
	url := newServer(t, svc)
	waitFor(t, "pre-signing", func() bool { return svc.Metrics().Signatures.Load() >= 20 })
	time.Sleep(50 * time.Millisecond)
	if n := svc.Metrics().Signatures.Load(); n != 20 {
		t.Fatalf("%d signatures, want 20 (expired certificate pre-signed?)", n)
	}
	for _, r := range reqs {
		_, body := postOCSP(t, url, r)
		if resp, err := ocsp.ParseResponse(body, inter); err != nil || resp.Status != ocsp.Good {
			t.Fatalf("%v", err)
		}
	}
	if hits := svc.Metrics().CacheHits.Load(); hits != 20 || svc.Metrics().Signatures.Load() != 20 {
		t.Fatalf("%d cache hits, %d signatures: requests were signed on demand", hits, svc.Metrics().Signatures.Load())
	}
}

// FuzzOCSPHandler feeds arbitrary bodies and GET paths to the responder:
// every answer must be a well-formed OCSP response, never a crash.
func FuzzOCSPHandler(f *testing.F) {
	e := newEnv(f, crl.Config{})
	leaf := e.mint(f, "n")
	req, _ := ocsp.CreateRequest(leaf, e.ca.Intermediate(), nil)
	f.Add(req, false)
	f.Add(withNonce(f, req, []byte("nonce")), false)
	f.Add([]byte(base64.StdEncoding.EncodeToString(req)), true)
	f.Add([]byte("%zz"), true)
	h := e.svc.Handler()
	f.Fuzz(func(t *testing.T, b []byte, get bool) {
		var r *http.Request
		if get {
			r = httptest.NewRequest(http.MethodGet, "/ocsp/x", nil)
			r.URL.Path = "/ocsp/" + string(b)
			r.URL.RawPath = "/ocsp/" + string(b)
		} else {
			r = httptest.NewRequest(http.MethodPost, "/ocsp", bytes.NewReader(b))
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != 200 && w.Code != http.StatusRequestEntityTooLarge && w.Code != http.StatusRequestURITooLong {
			t.Fatalf("HTTP %d", w.Code)
		}
		if _, err := ocsp.ParseResponse(w.Body.Bytes(), nil); err != nil {
			var re ocsp.ResponseError
			if !errors.As(err, &re) {
				t.Fatalf("not an OCSP response: %v", err)
			}
		}
	})
}

func TestRevokeTwiceAuditsOnce(t *testing.T) {
	e := newEnv(t, crl.Config{})
	leaf := e.mint(t, "n")
	for i := 0; i < 2; i++ {
		info, err := e.svc.Revoke(context.Background(), "op", leaf.SerialNumber, crl.ReasonSuperseded+i)
		if err != nil || info.Reason != crl.ReasonSuperseded {
			t.Fatalf("revoke %d: %+v %v", i, info, err)
		}
	}
	if kinds := e.audit.revocations(); len(kinds) != 1 {
		t.Fatalf("audit records: %v", kinds)
	}
	if _, seq := e.svc.FeedSeq(); seq > 1 {
		t.Fatalf("feed seq %d after one revocation", seq)
	}
}

// After a server restart the feed resets (new epoch). A Checker then
// fetches the deltas, not the full CRLs, as long as the delta's base is a
// full CRL it holds, and still follows revocations from before and after.
func TestCheckerResetAfterRestartFetchesOnlyDeltas(t *testing.T) {
	e := newEnv(t, crl.Config{})
	before, after := e.mint(t, "a"), e.mint(t, "b")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + ln.Addr().String()
	fullPath := "/crl/" + e.iss.KeyID + ".crl"
	var current atomic.Value // http.Handler of the running service
	var fulls atomic.Int64
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == fullPath {
			fulls.Add(1)
		}
		current.Load().(http.Handler).ServeHTTP(w, r)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	cfg := crl.Config{DataDir: t.TempDir(), LongPollTimeout: 200 * time.Millisecond, FullCRLMinInterval: 50 * time.Millisecond}
	start := func() (*crl.Service, func()) {
		svc, err := crl.New(cfg, crl.Options{Store: e.store, Audit: e.audit, Keys: e.keys, BaseURL: url,
			Issuers: crl.IssuersFunc(func() []crl.Issuer { return []crl.Issuer{e.iss} })})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { svc.Run(ctx); close(done) }()
		waitFor(t, "ready", func() bool { return svc.Ready() == nil })
		current.Store(svc.Handler())
		return svc, func() { cancel(); <-done }
	}
	svc, stop := start()
	chk, err := crl.NewChecker(crl.CheckerConfig{BaseURL: url,
		Issuers: func() []*x509.Certificate { return []*x509.Certificate{e.ca.Intermediate()} }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go chk.Run(ctx)
	ski := e.ca.Intermediate().SubjectKeyId
	revoked := func(c *x509.Certificate) bool { r, err := chk.Revoked(c.SerialNumber, ski); return err == nil && r }
	if _, err := svc.Revoke(context.Background(), "op", before.SerialNumber, crl.ReasonKeyCompromise); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "revocation before the restart", func() bool { return revoked(before) })
	fullsBefore := fulls.Load()
	stop()
	svc, stop = start()
	defer stop()
	if _, err := svc.Revoke(context.Background(), "op", after.SerialNumber, crl.ReasonKeyCompromise); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "revocation after the restart", func() bool { return revoked(after) })
	if !revoked(before) {
		t.Fatal("the revocation from before the restart was lost")
	}
	if n := fulls.Load() - fullsBefore; n != 0 {
		t.Fatalf("%d full CRL fetches after the restart, want 0 (deltas only)", n)
	}
}
