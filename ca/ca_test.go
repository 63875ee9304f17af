package ca_test

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/palisade-id/palisade/ca"
	"github.com/palisade-id/palisade/ca/audit"
	"github.com/palisade-id/palisade/ca/keystore/memkeys"
	"github.com/palisade-id/palisade/ca/pkcs11"
	"github.com/palisade-id/palisade/ca/store"
	"github.com/palisade-id/palisade/test/softhsm"
	"github.com/palisade-id/palisade/test/testca"
	"github.com/palisade-id/palisade/test/testenv"
)

// tokens hands each test its own SoftHSM2 token: the ceremony creates fixed
// key labels, and the PKCS#11 library initialises once per process, so all
// tokens are created before the first test opens one.
var (
	tokens    chan *softhsm.Token
	tokensErr error
)

const nTokens = 32

func TestMain(m *testing.M) {
	flag.Parse()
	n := nTokens // per run of the tests: -count=N needs N times as many
	if c, err := strconv.Atoi(flag.Lookup("test.count").Value.String()); err == nil && c > 1 {
		n *= c
	}
	tokens = make(chan *softhsm.Token, n)
	if softhsm.FindModule() != "" {
		dir, err := os.MkdirTemp("", "palisade-ca-test-")
		if err != nil {
			panic(err)
		}
		first, err := softhsm.Create(dir, "ca-test-0")
		tokensErr = err
		if err == nil {
			tokens <- first
			for i := 1; i < n && tokensErr == nil; i++ {
				var tok *softhsm.Token
				if tok, tokensErr = first.Another("ca-test-" + strconv.Itoa(i)); tokensErr == nil {
					tokens <- tok
				}
			}
		}
		code := m.Run()
		os.RemoveAll(dir)
		os.Exit(code)
	}
	os.Exit(m.Run())
}

