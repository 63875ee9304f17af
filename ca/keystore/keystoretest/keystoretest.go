package keystoretest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
)

// KeyStore is the part of a key store backend the contract covers.
// DeleteKey destroys the key labelled label only if its public key is pub
// (the NotFound sentinel otherwise), so that undoing a generation can
// never take another key.
type KeyStore interface {
	GenerateSigner(label string) (crypto.Signer, error)
	Signer(label string) (crypto.Signer, error)
	DeleteKey(label string, pub crypto.PublicKey) error
}

// Option tunes Run for a backend.
type Option func(*config)

type config struct {
	notFound    error
	exists      error
	signsPerG   int
	goroutines  int
	labelPrefix string
}

// NotFound makes Run require errors.Is(err, sentinel) for an unknown label
// (without it any non-nil error passes).
func NotFound(sentinel error) Option { return func(c *config) { c.notFound = sentinel } }

// Exists makes Run require errors.Is(err, sentinel) for a duplicate label.
func Exists(sentinel error) Option { return func(c *config) { c.exists = sentinel } }

// SignsPerGoroutine sets how many signatures each of the concurrent
// goroutines makes (default 25).
func SignsPerGoroutine(n int) Option { return func(c *config) { c.signsPerG = n } }

// LabelPrefix prefixes every label Run creates, for stores that persist
// between runs (default "kst").
func LabelPrefix(p string) Option { return func(c *config) { c.labelPrefix = p } }

