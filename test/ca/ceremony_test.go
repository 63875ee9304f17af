//go:build integration

package ca

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/palisade-id/palisade/test/harness"
)

// TestRefusedCeremonyCanBeRetried: `palisade ceremony init` refuses to
// write over an old audit log after it has generated the keys. The refusal
// must leave the token as it was, so once the old log is moved away the
// same token takes the ceremony.
func TestRefusedCeremonyCanBeRetried(t *testing.T) {
	a := harness.New(t, harness.Options{})
	oldLog := filepath.Join(a.DataDir(), "audit.log")
	if err := os.MkdirAll(a.DataDir(), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(oldLog, []byte("an earlier appliance's log\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r := a.CLI("ceremony", "init", "-config", a.ConfigPath)
	if r.Err == nil || !strings.Contains(r.Stderr, "audit log") {
		t.Fatalf("ceremony over an old audit log: err=%v stderr=%s", r.Err, r.Stderr)
	}
	if b, _ := os.ReadFile(oldLog); string(b) != "an earlier appliance's log\n" {
		t.Fatalf("refused ceremony changed the old audit log: %q", b)
	}
	if err := os.Remove(oldLog); err != nil {
		t.Fatal(err)
	}
	a.Ceremony()
	a.Start()
	a.MustCLI("audit", "verify", "-config", a.ConfigPath)
}