func takeToken(t testing.TB) *pkcs11.Token {
	t.Helper()
	if softhsm.FindModule() == "" {
		testenv.Missing(t, "SoftHSM2 (apt-get install softhsm2)")
	}
	if tokensErr != nil {
		t.Fatalf("softhsm tokens: %v", tokensErr)
	}
	var tok *softhsm.Token
	select {
	case tok = <-tokens:
	default:
		t.Fatalf("tests need more than %d SoftHSM tokens per run: raise nTokens", nTokens)
	}
	u, err := pkcs11.ParseURI(tok.TokenURI())
	if err != nil {
		t.Fatal(err)
	}
	p, err := pkcs11.Open(u)
	if err != nil {
		t.Fatalf("open token: %v", err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

type sink struct{ log *audit.Log }

func (s sink) Append(ctx context.Context, kind, actor string, data any) error {
	_, err := s.log.Append(ctx, kind, actor, data)
	return err
}

// clock is a settable time source for rotation tests.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Set(t time.Time) {
	c.mu.Lock()
	c.t = t
	c.mu.Unlock()
}

type fixture struct {
	cfg       ca.Config
	keys      *pkcs11.Token
	st        *store.Store
	log       *audit.Log
	auditPath string
	clock     *clock
	ca        *ca.CA
	root      *x509.Certificate
	issued    chan store.CertRecord
}

const td = "example.org"

func newFixture(t testing.TB, mutate func(*ca.Config)) *fixture {
	t.Helper()
	f := &fixture{cfg: ca.Config{TrustDomain: td}, clock: &clock{t: time.Now()}, issued: make(chan store.CertRecord, 1024)}
	if mutate != nil {
		mutate(&f.cfg)
	}
	f.keys = takeToken(t)
	dir := t.TempDir()
	var err error
	if f.st, err = store.Open(filepath.Join(dir, "palisade.db"), store.Options{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.st.Close() })
	f.auditPath = filepath.Join(dir, "audit.log")
	res, err := ca.Ceremony(context.Background(), f.cfg, f.keys, f.st, "operator:test",
		func(signer crypto.Signer, cert *x509.Certificate) (ca.Auditor, error) {
			l, err := audit.Open(f.auditPath, signer, audit.Options{SignerCert: cert, CheckpointEvery: 50})
			f.log = l
			return sink{l}, err
		}, f.clock.Now)
	if err != nil {
		t.Fatalf("ceremony: %v", err)
	}
	t.Cleanup(func() { f.log.Close() })
	f.root = res.Root
	f.ca = f.load(t)
	return f
}

// prepareNext moves the clock past the active generation's half-life (the
// fixture's 12 h intermediates) and rotates, which must prepare the next
// one. It returns the generation active before and the rotation.
func (f *fixture) prepareNext(t testing.TB) (first ca.Issuer, ev ca.RotationEvent) {
	t.Helper()
	first, err := f.ca.ActiveIssuer()
	if err != nil {
		t.Fatal(err)
	}
	f.clock.Set(first.Cert.NotBefore.Add(7 * time.Hour))
	if ev, err = f.ca.Rotate(context.Background()); err != nil || ev.Prepared == "" {
		t.Fatalf("prepare: %+v %v", ev, err)
	}
	return first, ev
}

func (f *fixture) load(t testing.TB) *ca.CA {
	t.Helper()
	c, err := ca.Load(f.cfg, ca.Options{
		Keys: f.keys, Store: f.st, Audit: sink{f.log}, Now: f.clock.Now,
		CRLURL:   func(kid string) string { return "http://127.0.0.1:8080/crl/" + kid + ".crl" },
		OCSPURL:  "http://127.0.0.1:8080/ocsp",
		OnIssued: func(r store.CertRecord) { f.issued <- r },
	})
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	return c
}

func (f *fixture) issue(t testing.TB, id string, ttl time.Duration) (*ca.X509SVID, error) {
	t.Helper()
	der, _ := testca.CSR(t, id)
	csr, err := ca.ParseCSR(der, f.ca.TrustDomain())
	if err != nil {
		t.Fatalf("ParseCSR: %v", err)
	}
	return f.ca.SignX509SVID(context.Background(), ca.X509Request{CSR: csr, TTL: ttl, Actor: "test"})
}

// verifyAudit checks the whole log against the root.
func (f *fixture) verifyAudit(t testing.TB) audit.Report {
	t.Helper()
	if _, err := f.log.Checkpoint(context.Background()); err != nil {
		t.Fatalf("checkpoint: %v", err)
	}
	fh, err := os.Open(f.auditPath)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	roots := x509.NewCertPool()
	roots.AddCert(f.root)
	rep, err := audit.Verify(fh, audit.VerifyOptions{Roots: roots})
	if err != nil {
		t.Fatalf("audit verify: %v %v", err, rep.Problems)
	}
	return rep
}

func TestCeremonyRefusesRerun(t *testing.T) {
	f := newFixture(t, nil)
	before, _ := f.st.CAMeta()
	seq, _ := f.log.Head()
	tests := []struct {
		name  string
		store *store.Store
	}{
		{"initialised-store", f.st},
		// The HSM already holds a root: an interrupted ceremony must not
		// create a second one beside it.
		{"fresh-store-same-hsm", func() *store.Store {
			st, err := store.Open(filepath.Join(t.TempDir(), "other.db"), store.Options{})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { st.Close() })
			return st
		}()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opened := false
			_, err := ca.Ceremony(context.Background(), f.cfg, f.keys, tt.store, "operator:test",
				func(crypto.Signer, *x509.Certificate) (ca.Auditor, error) { opened = true; return sink{f.log}, nil }, nil)
			if !errors.Is(err, ca.ErrAlreadyInitialized) {
				t.Fatalf("second ceremony: %v, want ErrAlreadyInitialized", err)
			}
			if opened {
				t.Fatal("refused ceremony opened an audit log")
			}
		})
	}
	after, _ := f.st.CAMeta()
	if string(after.RootCertDER) != string(before.RootCertDER) {
		t.Fatal("refused ceremony changed the root")
	}
	if s, _ := f.log.Head(); s != seq {
		t.Fatalf("refused ceremony appended to the audit log: %d → %d", seq, s)
	}
}