// Run runs the contract as subtests of t. newStore is called once per
// subtest; it may hand back the same persistent store every time, since
// each subtest uses labels of its own.
func Run(t *testing.T, newStore func(t *testing.T) KeyStore, opts ...Option) {
	c := config{signsPerG: 25, goroutines: 8, labelPrefix: "kst"}
	for _, o := range opts {
		o(&c)
	}
	label := func(t *testing.T, name string) string {
		var b [6]byte
		if _, err := rand.Read(b[:]); err != nil {
			t.Fatal(err)
		}
		return fmt.Sprintf("%s-%s-%s", c.labelPrefix, name, hex.EncodeToString(b[:]))
	}

	t.Run("GenerateSignVerify", func(t *testing.T) {
		ks := newStore(t)
		s, err := ks.GenerateSigner(label(t, "gen"))
		if err != nil {
			t.Fatalf("GenerateSigner: %v", err)
		}
		pub := ecdsaPublic(t, s)
		msg := make([]byte, 64)
		rand.Read(msg)
		digest := sha256.Sum256(msg)
		sig, err := s.Sign(rand.Reader, digest[:], crypto.SHA256)
		if err != nil {
			t.Fatalf("Sign: %v", err)
		}
		if !ecdsa.VerifyASN1(pub, digest[:], sig) {
			t.Fatal("signature does not verify with Public()")
		}
		other := sha256.Sum256(append(msg, 0))
		if ecdsa.VerifyASN1(pub, other[:], sig) {
			t.Fatal("signature verifies for a different digest")
		}
	})

	t.Run("FindAfterGenerate", func(t *testing.T) {
		ks := newStore(t)
		l := label(t, "find")
		gen, err := ks.GenerateSigner(l)
		if err != nil {
			t.Fatalf("GenerateSigner: %v", err)
		}
		found, err := ks.Signer(l)
		if err != nil {
			t.Fatalf("Signer(%q) after GenerateSigner: %v", l, err)
		}
		genPub := ecdsaPublic(t, gen)
		if !genPub.Equal(found.Public()) {
			t.Fatal("Signer returned a different public key than GenerateSigner")
		}
		digest := sha256.Sum256([]byte(l))
		sig, err := found.Sign(rand.Reader, digest[:], crypto.SHA256)
		if err != nil {
			t.Fatalf("Sign with found key: %v", err)
		}
		if !ecdsa.VerifyASN1(genPub, digest[:], sig) {
			t.Fatal("found key's signature does not verify with the generated public key")
		}
	})

	t.Run("DistinctKeys", func(t *testing.T) {
		ks := newStore(t)
		a, err := ks.GenerateSigner(label(t, "a"))
		if err != nil {
			t.Fatal(err)
		}
		b, err := ks.GenerateSigner(label(t, "b"))
		if err != nil {
			t.Fatal(err)
		}
		if ecdsaPublic(t, a).Equal(b.Public()) {
			t.Fatal("two labels got the same key")
		}
	})

	t.Run("UnknownLabel", func(t *testing.T) {
		ks := newStore(t)
		l := label(t, "unknown")
		s, err := ks.Signer(l)
		if err == nil {
			t.Fatalf("Signer(%q) for a label never generated = %v, want error", l, s)
		}
		if c.notFound != nil && !errors.Is(err, c.notFound) {
			t.Fatalf("Signer(%q): %v; want errors.Is %v", l, err, c.notFound)
		}
		if !strings.Contains(err.Error(), l) {
			t.Errorf("error %q does not name the label", err)
		}
	})

	t.Run("DuplicateLabel", func(t *testing.T) {
		ks := newStore(t)
		l := label(t, "dup")
		first, err := ks.GenerateSigner(l)
		if err != nil {
			t.Fatal(err)
		}
		s, err := ks.GenerateSigner(l)
		if err == nil {
			t.Fatalf("second GenerateSigner(%q) = %v, want error", l, s)
		}
		if c.exists != nil && !errors.Is(err, c.exists) {
			t.Fatalf("second GenerateSigner(%q): %v; want errors.Is %v", l, err, c.exists)
		}
		found, err := ks.Signer(l)
		if err != nil {
			t.Fatal(err)
		}
		if !ecdsaPublic(t, first).Equal(found.Public()) {
			t.Fatal("refused duplicate replaced the original key")
		}
	})

	t.Run("DeleteKey", func(t *testing.T) {
		ks := newStore(t)
		l, keep := label(t, "del"), label(t, "keep")
		gone, err := ks.GenerateSigner(l)
		if err != nil {
			t.Fatal(err)
		}
		kept, err := ks.GenerateSigner(keep)
		if err != nil {
			t.Fatal(err)
		}
		if err := ks.DeleteKey(l, gone.Public()); err != nil {
			t.Fatalf("DeleteKey(%q): %v", l, err)
		}
		if s, err := ks.Signer(l); err == nil {
			t.Fatalf("Signer(%q) after DeleteKey = %v, want error", l, s)
		} else if c.notFound != nil && !errors.Is(err, c.notFound) {
			t.Fatalf("Signer(%q) after DeleteKey: %v; want errors.Is %v", l, err, c.notFound)
		}
		if err := ks.DeleteKey(l, gone.Public()); err == nil {
			t.Fatalf("second DeleteKey(%q) succeeded", l)
		} else if c.notFound != nil && !errors.Is(err, c.notFound) {
			t.Fatalf("second DeleteKey(%q): %v; want errors.Is %v", l, err, c.notFound)
		}
		found, err := ks.Signer(keep)
		if err != nil {
			t.Fatalf("DeleteKey(%q) took %q too: %v", l, keep, err)
		}
		if !ecdsaPublic(t, kept).Equal(found.Public()) {
			t.Fatalf("DeleteKey(%q) changed %q", l, keep)
		}
		again, err := ks.GenerateSigner(l)
		if err != nil {
			t.Fatalf("GenerateSigner(%q) after DeleteKey: %v", l, err)
		}
		if ecdsaPublic(t, again).Equal(gone.Public()) {
			t.Fatal("regenerated key equals the deleted one")
		}
	})

	t.Run("DeleteKeyOnlyThatKey", func(t *testing.T) {
		ks := newStore(t)
		l, other := label(t, "delpub"), label(t, "other")
		s, err := ks.GenerateSigner(l)
		if err != nil {
			t.Fatal(err)
		}
		o, err := ks.GenerateSigner(other)
		if err != nil {
			t.Fatal(err)
		}
		// The label is right, the public key another key's: refused.
		err = ks.DeleteKey(l, o.Public())
		if err == nil {
			t.Fatalf("DeleteKey(%q) with another key's public key succeeded", l)
		}
		if c.notFound != nil && !errors.Is(err, c.notFound) {
			t.Fatalf("DeleteKey(%q) with another key's public key: %v; want errors.Is %v", l, err, c.notFound)
		}
		if found, err := ks.Signer(l); err != nil || !ecdsaPublic(t, s).Equal(found.Public()) {
			t.Fatalf("refused DeleteKey(%q) removed or changed it: %v", l, err)
		}
		unknown := label(t, "delunknown")
		if err := ks.DeleteKey(unknown, s.Public()); err == nil {
			t.Fatalf("DeleteKey(%q) of a label never generated succeeded", unknown)
		} else if c.notFound != nil && !errors.Is(err, c.notFound) {
			t.Fatalf("DeleteKey(%q) of a label never generated: %v; want errors.Is %v", unknown, err, c.notFound)
		}
	})

	t.Run("ConcurrentGenerateSameLabel", func(t *testing.T) {
		ks := newStore(t)
		l := label(t, "race")
		var wg sync.WaitGroup
		var mu sync.Mutex
		var won int
		var errs []error
		for range c.goroutines {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, err := ks.GenerateSigner(l)
				mu.Lock()
				defer mu.Unlock()
				if err == nil {
					won++
				} else {
					errs = append(errs, err)
				}
			}()
		}
		wg.Wait()
		if won != 1 {
			t.Fatalf("%d of %d concurrent GenerateSigner(%q) succeeded, want exactly 1", won, c.goroutines, l)
		}
		for _, err := range errs {
			if c.exists != nil && !errors.Is(err, c.exists) {
				t.Errorf("losing GenerateSigner: %v; want errors.Is %v", err, c.exists)
			}
		}
	})

	t.Run("ConcurrentSign", func(t *testing.T) {
		ks := newStore(t)
		s, err := ks.GenerateSigner(label(t, "conc"))
		if err != nil {
			t.Fatal(err)
		}
		pub := ecdsaPublic(t, s)
		var wg sync.WaitGroup
		errc := make(chan error, c.goroutines)
		for g := range c.goroutines {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range c.signsPerG {
					digest := sha256.Sum256(fmt.Appendf(nil, "goroutine %d message %d", g, i))
					sig, err := s.Sign(rand.Reader, digest[:], crypto.SHA256)
					if err != nil {
						errc <- fmt.Errorf("goroutine %d sign %d: %w", g, i, err)
						return
					}
					if !ecdsa.VerifyASN1(pub, digest[:], sig) {
						errc <- fmt.Errorf("goroutine %d sign %d: signature does not verify", g, i)
						return
					}
				}
			}()
		}
		wg.Wait()
		close(errc)
		for err := range errc {
			t.Error(err)
		}
	})
}

func ecdsaPublic(t *testing.T, s crypto.Signer) *ecdsa.PublicKey {
	t.Helper()
	pub, ok := s.Public().(*ecdsa.PublicKey)
	if !ok {
		t.Fatalf("Public() is %T, want *ecdsa.PublicKey", s.Public())
	}
	return pub
}
