package audit

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func newKey(t testing.TB, c elliptic.Curve) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(c, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// newChain returns a root pool and a certificate for key issued by that root.
func newChain(t testing.TB, key crypto.Signer) (*x509.CertPool, *x509.Certificate) {
	t.Helper()
	rootKey := newKey(t, elliptic.P256())
	// Wide validity: records carry the fixed test clock's time.
	from, to := time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC)
	rootTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "audit test root"},
		NotBefore: from, NotAfter: to, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	rootDER, err := x509.CreateCertificate(rand.Reader, rootTmpl, rootTmpl, rootKey.Public(), rootKey)
	if err != nil {
		t.Fatal(err)
	}
	root, _ := x509.ParseCertificate(rootDER)
	leafTmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "audit checkpoint"},
		NotBefore: from, NotAfter: to, KeyUsage: x509.KeyUsageDigitalSignature}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, root, key.Public(), rootKey)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(leafDER)
	pool := x509.NewCertPool()
	pool.AddCert(root)
	return pool, leaf
}

// fixedClock advances one millisecond per call so records differ in time.
func fixedClock() func() time.Time {
	t0 := time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)
	n := 0
	return func() time.Time { n++; return t0.Add(time.Duration(n) * time.Millisecond) }
}

// writeLog creates a closed log of n appended records (plus checkpoints).
func writeLog(t testing.TB, key crypto.Signer, n int, opts Options) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "audit.log")
	if opts.Now == nil {
		opts.Now = fixedClock()
	}
	l, err := Open(path, key, opts)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < n; i++ {
		if _, err := l.Append(context.Background(), "entry.created", "operator:uid=0", map[string]any{"i": i, "id": "spiffe://example.org/w"}); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

func readLines(t testing.TB, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.SplitAfter(string(b), "\n")[:strings.Count(string(b), "\n")]
}

func joinLines(lines []string) []byte { return []byte(strings.Join(lines, "")) }

func mustParse(t testing.TB, line string) *wire {
	t.Helper()
	w, err := parseLine([]byte(strings.TrimSuffix(line, "\n")))
	if err != nil {
		t.Fatal(err)
	}
	return w
}

func encode(w *wire) string { return string(appendLine(nil, w)) }

// rehash recomputes w's hash after an edit (what an attacker would do).
func rehash(w *wire) { w.Hash = hashRecord(w.Seq, w.Time, w.Kind, w.Actor, w.Data, w.Prev) }

func verifyBytes(b []byte, opts VerifyOptions) (Report, error) {
	return Verify(bytes.NewReader(b), opts)
}