func TestCeremonyKeysStayInHSM(t *testing.T) {
	f := newFixture(t, nil)
	meta, err := f.st.CAMeta()
	if err != nil {
		t.Fatal(err)
	}
	for _, uri := range []string{meta.RootKeyURI, meta.AuditKeyURI} {
		u, err := pkcs11.ParseURI(uri)
		if err != nil {
			t.Fatalf("stored key URI %q: %v", uri, err)
		}
		if u.Object == "" {
			t.Fatalf("stored key URI %q names no object", uri)
		}
	}
	if !f.root.IsCA || f.root.NotAfter.Sub(f.root.NotBefore) < 9*365*24*time.Hour {
		t.Fatalf("root: CA=%v life=%s", f.root.IsCA, f.root.NotAfter.Sub(f.root.NotBefore))
	}
	is, err := f.ca.ActiveIssuer()
	if err != nil {
		t.Fatal(err)
	}
	if err := is.Cert.CheckSignatureFrom(f.root); err != nil {
		t.Fatalf("intermediate not signed by root: %v", err)
	}
	if len(is.Cert.PermittedURIDomains) != 1 || is.Cert.PermittedURIDomains[0] != td {
		t.Fatalf("intermediate URI name constraint = %v", is.Cert.PermittedURIDomains)
	}
	if !is.Cert.MaxPathLenZero {
		t.Fatal("intermediate may sign further CAs")
	}
	rep := f.verifyAudit(t)
	if rep.Records < 1 {
		t.Fatal("ceremony not audited")
	}
	raw, _ := os.ReadFile(f.auditPath)
	if !strings.Contains(string(raw), `"keys_sealed_in_hsm":true`) {
		t.Fatal("ceremony record lacks the HSM's proof that the keys are sealed")
	}
}

func TestX509SVIDConformance(t *testing.T) {
	f := newFixture(t, nil)
	const id = "spiffe://example.org/ns/prod/sa/web"
	start := f.clock.Now()
	svid, err := f.issue(t, id, 0)
	if err != nil {
		t.Fatal(err)
	}
	leaf := svid.Certificates[0]
	checks := []struct {
		name string
		ok   bool
		got  any
	}{
		{"one-uri-san", len(leaf.URIs) == 1 && leaf.URIs[0].String() == id, leaf.URIs},
		{"not-ca", leaf.BasicConstraintsValid && !leaf.IsCA, leaf.IsCA},
		{"key-usage-digital-signature-only", leaf.KeyUsage == x509.KeyUsageDigitalSignature, leaf.KeyUsage},
		{"eku-server-and-client", len(leaf.ExtKeyUsage) == 2 && leaf.ExtKeyUsage[0] == x509.ExtKeyUsageServerAuth && leaf.ExtKeyUsage[1] == x509.ExtKeyUsageClientAuth, leaf.ExtKeyUsage},
		{"serial-128-random-bits", leaf.SerialNumber.BitLen() == 129, leaf.SerialNumber.BitLen()},
		{"default-ttl-1h", (leaf.NotAfter.Sub(start) - time.Hour).Abs() < time.Second, leaf.NotAfter.Sub(start)}, // X.509 time has second precision
		{"crl-distribution-point", len(leaf.CRLDistributionPoints) == 1, leaf.CRLDistributionPoints},
		{"ocsp-aia", len(leaf.OCSPServer) == 1 && leaf.OCSPServer[0] == "http://127.0.0.1:8080/ocsp", leaf.OCSPServer},
		{"chain-is-leaf-then-intermediate", len(svid.Certificates) == 2 && svid.Certificates[1].IsCA, len(svid.Certificates)},
	}
	for _, c := range checks {
		t.Run(c.name, func(t *testing.T) {
			if !c.ok {
				t.Fatalf("got %v", c.got)
			}
		})
	}
	rec, err := f.st.Cert(leaf.SerialNumber)
	if err != nil {
		t.Fatalf("issued serial not in store: %v", err)
	}
	if rec.SPIFFEID != id || rec.Status != store.CertValid || !rec.NotAfter.Equal(leaf.NotAfter.UTC()) && !rec.NotAfter.Equal(leaf.NotAfter) {
		t.Fatalf("store record %+v", rec)
	}
	select {
	case r := <-f.issued:
		if r.Serial.Cmp(leaf.SerialNumber) != 0 {
			t.Fatal("OnIssued saw another serial")
		}
	default:
		t.Fatal("OnIssued not called")
	}
	f.verifyAudit(t)
}

