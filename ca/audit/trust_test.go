package audit

import (
	"crypto"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// memAnchor is an AnchorStore in memory; fail makes writes fail.
type memAnchor struct {
	mu     sync.Mutex
	val    []byte
	writes int
	fail   error
}

func (m *memAnchor) LoadAnchor() ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.val, nil
}

func (m *memAnchor) StoreAnchor(v []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fail != nil {
		return m.fail
	}
	m.val = append([]byte(nil), v...)
	m.writes++
	return nil
}

// setFail makes later updates fail with err (nil: succeed); the log's
// writer goroutine reads it concurrently.
func (m *memAnchor) setFail(err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.fail = err
}

func (m *memAnchor) get(t *testing.T) *Anchor {
	t.Helper()
	a, err := LoadAnchor(m)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// forge rewrites a log the way someone without the checkpoint key would:
// record 1's actor changed, every later hash recomputed, every checkpoint
// re-signed with key (certified by cert, if not nil).
func forge(t *testing.T, lines []string, key crypto.Signer, cert *x509.Certificate) []string {
	t.Helper()
	cp, err := newCPSigner(key, cert)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]string, len(lines))
	prev := GenesisPrev
	for i, l := range lines {
		w := mustParse(t, l)
		if i == 0 {
			w.Actor = "operator:uid=4242"
		}
		w.Prev = prev
		if w.Kind == KindCheckpoint {
			w.Data = cp.data
			rehash(w)
			if w.Sig, err = cp.sign(rand.Reader, w.Seq, w.Hash); err != nil {
				t.Fatal(err)
			}
			w.Cert = cp.cert
		} else {
			rehash(w)
		}
		prev = w.Hash
		out[i] = encode(w)
	}
	return out
}

func writeLines(t *testing.T, lines []string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "audit.log")
	if err := os.WriteFile(p, joinLines(lines), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestOpenRefusesForeignCheckpointKeys: Open accepts checkpoints by its own
// key or certified under Options.Roots, nothing else, and says which record.
func TestOpenRefusesForeignCheckpointKeys(t *testing.T) {
	ca := newTestCA(t)
	roots := ca.roots
	hsmKey := newKey(t, elliptic.P256())
	hsmCert := ca.issue(t, hsmKey)
	genuine := readLines(t, writeLog(t, hsmKey, 9, Options{CheckpointEvery: 4, SignerCert: hsmCert}))
	forgerKey := newKey(t, elliptic.P256())
	_, forgerCert := newChain(t, forgerKey) // the forger's own root, as a forged bundle.pem would hold
	otherRoots, _ := newChain(t, newKey(t, elliptic.P256()))

	nextKey := newKey(t, elliptic.P256()) // a later audit key certified by the same root
	nextCert := ca.issue(t, nextKey)

	tests := []struct {
		name    string
		lines   []string
		key     crypto.Signer
		opts    Options
		wantSeq string // "" when Open must succeed
	}{
		{"untouched", genuine, hsmKey, Options{SignerCert: hsmCert, Roots: roots}, ""},
		{"forged with a certified software key", forge(t, genuine, forgerKey, forgerCert), hsmKey, Options{SignerCert: hsmCert, Roots: roots}, "seq 5:"},
		{"forged without a certificate", forge(t, genuine, forgerKey, nil), hsmKey, Options{SignerCert: hsmCert, Roots: roots}, "seq 5:"},
		{"forged, no roots given", forge(t, genuine, forgerKey, forgerCert), hsmKey, Options{SignerCert: hsmCert}, "seq 5:"},
		{"later audit key, same root", genuine, nextKey, Options{SignerCert: nextCert, Roots: roots}, ""},
		{"later audit key, no roots", genuine, nextKey, Options{SignerCert: nextCert}, "seq 5:"},
		{"later audit key, other roots", genuine, nextKey, Options{SignerCert: nextCert, Roots: otherRoots}, "seq 5:"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := writeLines(t, tc.lines)
			before, _ := os.ReadFile(p)
			l, err := Open(p, tc.key, tc.opts)
			if tc.wantSeq == "" {
				if err != nil {
					t.Fatal(err)
				}
				appendN(t, l, 2)
				if err := l.Close(); err != nil {
					t.Fatal(err)
				}
				b, _ := os.ReadFile(p)
				if rep, err := verifyBytes(b, VerifyOptions{Roots: roots, RequireCheckpointAtEnd: true}); err != nil {
					t.Fatalf("reopened log: %v\n%s", err, problemList(rep.Problems))
				}
				return
			}
			if err == nil {
				l.Close()
				t.Fatal("Open accepted checkpoints by a key it cannot tie to its own or the roots")
			}
			if !errors.Is(err, ErrTampered) || !strings.Contains(err.Error(), tc.wantSeq) || !strings.Contains(err.Error(), "untrusted key") {
				t.Fatalf("error %q: want ErrTampered naming %q and the untrusted key", err, tc.wantSeq)
			}
			if after, _ := os.ReadFile(p); string(after) != string(before) {
				t.Fatal("refusing Open changed the file")
			}
		})
	}
}

// testCA issues checkpoint certificates under one root.
type testCA struct {
	root  *x509.Certificate
	key   crypto.Signer
	roots *x509.CertPool
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key := newKey(t, elliptic.P256())
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "audit test root"},
		NotBefore: time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC), NotAfter: time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	root, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(root)
	return &testCA{root: root, key: key, roots: pool}
}

func (ca *testCA) issue(t *testing.T, key crypto.Signer) *x509.Certificate {
	t.Helper()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: "audit checkpoint"},
		NotBefore: ca.root.NotBefore, NotAfter: ca.root.NotAfter, KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.root, key.Public(), ca.key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c
}
