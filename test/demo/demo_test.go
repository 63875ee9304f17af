//go:build integration

// Package demo runs `make demo`'s script as a test, so the README's first
// command cannot rot.
package demo

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/palisade-id/palisade/test/harness"
)

func TestDemoScript(t *testing.T) {
	bin := harness.Bin(t)
	out := t.TempDir()
	cmd := exec.Command("bash", "demo.sh")
	cmd.Env = append(os.Environ(), "BIN="+bin, "DEMO_OUT="+out)
	res, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("demo failed: %v\n%s", err, res)
	}
	for _, f := range []string{"bundle.pem", "svid.pem", "key.pem", "jwt.txt", "audit.log"} {
		if st, err := os.Stat(filepath.Join(out, f)); err != nil || st.Size() == 0 {
			t.Fatalf("demo left no %s", f)
		}
	}
	svid, _ := os.ReadFile(filepath.Join(out, "svid.pem"))
	if n := strings.Count(string(svid), "BEGIN CERTIFICATE"); n != 2 {
		t.Fatalf("svid.pem holds %d certificates, want leaf + intermediate", n)
	}
	if !strings.Contains(string(res), "Demo complete") {
		t.Fatalf("demo output:\n%s", res)
	}
}