func TestSerialsUniqueUnderConcurrency(t *testing.T) {
	f := newFixture(t, nil)
	const workers, each = 8, 25
	var mu sync.Mutex
	seen := map[string]bool{}
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < each; i++ {
				svid, err := f.issue(t, fmt.Sprintf("spiffe://example.org/w%d/%d", w, i), time.Minute)
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				seen[svid.Certificates[0].SerialNumber.String()] = true
				mu.Unlock()
			}
		}(w)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if len(seen) != workers*each {
		t.Fatalf("%d distinct serials for %d issuances", len(seen), workers*each)
	}
	st, err := f.st.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.Certs < workers*each {
		t.Fatalf("store holds %d certs, want ≥ %d", st.Certs, workers*each)
	}
	rep := f.verifyAudit(t)
	if rep.Records < workers*each {
		t.Fatalf("audit holds %d records, want ≥ %d", rep.Records, workers*each)
	}
}

func TestSignX509SVIDRefusals(t *testing.T) {
	f := newFixture(t, nil)
	der, _ := testca.CSR(t, "spiffe://example.org/web")
	csr, err := ca.ParseCSR(der, f.ca.TrustDomain())
	if err != nil {
		t.Fatal(err)
	}
	other, _ := ca.ParseCSR(func() []byte { d, _ := testca.CSR(t, "spiffe://example.org/db"); return d }(), f.ca.TrustDomain())
	statsBefore, _ := f.st.Stats()
	seqBefore, _ := f.log.Head()
	tests := []struct {
		name string
		req  ca.X509Request
		want error
	}{
		{"ttl-over-cap", ca.X509Request{CSR: csr, TTL: 25 * time.Hour}, ca.ErrTTLTooLong},
		{"negative-ttl", ca.X509Request{CSR: csr, TTL: -time.Second}, ca.ErrBadTTL},
		{"id-not-authorised", ca.X509Request{CSR: other, ID: csr.ID}, ca.ErrIDMismatch},
		{"no-csr", ca.X509Request{}, ca.ErrMalformedCSR},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := f.ca.SignX509SVID(context.Background(), tt.req)
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
		})
	}
	statsAfter, _ := f.st.Stats()
	seqAfter, _ := f.log.Head()
	if statsAfter.Certs != statsBefore.Certs || seqAfter != seqBefore {
		t.Fatalf("refused requests changed state: certs %d→%d, audit %d→%d", statsBefore.Certs, statsAfter.Certs, seqBefore, seqAfter)
	}
}

