package crl_test

import (
	"crypto"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/ocsp"

	"github.com/palisade-id/palisade/crl"
	"github.com/palisade-id/palisade/crl/memsource"
	"github.com/palisade-id/palisade/test/memca"
	"github.com/palisade-id/palisade/test/testca"
)

// recorder wraps memsource and refuses the first refuse responder
// certificate serials (all of them when refuse < 0) as already recorded.
type recorder struct {
	*memsource.Store
	refuse int
	mu     sync.Mutex
	tried  []*big.Int
}

func (r *recorder) RecordResponderCert(rc crl.ResponderCert) error {
	r.mu.Lock()
	r.tried = append(r.tried, rc.Serial)
	n := len(r.tried)
	r.mu.Unlock()
	if r.refuse < 0 || n <= r.refuse {
		return fmt.Errorf("%w: %x", crl.ErrSerialExists, rc.Serial)
	}
	return r.Store.RecordResponderCert(rc)
}

func (r *recorder) attempts() []*big.Int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*big.Int(nil), r.tried...)
}

type responderEnv struct {
	ca    *testca.CA
	iss   crl.Issuer
	store *recorder
	audit *memca.Recorder
	svc   *crl.Service
	url   string
	now   atomic.Pointer[time.Time]
}

func newResponderEnv(t *testing.T, refuse int, a *memca.Recorder, cfg crl.Config) *responderEnv {
	t.Helper()
	e := &responderEnv{ca: testca.New(t, "example.org"), store: &recorder{Store: memsource.New(), refuse: refuse}, audit: a}
	start := time.Now()
	e.now.Store(&start)
	inter := e.ca.Intermediate()
	e.iss = crl.Issuer{KeyID: hex.EncodeToString(inter.SubjectKeyId), Cert: inter, Signer: e.ca.IssuerSigner(), Active: true}
	cfg.DataDir = t.TempDir()
	var err error
	e.svc, err = crl.New(cfg, crl.Options{Store: e.store, Audit: e.audit,
		Keys: &memKeys{keys: map[string]crypto.Signer{}, down: &atomic.Bool{}}, Now: func() time.Time { return *e.now.Load() },
		Issuers: crl.IssuersFunc(func() []crl.Issuer { return []crl.Issuer{e.iss} })})
	if err != nil {
		t.Fatal(err)
	}
	e.url = newServer(t, e.svc)
	return e
}

// notReadyForOCSP checks that Ready fails for the OCSP responder alone,
// once the CRLs are built.
func (e *responderEnv) notReadyForOCSP(t *testing.T) {
	t.Helper()
	waitFor(t, "CRLs", func() bool { _, _, err := e.svc.CRL(e.iss.KeyID, true); return err == nil })
	if err := e.svc.Ready(); !errors.Is(err, crl.ErrNotReady) || !strings.Contains(err.Error(), "OCSP responder") {
		t.Fatalf("Ready: %v, want the OCSP responder not ready", err)
	}
}

// ask returns the OCSP answer for a fresh leaf of the test CA.
func (e *responderEnv) ask(t *testing.T) (*ocsp.Response, error) {
	t.Helper()
	leaf, _, _ := e.ca.MintX509SVID(t, "spiffe://example.org/w", time.Hour)
	req, err := ocsp.CreateRequest(leaf, e.ca.Intermediate(), nil)
	if err != nil {
		t.Fatal(err)
	}
	_, body := postOCSP(t, e.url, req)
	return ocsp.ParseResponse(body, e.ca.Intermediate())
}

