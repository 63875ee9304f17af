package keystoretest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
)

var (
	errNotFound = errors.New("not found")
	errExists   = errors.New("exists")
)

// goodStore is a minimal correct backend; the broken variants each break
// one promise the contract must catch.
type goodStore struct {
	mu   sync.Mutex
	keys map[string]*ecdsa.PrivateKey
	bug  string
}

func (s *goodStore) GenerateSigner(label string) (crypto.Signer, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.keys[label]; ok && s.bug != "overwrite" {
		if s.bug == "wrong-exists-error" {
			return nil, errors.New("some other error")
		}
		return nil, fmt.Errorf("%w: %s", errExists, label)
	}
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	s.keys[label] = k
	if s.bug == "bad-signature" {
		return badSigner{k}, nil
	}
	return k, nil
}

func (s *goodStore) Signer(label string) (crypto.Signer, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k, ok := s.keys[label]
	switch {
	case !ok && s.bug == "wrong-notfound-error":
		return nil, errors.New("no such key " + label)
	case !ok:
		return nil, fmt.Errorf("%w: %s", errNotFound, label)
	case s.bug == "other-key":
		o, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		return o, nil
	}
	return k, nil
}

func (s *goodStore) DeleteKey(label string, pub crypto.PublicKey) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	k, ok := s.keys[label]
	switch {
	case s.bug == "delete-noop":
		return nil
	case s.bug == "delete-everything":
		clear(s.keys)
		return nil
	case !ok, !k.PublicKey.Equal(pub) && s.bug != "delete-ignores-public":
		return fmt.Errorf("%w: %s", errNotFound, label)
	}
	delete(s.keys, label)
	return nil
}

type badSigner struct{ k *ecdsa.PrivateKey }

func (b badSigner) Public() crypto.PublicKey { return &b.k.PublicKey }
func (b badSigner) Sign(r io.Reader, d []byte, o crypto.SignerOpts) ([]byte, error) {
	return b.k.Sign(r, append([]byte{1}, d[1:]...), o)
}

func run(t *testing.T, bug string) {
	Run(t, func(t *testing.T) KeyStore { return &goodStore{keys: map[string]*ecdsa.PrivateKey{}, bug: bug} },
		NotFound(errNotFound), Exists(errExists))
}

func TestGoodStorePasses(t *testing.T) { run(t, "") }

// TestContractCatchesBugs runs the suite against broken stores in a child
// process and checks it fails in the subtest that owns the promise.
func TestContractCatchesBugs(t *testing.T) {
	if bug := os.Getenv("KEYSTORETEST_BUG"); bug != "" {
		run(t, bug)
		return
	}
	for _, tt := range []struct{ bug, failing string }{
		{"overwrite", "DuplicateLabel"},
		{"other-key", "FindAfterGenerate"},
		{"bad-signature", "GenerateSignVerify"},
		{"wrong-notfound-error", "UnknownLabel"},
		{"wrong-exists-error", "DuplicateLabel"},
		{"delete-noop", "DeleteKey"},
		{"delete-everything", "DeleteKey"},
		{"delete-ignores-public", "DeleteKeyOnlyThatKey"},
	} {
		t.Run(tt.bug, func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run=^TestContractCatchesBugs$", "-test.v")
			cmd.Env = append(os.Environ(), "KEYSTORETEST_BUG="+tt.bug)
			out, err := cmd.CombinedOutput()
			if err == nil {
				t.Fatalf("contract passed a store with bug %q:\n%s", tt.bug, out)
			}
			if !strings.Contains(string(out), "--- FAIL: TestContractCatchesBugs/"+tt.failing) {
				t.Fatalf("bug %q not caught by subtest %s:\n%s", tt.bug, tt.failing, out)
			}
		})
	}
}