func TestSVIDNeverOutlivesIssuer(t *testing.T) {
	f := newFixture(t, func(c *ca.Config) {
		c.IntermediateTTL = 12 * time.Hour
		c.X509SVIDTTL = time.Hour
		c.MaxX509SVIDTTL = 24 * time.Hour
	})
	is, _ := f.ca.ActiveIssuer()
	f.clock.Set(is.Cert.NotAfter.Add(-10 * time.Minute))
	svid, err := f.issue(t, "spiffe://example.org/late", 2*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if got := svid.Certificates[0].NotAfter; !got.Equal(is.Cert.NotAfter) {
		t.Fatalf("NotAfter = %s, issuer expires %s", got, is.Cert.NotAfter)
	}
}

func TestLoadRefusesMismatch(t *testing.T) {
	f := newFixture(t, nil)
	cfg := f.cfg
	cfg.TrustDomain = "other.org"
	_, err := ca.Load(cfg, ca.Options{Keys: f.keys, Store: f.st, Audit: sink{f.log}})
	if err == nil {
		t.Fatal("Load accepted a store of another trust domain")
	}
	empty, err := store.Open(filepath.Join(t.TempDir(), "empty.db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer empty.Close()
	if _, err := ca.Load(f.cfg, ca.Options{Keys: f.keys, Store: empty, Audit: sink{f.log}}); !errors.Is(err, ca.ErrNotInitialized) {
		t.Fatalf("Load on empty store: %v, want ErrNotInitialized", err)
	}
}

// leakyKeys claims its keys could leave the device.
type leakyKeys struct{ *memkeys.Store }

func (leakyKeys) Sealed(string) (bool, error) { return false, nil }

func TestCeremonyRefusesExtractableKeys(t *testing.T) {
	st, err := store.Open(filepath.Join(t.TempDir(), "p.db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	opened := false
	_, err = ca.Ceremony(context.Background(), ca.Config{TrustDomain: td}, leakyKeys{memkeys.New()}, st, "test",
		func(crypto.Signer, *x509.Certificate) (ca.Auditor, error) { opened = true; return nil, nil }, nil)
	if !errors.Is(err, ca.ErrKeyNotSealed) {
		t.Fatalf("ceremony with extractable keys: %v", err)
	}
	if _, err := st.CAMeta(); !errors.Is(err, store.ErrNotInitialized) || opened {
		t.Fatalf("refused ceremony initialised the store (%v) or opened the audit log (%v)", err, opened)
	}
}

func TestCACertSerialsRecorded(t *testing.T) {
	f := newFixture(t, func(c *ca.Config) { c.IntermediateTTL = 12 * time.Hour })
	f.prepareNext(t)
	meta, _ := f.st.CAMeta()
	auditCert, err := x509.ParseCertificate(meta.AuditCertDER)
	if err != nil {
		t.Fatal(err)
	}
	rootKID := hexKID(f.root)
	want := []struct {
		name string
		cert *x509.Certificate
		kind string
	}{
		{"root", f.root, store.KindRoot},
		{"audit", auditCert, store.KindAuditSigner},
	}
	for _, is := range f.ca.Issuers() {
		want = append(want, struct {
			name string
			cert *x509.Certificate
			kind string
		}{"intermediate " + is.KeyID, is.Cert, store.KindIntermediate})
	}
	if len(want) != 4 {
		t.Fatalf("%d certificates, want root, audit and two intermediates", len(want))
	}
	for _, w := range want {
		if w.cert.SerialNumber.BitLen() != 129 {
			t.Errorf("%s: serial of %d bits, want 128 random bits behind 0x01", w.name, w.cert.SerialNumber.BitLen())
		}
		r, err := f.st.Cert(w.cert.SerialNumber)
		if err != nil {
			t.Errorf("%s: serial not recorded: %v", w.name, err)
			continue
		}
		if r.Kind != w.kind || r.IssuerKeyID != rootKID || !r.NotAfter.Equal(w.cert.NotAfter) {
			t.Errorf("%s: record %+v", w.name, r)
		}
	}
	st, err := f.st.Stats()
	if err != nil || st.CACerts != 4 || st.Certs != 0 {
		t.Fatalf("Stats = %+v, %v; want 4 CA certificates, 0 issued", st, err)
	}
}
