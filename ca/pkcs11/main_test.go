package pkcs11

import (
	"crypto"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/palisade-id/palisade/test/softhsm"
	"github.com/palisade-id/palisade/test/testenv"
)

// The SoftHSM2 library reads its configuration once per process, so the
// package's tests share one token, created in TestMain.
var (
	hsm    *softhsm.Token
	hsmErr error
	hsmDir string
)

func TestMain(m *testing.M) {
	code := func() int {
		if softhsm.FindModule() == "" {
			hsmErr = fmt.Errorf("SoftHSM2 module not installed (apt-get install softhsm2)")
			return m.Run()
		}
		dir, err := os.MkdirTemp("", "palisade-pkcs11-test-")
		if err != nil {
			hsmErr = err
			return m.Run()
		}
		hsmDir = dir
		defer os.RemoveAll(dir)
		hsm, hsmErr = softhsm.Create(dir, "palisade-test")
		return m.Run()
	}()
	os.Exit(code)
}

var labelSeq struct {
	sync.Mutex
	n int
}

// uniqueLabel keeps keys of different tests apart on the shared token.
func uniqueLabel(prefix string) string {
	labelSeq.Lock()
	defer labelSeq.Unlock()
	labelSeq.n++
	return fmt.Sprintf("%s-%d", prefix, labelSeq.n)
}

// testToken returns the shared SoftHSM2 token, skipping (or failing under
// PALISADE_TEST_STRICT=1) without it.
func testToken(t testing.TB) *softhsm.Token {
	t.Helper()
	testenv.Require(t, "softhsm2-util")
	if hsmErr != nil {
		testenv.Missing(t, hsmErr.Error())
	}
	return hsm
}

// openToken opens the shared token through its URI and closes it with t.
func openToken(t testing.TB, opts ...Option) *Token {
	t.Helper()
	h := testToken(t)
	u, err := ParseURI(h.TokenURI())
	if err != nil {
		t.Fatal(err)
	}
	tok, err := Open(u, opts...)
	if err != nil {
		t.Fatalf("Open(%s): %v", u, err)
	}
	t.Cleanup(func() {
		if err := tok.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return tok
}

// newSigner generates a key on tok under a fresh label.
func newSigner(t testing.TB, tok *Token, prefix string) (crypto.Signer, string) {
	t.Helper()
	label := uniqueLabel(prefix)
	s, err := tok.GenerateSigner(label)
	if err != nil {
		t.Fatal(err)
	}
	return s, label
}

// hideToken moves the shared token's storage away, as if the HSM were
// pulled. restore brings it back; cleanup restores it too, so that later
// tests find the token.
func hideToken(t testing.TB) (restore func()) {
	t.Helper()
	dir := filepath.Join(hsm.Dir, "tokens")
	if err := os.Rename(dir, dir+".gone"); err != nil {
		t.Fatal(err)
	}
	restored := false
	restore = func() {
		if !restored {
			restored = true
			if err := os.Rename(dir+".gone", dir); err != nil {
				t.Fatal(err)
			}
		}
	}
	t.Cleanup(restore)
	return restore
}
