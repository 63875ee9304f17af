//go:build integration

package ca

import (
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/palisade-id/palisade/test/harness"
)

// TestAuditReanchorAfterRestore: data_dir restored from a backup leaves
// the audit log behind the checkpoint anchored in the HSM, and the server
// refuses it for good. `palisade audit reanchor` is the way back: it
// refuses anything but that, records who rolled history back and why, and
// from then on the server starts and verify shows the rollback.
func TestAuditReanchorAfterRestore(t *testing.T) {
	a := harness.New(t, harness.Options{})
	a.Ceremony()
	a.Start()
	a.Stop()
	backup := filepath.Join(t.TempDir(), "data")
	copyTree(t, a.DataDir(), backup)
	outOfBand := filepath.Join(t.TempDir(), "bundle.pem")
	copyFile(t, filepath.Join(a.DataDir(), "bundle.pem"), outOfBand)

	a.Start()
	for i := 0; i < 3; i++ {
		a.MustCLI("x509", "mint", "-spiffeID", fmt.Sprintf("spiffe://%s/w%d", a.TrustDomain, i))
	}
	a.Stop()
	logPath := filepath.Join(a.DataDir(), "audit.log")
	lost, _ := os.ReadFile(logPath)
	anchored := lastSeq(t, lost) // Close ends the log with the checkpoint it anchors

	// The disk fails; the backup comes back.
	if err := os.RemoveAll(a.DataDir()); err != nil {
		t.Fatal(err)
	}
	copyTree(t, backup, a.DataDir())
	restored, _ := os.ReadFile(logPath)
	head := lastSeq(t, restored)
	if head >= anchored {
		t.Fatalf("backup log ends at %d, not behind the anchor %d", head, anchored)
	}
	want := fmt.Sprintf("records %d..%d are missing", head+1, anchored)
	if err := a.StartErr(); err == nil {
		a.Stop()
		t.Fatal("palisade-server started on a log behind its anchor")
	} else if !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "anchored in the HSM") {
		t.Fatalf("refused start does not say %q:\n%v", want, err)
	}

	// refused runs reanchor and checks it fails saying want, changing
	// neither the log nor (so the server still refuses) the anchor.
	refused := func(t *testing.T, want string, args ...string) {
		t.Helper()
		before, _ := os.ReadFile(logPath)
		r := a.CLI(append([]string{"audit", "reanchor", "-config", a.ConfigPath}, args...)...)
		t.Logf("refused: %s", r.Stderr)
		if r.Err == nil || !strings.Contains(r.Stderr, want) {
			t.Fatalf("reanchor %v: err=%v, want it to say %q\nstdout: %s\nstderr: %s", args, r.Err, want, r.Stdout, r.Stderr)
		}
		if after, _ := os.ReadFile(logPath); !bytes.Equal(before, after) {
			t.Fatal("refused reanchor changed the audit log")
		}
	}
	t.Run("refusals", func(t *testing.T) {
		refused(t, "-reason is required")
		refused(t, "-reason is required", "-reason", "  ")
		refused(t, "limit 1024", "-reason", strings.Repeat("x", 1025))
		forged, _ := forgeAuditLog(t, restored)
		if err := os.WriteFile(logPath, forged, 0o600); err != nil {
			t.Fatal(err)
		}
		defer os.WriteFile(logPath, restored, 0o600)
		cps := checkpointSeqs(t, restored)
		refused(t, fmt.Sprintf("seq %d: bad-signature: checkpoint signed by untrusted key", cps[0]), "-reason", "restored from backup")
	})
	if err := a.StartErr(); err == nil || !strings.Contains(err.Error(), want) {
		a.Stop()
		t.Fatalf("start after refused reanchors: %v", err)
	}

	const reason = "data_dir restored from the nightly backup after a disk failure"
	out := a.MustCLI("audit", "reanchor", "-config", a.ConfigPath, "-reason", reason)
	t.Logf("palisade audit reanchor:\n%s", out)
	for _, s := range []string{
		fmt.Sprintf("record %d (audit.reanchored) by operator:", head+1),
		fmt.Sprintf("previous anchor: checkpoint %d, hash ", anchored),
		fmt.Sprintf("log head:        seq %d, hash ", head),
		fmt.Sprintf("%d anchored record(s), seq %d..%d", anchored-head, head+1, anchored),
		fmt.Sprintf("new anchor:      checkpoint %d", head+2),
	} {
		if !strings.Contains(out, s) {
			t.Fatalf("reanchor output does not say %q:\n%s", s, out)
		}
	}

	a.Start()
	a.MustCLI("x509", "mint", "-spiffeID", "spiffe://"+a.TrustDomain+"/after")
	refused(t, "stop palisade-server first", "-reason", reason)
	a.Stop()

	reanchored := fmt.Sprintf("REANCHORED seq %d at ", head+1)
	for _, args := range [][]string{
		{"audit", "verify", "-requireCheckpointAtEnd", "-config", a.ConfigPath},
		{"audit", "verify", "-requireCheckpointAtEnd", "-log", logPath, "-bundle", outOfBand},
	} {
		out = a.MustCLI(args...)
		t.Logf("palisade %s:\n%s", strings.Join(args, " "), out)
		line := lineWith(out, reanchored)
		for _, s := range []string{"by operator:", fmt.Sprintf("no longer reached checkpoint %d", anchored),
			fmt.Sprintf("continued from seq %d", head), fmt.Sprintf("%d anchored record(s)", anchored-head), fmt.Sprintf("reason: %q", reason)} {
			if !strings.Contains(line, s) {
				t.Fatalf("%v: output does not show the reanchor (%q):\n%s", args, s, out)
			}
		}
		if !strings.Contains(out, "verified") || !strings.Contains(out, "rolled back behind the anchor 1 time(s)") {
			t.Fatalf("%v:\n%s", args, out)
		}
	}

	refused(t, "nothing to reanchor", "-reason", reason)
	a.Start()
}

// lastSeq is the seq of the log's last record.
func lastSeq(t *testing.T, b []byte) uint64 {
	t.Helper()
	recs := parseAuditLog(t, b)
	return recs[len(recs)-1].Seq
}

func lineWith(out, s string) string {
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, s) {
			return l
		}
	}
	return ""
}

// copyTree copies the regular files and directories under from to to.
func copyTree(t *testing.T, from, to string) {
	t.Helper()
	err := filepath.WalkDir(from, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(from, p)
		dst := filepath.Join(to, rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			return os.MkdirAll(dst, info.Mode().Perm())
		case info.Mode().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			return os.WriteFile(dst, b, info.Mode().Perm())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
