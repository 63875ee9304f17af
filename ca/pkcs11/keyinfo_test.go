package pkcs11

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/palisade-id/palisade/test/testenv"
)

func TestKeyAttributes(t *testing.T) {
	tok := openToken(t)
	s, label := newSigner(t, tok, "ceremony")
	a, err := tok.KeyAttributes(label)
	if err != nil {
		t.Fatal(err)
	}
	if !a.Sealed() || !a.Sensitive || !a.AlwaysSensitive || a.Extractable || !a.NeverExtractable || !a.Local {
		t.Errorf("generated key attributes %+v, want sealed", a)
	}
	if !s.Public().(*ecdsa.PublicKey).Equal(a.Public) || a.URI != tok.KeyURI(label) || len(a.ID) != 16 {
		t.Errorf("KeyAttributes = %+v", a)
	}
	if _, err := tok.KeyAttributes("no-such-key"); !errors.Is(err, ErrKeyNotFound) {
		t.Errorf("KeyAttributes of a missing key: %v", err)
	}

	// A key imported from outside is usable but not sealed, and
	// KeyAttributes says so.
	testenv.Require(t, "pkcs11-tool")
	imported := uniqueLabel("imported")
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	privDER, _ := x509.MarshalPKCS8PrivateKey(k)
	pubDER, _ := x509.MarshalPKIXPublicKey(&k.PublicKey)
	os.WriteFile(filepath.Join(dir, "priv.der"), privDER, 0o600)
	os.WriteFile(filepath.Join(dir, "pub.der"), pubDER, 0o600)
	for _, obj := range []struct{ file, typ string }{{"priv.der", "privkey"}, {"pub.der", "pubkey"}} {
		out, err := exec.Command("pkcs11-tool", "--module", hsm.Module, "--token-label", hsm.Label, "--login", "--pin", hsm.PIN,
			"--write-object", filepath.Join(dir, obj.file), "--type", obj.typ, "--id", "c0ffee", "--label", imported).CombinedOutput()
		if err != nil {
			t.Fatalf("pkcs11-tool --write-object %s: %v: %s", obj.typ, err, out)
		}
	}
	ia, err := tok.KeyAttributes(imported)
	if err != nil {
		t.Fatal(err)
	}
	if ia.Sealed() || ia.Local || ia.AlwaysSensitive || ia.NeverExtractable {
		t.Errorf("imported key attributes %+v, want not sealed", ia)
	}
	if !k.PublicKey.Equal(ia.Public) {
		t.Error("imported key: wrong public key")
	}
}

// TestSupervise: the supervisor notices a vanished token (woken by the
// failing Sign), reports it, and reopens once the token returns.
func TestSupervise(t *testing.T) {
	tok := openToken(t)
	s, _ := newSigner(t, tok, "supervised")
	var mu sync.Mutex
	var reports []error
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		tok.Supervise(ctx, 20*time.Millisecond, func(err error) {
			mu.Lock()
			defer mu.Unlock()
			reports = append(reports, err)
		})
	}()
	t.Cleanup(func() { cancel(); <-done })

	restore := hideToken(t)
	d := sha256.Sum256([]byte("supervise"))
	if _, err := s.Sign(nil, d[:], crypto.SHA256); !errors.Is(err, ErrHSMUnavailable) {
		t.Fatalf("Sign with the token gone: %v", err)
	}
	waitFor(t, "an outage report", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(reports) > 0 && reports[0] != nil
	})
	restore()
	waitFor(t, "recovery", func() bool {
		_, err := s.Sign(nil, d[:], crypto.SHA256)
		return err == nil
	})
	waitFor(t, "a recovery report", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(reports) >= 2 && reports[len(reports)-1] == nil
	})
}

// waitFor polls cond; the generous limit only bounds a hang.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
