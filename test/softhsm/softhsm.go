// Package softhsm creates throw-away SoftHSM2 tokens for tests and the demo.
//
// The PKCS#11 library reads SOFTHSM2_CONF once, when a process first
// initialises it, so a test binary gets one token directory: create it from
// TestMain or share one Token through sync.Once.
package softhsm

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/palisade-id/palisade/test/testenv"
)

// ModuleCandidates are where distributions install the SoftHSM2 module.
var ModuleCandidates = []string{
	"/usr/lib/softhsm/libsofthsm2.so",
	"/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/local/lib/softhsm/libsofthsm2.so",
}

// Token is an initialised SoftHSM2 token in a private directory.
type Token struct {
	Dir      string // token and config directory
	ConfPath string // SOFTHSM2_CONF
	Module   string // PKCS#11 module path
	Label    string
	PIN      string
	SOPIN    string
	PINFile  string // file holding PIN, for pin-source URIs
}

// FindModule returns the SoftHSM2 module path or "" if none is installed.
func FindModule() string {
	for _, p := range ModuleCandidates {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return ""
}

// Create initialises a token labelled label under dir and points
// SOFTHSM2_CONF at it for this process. It is for non-test callers (bench
// commands); tests use NewToken.
func Create(dir, label string) (*Token, error) {
	module := FindModule()
	if module == "" {
		return nil, fmt.Errorf("softhsm: libsofthsm2.so not found (install softhsm2)")
	}
	if _, err := exec.LookPath("softhsm2-util"); err != nil {
		return nil, fmt.Errorf("softhsm: softhsm2-util not found (install softhsm2)")
	}
	tokens := filepath.Join(dir, "tokens")
	if err := os.MkdirAll(tokens, 0o700); err != nil {
		return nil, err
	}
	conf := filepath.Join(dir, "softhsm2.conf")
	body := fmt.Sprintf("directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n", tokens)
	if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
		return nil, err
	}
	tok := &Token{Dir: dir, ConfPath: conf, Module: module, Label: label, PIN: randHex(8), SOPIN: randHex(8)}
	tok.PINFile = filepath.Join(dir, "pin")
	if err := os.WriteFile(tok.PINFile, []byte(tok.PIN+"\n"), 0o600); err != nil {
		return nil, err
	}
	cmd := exec.Command("softhsm2-util", "--init-token", "--free", "--label", label, "--so-pin", tok.SOPIN, "--pin", tok.PIN)
	cmd.Env = append(os.Environ(), "SOFTHSM2_CONF="+conf)
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("softhsm: init token: %v: %s", err, strings.TrimSpace(string(out)))
	}
	if err := os.Setenv("SOFTHSM2_CONF", conf); err != nil {
		return nil, err
	}
	return tok, nil
}

// Another initialises one more token labelled label beside tok, sharing
// its configuration and PIN. Create every token a test binary needs before
// the PKCS#11 library is first initialised: modules may not see tokens that
// appear later.
func (tok *Token) Another(label string) (*Token, error) {
	cmd := exec.Command("softhsm2-util", "--init-token", "--free", "--label", label, "--so-pin", tok.SOPIN, "--pin", tok.PIN)
	cmd.Env = append(os.Environ(), "SOFTHSM2_CONF="+tok.ConfPath)
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("softhsm: init token %s: %v: %s", label, err, strings.TrimSpace(string(out)))
	}
	t2 := *tok
	t2.Label = label
	return &t2, nil
}

// NewToken creates a token in a fresh temporary directory for t. It skips
// (or fails under PALISADE_TEST_STRICT=1) when SoftHSM2 is not installed.
func NewToken(t testing.TB) *Token {
	t.Helper()
	if FindModule() == "" {
		testenv.Missing(t, "SoftHSM2 module (apt-get install softhsm2)")
	}
	testenv.Require(t, "softhsm2-util")
	tok, err := Create(t.TempDir(), "palisade-test")
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// URI returns an RFC 7512 URI for object on this token, its PIN read from
// PINFile.
func (tok *Token) URI(object string) string {
	return "pkcs11:token=" + pctEncode(tok.Label, false) + ";object=" + pctEncode(object, false) +
		"?module-path=" + pctEncode(tok.Module, true) + "&pin-source=file:" + pctEncode(tok.PINFile, true)
}

// TokenURI names the token itself (no object).
func (tok *Token) TokenURI() string {
	return "pkcs11:token=" + pctEncode(tok.Label, false) +
		"?module-path=" + pctEncode(tok.Module, true) + "&pin-source=file:" + pctEncode(tok.PINFile, true)
}

// pctEncode escapes s for an RFC 7512 path attribute (pk11-pchar) or, with
// query set, a query attribute (pk11-qchar, which also allows "/?|").
func pctEncode(s string, query bool) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9',
			strings.IndexByte("-._~:[]@!$'()*+,=", c) >= 0,
			query && strings.IndexByte("/?|", c) >= 0:
			b.WriteByte(c)
		default:
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

func randHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}
