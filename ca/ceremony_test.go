package ca_test

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/palisade-id/palisade/ca"
	"github.com/palisade-id/palisade/ca/audit"
	"github.com/palisade-id/palisade/ca/keystore/memkeys"
	"github.com/palisade-id/palisade/ca/pkcs11"
	"github.com/palisade-id/palisade/ca/store"
	"github.com/palisade-id/palisade/test/memca"
	"github.com/palisade-id/palisade/test/testenv"
)

func openCeremonyStore(t *testing.T) *store.Store {
	t.Helper()
	st, err := store.Open(filepath.Join(t.TempDir(), "palisade.db"), store.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// failingAudit is an audit sink that refuses every append with err.
func failingAudit(err error) *memca.Recorder {
	a := &memca.Recorder{}
	a.Fail(err)
	return a
}

func auditTo(a ca.Auditor) func(crypto.Signer, *x509.Certificate) (ca.Auditor, error) {
	return func(crypto.Signer, *x509.Certificate) (ca.Auditor, error) { return a, nil }
}

// X509-SVID Appendix A: signing certificates carry keyCertSign (and may
// carry cRLSign), never digitalSignature, which marks a leaf.
func TestCACertificatesKeyUsage(t *testing.T) {
	const want = x509.KeyUsageCertSign | x509.KeyUsageCRLSign
	keys, st, clk := memkeys.New(), openCeremonyStore(t), &clock{t: time.Now()}
	cfg := ca.Config{TrustDomain: td, IntermediateTTL: 12 * time.Hour, X509SVIDTTL: time.Hour}
	res, err := ca.Ceremony(context.Background(), cfg, keys, st, "test", auditTo(&memca.Recorder{}), clk.Now)
	if err != nil {
		t.Fatal(err)
	}
	c, err := ca.Load(cfg, ca.Options{Keys: keys, Store: st, Audit: &memca.Recorder{}, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	// A rotated generation is made like the ceremony's.
	clk.Set(res.Intermediate.NotBefore.Add(7 * time.Hour))
	if ev, err := c.Rotate(context.Background()); err != nil || ev.Prepared == "" {
		t.Fatalf("rotate: %+v %v", ev, err)
	}
	certs := []*x509.Certificate{res.Root}
	for _, is := range c.Issuers() {
		certs = append(certs, is.Cert)
	}
	if len(certs) != 3 {
		t.Fatalf("%d CA certificates, want the root and two intermediates", len(certs))
	}
	for _, cert := range certs {
		if cert.KeyUsage != want {
			t.Errorf("%s: keyUsage %#b, want exactly keyCertSign|cRLSign (%#b)", cert.Subject.CommonName, cert.KeyUsage, want)
		}
	}

	testenv.Require(t, "openssl")
	pemPath := filepath.Join(t.TempDir(), "inter.pem")
	if err := os.WriteFile(pemPath, ca.CertsPEM([]*x509.Certificate{res.Intermediate}), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("openssl", "x509", "-in", pemPath, "-noout", "-ext", "keyUsage").CombinedOutput()
	if err != nil {
		t.Fatalf("openssl x509: %v\n%s", err, out)
	}
	if s := string(out); !strings.Contains(s, "Certificate Sign, CRL Sign") || strings.Contains(s, "Digital Signature") {
		t.Fatalf("openssl reads the intermediate's keyUsage as:\n%s", s)
	}
}

// sealProbe is a memkeys store that says which keys are sealed and counts
// generations.
type sealProbe struct {
	*memkeys.Store
	unsealed  func(label string) bool
	generated []string
}

func (k *sealProbe) GenerateSigner(label string) (crypto.Signer, error) {
	k.generated = append(k.generated, label)
	return k.Store.GenerateSigner(label)
}

func (k *sealProbe) Sealed(label string) (bool, error) { return !k.unsealed(label), nil }

func never(string) bool { return false }

func TestRefusedCeremonyLeavesKeysAsFound(t *testing.T) {
	errAuditOpen := errors.New("audit log already exists")
	for _, tt := range []struct {
		name      string
		unsealed  func(string) bool
		auditErr  error
		want      error
		generated int // keys generated before the refusal
	}{
		// Each key is checked as soon as it exists: an unsealed root stops
		// the ceremony before any other key is made.
		{"unsealed-root", func(l string) bool { return l == ca.RootKeyLabel }, nil, ca.ErrKeyNotSealed, 1},
		{"unsealed-jwt", func(l string) bool { return strings.HasPrefix(l, "palisade-jwt-") }, nil, ca.ErrKeyNotSealed, 4},
		{"audit-open-fails", never, errAuditOpen, errAuditOpen, 4},
	} {
		t.Run(tt.name, func(t *testing.T) {
			mem := memkeys.New()
			// A key the ceremony did not make must survive its failure.
			foreign, err := mem.GenerateSigner("operator-key")
			if err != nil {
				t.Fatal(err)
			}
			keys := &sealProbe{Store: mem, unsealed: tt.unsealed}
			st := openCeremonyStore(t)
			at := time.Now()
			now := func() time.Time { return at }
			_, err = ca.Ceremony(context.Background(), ca.Config{TrustDomain: td}, keys, st, "test",
				func(crypto.Signer, *x509.Certificate) (ca.Auditor, error) {
					if tt.auditErr != nil {
						return nil, tt.auditErr
					}
					return &memca.Recorder{}, nil
				}, now)
			if !errors.Is(err, tt.want) {
				t.Fatalf("ceremony: %v, want %v", err, tt.want)
			}
			if len(keys.generated) != tt.generated {
				t.Fatalf("generated %v before refusing, want %d keys", keys.generated, tt.generated)
			}
			if _, err := mem.Signer(ca.RootKeyLabel); !errors.Is(err, memkeys.ErrKeyNotFound) {
				t.Fatalf("root key after the refused ceremony: %v, want ErrKeyNotFound", err)
			}
			if labels := mem.Labels(); len(labels) != 1 || labels[0] != "operator-key" {
				t.Fatalf("keys after the refused ceremony: %v, want only operator-key", labels)
			}
			if s, err := mem.Signer("operator-key"); err != nil || !foreign.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(s.Public()) {
				t.Fatalf("the refused ceremony touched a key it did not create: %v", err)
			}
			if _, err := st.CAMeta(); !errors.Is(err, store.ErrNotInitialized) {
				t.Fatalf("refused ceremony initialised the store: %v", err)
			}
			// The same labels again (same clock): nothing is in the way.
			if _, err := ca.Ceremony(context.Background(), ca.Config{TrustDomain: td}, mem, st, "test",
				auditTo(&memca.Recorder{}), now); err != nil {
				t.Fatalf("retry after the fault was removed: %v", err)
			}
		})
	}
}

// undeletable cannot destroy keys.
type undeletable struct{ *sealProbe }

var errNoDelete = errors.New("token refuses C_DestroyObject")

func (undeletable) DeleteKey(string, crypto.PublicKey) error { return errNoDelete }

func TestCeremonyReportsKeysItCouldNotDestroy(t *testing.T) {
	keys := undeletable{&sealProbe{Store: memkeys.New(), unsealed: func(l string) bool { return l == ca.AuditKeyLabel }}}
	_, err := ca.Ceremony(context.Background(), ca.Config{TrustDomain: td}, keys, openCeremonyStore(t), "test",
		auditTo(&memca.Recorder{}), nil)
	if !errors.Is(err, ca.ErrKeyNotSealed) || !errors.Is(err, ca.ErrKeysLeftBehind) || !errors.Is(err, errNoDelete) {
		t.Fatalf("ceremony: %v; want the refusal and ErrKeysLeftBehind", err)
	}
	for _, l := range []string{ca.RootKeyLabel, ca.AuditKeyLabel} {
		if !strings.Contains(err.Error(), l) {
			t.Errorf("error does not name the key left behind, %s: %v", l, err)
		}
	}
}

// Once the store records the CA it names the keys: a later failure (the
// ceremony's own audit record) must not take them.
func TestCeremonyKeepsKeysOnceRecorded(t *testing.T) {
	keys, st := memkeys.New(), openCeremonyStore(t)
	errDisk := errors.New("audit disk full")
	_, err := ca.Ceremony(context.Background(), ca.Config{TrustDomain: td}, keys, st, "test",
		auditTo(failingAudit(errDisk)), nil)
	if !errors.Is(err, errDisk) {
		t.Fatalf("ceremony: %v, want %v", err, errDisk)
	}
	if _, err := ca.Load(ca.Config{TrustDomain: td}, ca.Options{Keys: keys, Store: st, Audit: &memca.Recorder{}}); err != nil {
		t.Fatalf("Load after a failure past the commit point: %v", err)
	}
}

// sealOverride reports the keys matching unsealed as extractable and asks
// the token about the rest; it records what the ceremony generated.
type sealOverride struct {
	*pkcs11.Token
	unsealed  func(label string) bool
	generated []string
}

func (k *sealOverride) GenerateSigner(label string) (crypto.Signer, error) {
	k.generated = append(k.generated, label)
	return k.Token.GenerateSigner(label)
}

func (k *sealOverride) Sealed(label string) (bool, error) {
	if k.unsealed(label) {
		return false, nil
	}
	return k.Token.Sealed(label)
}

// The README promises a refused ceremony changes nothing: against SoftHSM2,
// after each refusal the token holds none of the ceremony's keys, and a
// retry on the same token with the fault gone succeeds.
func TestRefusedCeremonyLeavesTokenClean(t *testing.T) {
	tok := takeToken(t)
	st := openCeremonyStore(t)
	at := time.Now()
	now := func() time.Time { return at } // the same intermediate labels every time
	auditPath := filepath.Join(t.TempDir(), "audit.log")
	var log *audit.Log
	openLog := func(signer crypto.Signer, cert *x509.Certificate) (ca.Auditor, error) {
		// As the appliance does: never append to an old log.
		if _, err := os.Stat(auditPath); err == nil {
			return nil, errors.New("audit log " + auditPath + " already exists")
		}
		l, err := audit.Open(auditPath, signer, audit.Options{SignerCert: cert})
		log = l
		return sink{l}, err
	}
	clean := func(t *testing.T, generated []string) {
		t.Helper()
		if len(generated) == 0 {
			t.Fatal("the ceremony generated nothing")
		}
		for _, l := range generated {
			if _, err := tok.Signer(l); !errors.Is(err, pkcs11.ErrKeyNotFound) {
				t.Errorf("key %s after the refused ceremony: %v, want ErrKeyNotFound", l, err)
			}
		}
		if _, err := st.CAMeta(); !errors.Is(err, store.ErrNotInitialized) {
			t.Fatalf("refused ceremony initialised the store: %v", err)
		}
	}

	t.Run("unsealed-key", func(t *testing.T) {
		keys := &sealOverride{Token: tok, unsealed: func(l string) bool { return strings.HasPrefix(l, "palisade-jwt-") }}
		_, err := ca.Ceremony(context.Background(), ca.Config{TrustDomain: td}, keys, st, "test", openLog, now)
		if !errors.Is(err, ca.ErrKeyNotSealed) {
			t.Fatalf("ceremony: %v, want ErrKeyNotSealed", err)
		}
		clean(t, keys.generated)
	})
	t.Run("audit-log-exists", func(t *testing.T) {
		if err := os.WriteFile(auditPath, []byte("an old log\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		keys := &sealOverride{Token: tok, unsealed: never}
		if _, err := ca.Ceremony(context.Background(), ca.Config{TrustDomain: td}, keys, st, "test", openLog, now); err == nil {
			t.Fatal("ceremony opened an existing audit log")
		}
		clean(t, keys.generated)
	})
	if t.Failed() {
		return
	}
	if err := os.Remove(auditPath); err != nil {
		t.Fatal(err)
	}
	if _, err := ca.Ceremony(context.Background(), ca.Config{TrustDomain: td}, tok, st, "test", openLog, now); err != nil {
		t.Fatalf("retry after the faults were removed: %v", err)
	}
	defer log.Close()
	if _, err := ca.Load(ca.Config{TrustDomain: td}, ca.Options{Keys: tok, Store: st, Audit: sink{log}, Now: now}); err != nil {
		t.Fatal(err)
	}
}

// failingInit refuses the first InitCA, as a full disk would; with
// afterWrite, once the record is written (a failed final fdatasync).
type failingInit struct {
	*store.Store
	err        error
	afterWrite bool
}

func (s *failingInit) InitCA(m store.CAMeta, first store.Intermediate) error {
	err := s.err
	if err == nil || s.afterWrite {
		if werr := s.Store.InitCA(m, first); werr != nil {
			return werr
		}
	}
	s.err = nil
	return err
}

// A commit reported failed but readable in the store names the keys: the
// ceremony fails and keeps them, and the CA loads.
func TestCeremonyCommitErrorAfterWriteKeepsKeys(t *testing.T) {
	keys := memkeys.New()
	errSync := errors.New("fdatasync: input/output error")
	st := &failingInit{Store: openCeremonyStore(t), err: errSync, afterWrite: true}
	if _, err := ca.Ceremony(context.Background(), ca.Config{TrustDomain: td}, keys, st, "test", auditTo(&memca.Recorder{}), nil); !errors.Is(err, errSync) {
		t.Fatalf("ceremony: %v, want %v", err, errSync)
	}
	if _, err := keys.Signer(ca.RootKeyLabel); err != nil {
		t.Fatalf("root key after a commit the store holds: %v", err)
	}
	if _, err := ca.Load(ca.Config{TrustDomain: td}, ca.Options{Keys: keys, Store: st, Audit: &memca.Recorder{}}); err != nil {
		t.Fatalf("Load: %v", err)
	}
}

// A ceremony whose commit fails leaves the store as it found it: the retry
// on the same store and token succeeds.
func TestCeremonyCommitFailureLeavesStoreAsFound(t *testing.T) {
	keys := memkeys.New()
	errDisk := errors.New("no space left on device")
	st := &failingInit{Store: openCeremonyStore(t), err: errDisk}
	if _, err := ca.Ceremony(context.Background(), ca.Config{TrustDomain: td}, keys, st, "test", auditTo(&memca.Recorder{}), nil); !errors.Is(err, errDisk) {
		t.Fatalf("ceremony: %v, want %v", err, errDisk)
	}
	if inters, err := st.Intermediates(); err != nil || len(inters) != 0 {
		t.Fatalf("failed ceremony left intermediates %+v (%v)", inters, err)
	}
	if _, err := ca.Ceremony(context.Background(), ca.Config{TrustDomain: td}, keys, st, "test", auditTo(&memca.Recorder{}), nil); err != nil {
		t.Fatalf("retry on the same store: %v", err)
	}
	if _, err := ca.Load(ca.Config{TrustDomain: td}, ca.Options{Keys: keys, Store: st, Audit: &memca.Recorder{}}); err != nil {
		t.Fatal(err)
	}
}

// Rotation checks new keys as the ceremony does, and a generation it
// cannot finish leaves no key behind.
func TestRotationRefusesUnsealedKeys(t *testing.T) {
	mem := memkeys.New()
	keys := &sealProbe{Store: mem, unsealed: never}
	st := openCeremonyStore(t)
	c, at := rotatingCA(t, keys, st, &memca.Recorder{})
	before := mem.Labels()
	slices.Sort(before)
	*at = at.Add(7 * time.Hour) // past half-life: the next generation is due
	keys.unsealed = func(l string) bool { return strings.HasPrefix(l, "palisade-jwt-") }
	if _, err := c.Rotate(context.Background()); !errors.Is(err, ca.ErrKeyNotSealed) {
		t.Fatalf("Rotate: %v, want ErrKeyNotSealed", err)
	}
	if got := mem.Labels(); !slices.Equal(slices.Sorted(slices.Values(got)), before) {
		t.Fatalf("keys after the refused rotation: %v, want %v", got, before)
	}
	if inters, _ := st.Intermediates(); len(inters) != 1 {
		t.Fatalf("refused rotation stored %d intermediates", len(inters))
	}
	keys.unsealed = never
	ev, err := c.Rotate(context.Background())
	if err != nil || ev.Prepared == "" {
		t.Fatalf("Rotate after the fault was removed: %+v %v", ev, err)
	}
}