// The delegated responder certificate is signed by an intermediate, so it
// is recorded (serial uniqueness) and audited before it answers anything.
func TestResponderCertRecordedAndAudited(t *testing.T) {
	e := newResponderEnv(t, 0, &memca.Recorder{}, crl.Config{ResponderCertValidity: 3 * time.Hour})
	waitFor(t, "ready", func() bool { return e.svc.Ready() == nil })
	r, err := e.ask(t)
	if err != nil {
		t.Fatal(err)
	}
	rc := r.Certificate
	if rc == nil {
		t.Fatal("response carries no responder certificate")
	}
	// 128 random bits behind a 0x01 byte, as the CA's serials.
	if b := rc.SerialNumber.Bytes(); len(b) != 17 || b[0] != 0x01 {
		t.Fatalf("responder certificate serial %x: want 0x01 and 16 random bytes", b)
	}
	recs := e.store.ResponderCerts()
	if len(recs) != 1 || recs[0].Serial.Cmp(rc.SerialNumber) != 0 || recs[0].IssuerKeyID != e.iss.KeyID ||
		!recs[0].NotAfter.Equal(rc.NotAfter) || !recs[0].NotBefore.Equal(rc.NotBefore) {
		t.Fatalf("recorded %+v, want the served certificate %x of issuer %s", recs, rc.SerialNumber, e.iss.KeyID)
	}
	audited := e.audit.OfKind("ocsp-signer.issued")
	if len(audited) != 1 {
		t.Fatalf("%d ocsp-signer.issued records, want 1", len(audited))
	}
	d, _ := audited[0].Data.(map[string]any)
	if d["serial"] != rc.SerialNumber.Text(16) || d["issuer"] != e.iss.KeyID || d["not_after"] != rc.NotAfter {
		t.Fatalf("audit record %+v does not describe certificate %x", audited[0], rc.SerialNumber)
	}

	// Renewal at two thirds of its life goes the same way.
	later := rc.NotBefore.Add(2*time.Hour + 10*time.Minute)
	e.now.Store(&later)
	e.svc.IssuersChanged()
	waitFor(t, "renewal", func() bool { return len(e.audit.OfKind("ocsp-signer.issued")) == 2 })
	if recs := e.store.ResponderCerts(); len(recs) != 2 {
		t.Fatalf("%d responder certificates recorded after renewal, want 2", len(recs))
	}
}

func TestResponderCertSerialCollision(t *testing.T) {
	t.Run("retried-with-a-fresh-serial", func(t *testing.T) {
		e := newResponderEnv(t, 1, &memca.Recorder{}, crl.Config{})
		waitFor(t, "ready", func() bool { return e.svc.Ready() == nil })
		r, err := e.ask(t)
		if err != nil {
			t.Fatal(err)
		}
		tried := e.store.attempts()
		if len(tried) != 2 || tried[0].Cmp(tried[1]) == 0 || r.Certificate.SerialNumber.Cmp(tried[1]) != 0 {
			t.Fatalf("serials tried %x, served %x: want the refused one replaced", tried, r.Certificate.SerialNumber)
		}
		if n := len(e.audit.OfKind("ocsp-signer.issued")); n != 1 {
			t.Fatalf("%d ocsp-signer.issued records, want 1 (the refused serial was never issued)", n)
		}
	})
	t.Run("refused", func(t *testing.T) {
		e := newResponderEnv(t, -1, &memca.Recorder{}, crl.Config{})
		waitFor(t, "attempts", func() bool { return len(e.store.attempts()) >= 3 })
		e.notReadyForOCSP(t)
		if tried := e.store.attempts(); tried[0].Cmp(tried[1]) == 0 || tried[1].Cmp(tried[2]) == 0 {
			t.Fatalf("serials tried %x: a refused serial was tried again", tried)
		}
		var re ocsp.ResponseError
		if _, err := e.ask(t); !errors.As(err, &re) || re.Status != ocsp.TryLater {
			t.Fatalf("answer without a recorded responder certificate: %v, want tryLater", err)
		}
		if n := len(e.audit.OfKind("ocsp-signer.issued")); n != 0 {
			t.Fatalf("%d ocsp-signer.issued records for refused serials", n)
		}
	})
}

func TestResponderCertNotUsedUnaudited(t *testing.T) {
	errAudit := errors.New("audit log unavailable")
	e := &memca.Recorder{}
	e.Fail(errAudit)
	env := newResponderEnv(t, 0, e, crl.Config{})
	waitFor(t, "an attempt", func() bool { return len(env.store.attempts()) >= 1 })
	env.notReadyForOCSP(t)
	var re ocsp.ResponseError
	if _, err := env.ask(t); !errors.As(err, &re) || re.Status != ocsp.TryLater {
		t.Fatalf("answer from an unaudited responder certificate: %v, want tryLater", err)
	}
	e.Fail(nil)
	env.svc.IssuersChanged()
	waitFor(t, "ready once the audit log is back", func() bool { return env.svc.Ready() == nil })
	if n := len(e.OfKind("ocsp-signer.issued")); n != 1 {
		t.Fatalf("%d ocsp-signer.issued records, want 1", n)
	}
}
