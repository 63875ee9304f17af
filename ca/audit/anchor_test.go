package audit

import (
	"context"
	"crypto"
	"crypto/elliptic"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// anchoredLog writes 9 records with a checkpoint every 4 (checkpoints 5, 10
// and the final 12) through an anchor store.
func anchoredLog(t *testing.T) (path string, key crypto.Signer, m *memAnchor) {
	t.Helper()
	key = newKey(t, elliptic.P256())
	m = &memAnchor{}
	path = writeLog(t, key, 9, Options{CheckpointEvery: 4, Anchor: m})
	if a := m.get(t); a == nil || a.Seq != 12 || m.writes != 3 {
		t.Fatalf("anchor after close: %+v after %d writes; want checkpoint 12 after 3", a, m.writes)
	}
	return path, key, m
}

func TestAnchorDetectsTruncation(t *testing.T) {
	path, key, m := anchoredLog(t)
	lines := readLines(t, path)
	anchor := m.get(t)
	keys := []crypto.PublicKey{key.Public()}
	tests := []struct {
		name  string
		lines []string
		want  string // "" when the log must pass
		seq   uint64
	}{
		{"untouched", lines, "", 0},
		{"cut back to an earlier checkpoint", lines[:10], "records 11..12 are missing", 11},
		{"cut back to the first checkpoint", lines[:5], "records 6..12 are missing", 6},
		{"emptied", nil, "records 1..12 are missing", 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := joinLines(tc.lines)
			// Without the anchor a cut at a checkpoint verifies: the gap
			// the anchor closes.
			if rep, err := verifyBytes(b, VerifyOptions{Keys: keys, RequireCheckpointAtEnd: len(tc.lines) > 0}); err != nil {
				t.Fatalf("without anchor: %v\n%s", err, problemList(rep.Problems))
			}
			rep, err := verifyBytes(b, VerifyOptions{Keys: keys, Anchor: anchor})
			p := writeLines(t, tc.lines)
			l, oerr := Open(p, key, Options{Anchor: m})
			if tc.want == "" {
				if err != nil || oerr != nil {
					t.Fatalf("verify: %v; open: %v", err, oerr)
				}
				l.Close()
				return
			}
			if oerr == nil {
				l.Close()
				t.Fatal("Open accepted a log that does not reach the anchor")
			}
			t.Logf("Open: %v", oerr)
			if !errors.Is(err, ErrTampered) || len(rep.Problems) != 1 || rep.Problems[0].Kind != ProblemTruncated ||
				rep.Problems[0].Seq != tc.seq || !strings.Contains(rep.Problems[0].Detail, tc.want) {
				t.Fatalf("verify: %v\n%s\nwant one truncated problem at seq %d saying %q", err, problemList(rep.Problems), tc.seq, tc.want)
			}
			if !errors.Is(oerr, ErrTampered) || !strings.Contains(oerr.Error(), tc.want) {
				t.Fatalf("Open: %v; want ErrTampered saying %q", oerr, tc.want)
			}
			if got, _ := os.ReadFile(p); string(got) != string(b) {
				t.Fatal("refusing Open changed the file")
			}
		})
	}
	t.Run("anchor names another record", func(t *testing.T) {
		other := &memAnchor{val: Anchor{Seq: 10, Hash: strings.Repeat("ab", 32)}.encode()}
		_, err := Open(writeLines(t, lines), key, Options{Anchor: other})
		if !errors.Is(err, ErrTampered) || !strings.Contains(err.Error(), "seq 10: edited: record 10 is not checkpoint 10 anchored") {
			t.Fatalf("Open: %v", err)
		}
	})
	t.Run("unparsable anchor", func(t *testing.T) {
		bad := &memAnchor{val: []byte(`{"format":"palisade-audit-anchor-v1","seq":0}`)}
		if _, err := Open(writeLines(t, lines), key, Options{Anchor: bad}); !errors.Is(err, ErrAnchor) {
			t.Fatalf("Open: %v, want ErrAnchor", err)
		}
	})
}

// TestAnchorFailure: a failed anchor update leaves the checkpoint durable,
// is reported, and is caught up later; an anchor left behind (as a crash
// between the fsync and the update leaves it) is no reason to refuse.
func TestAnchorFailure(t *testing.T) {
	key := newKey(t, elliptic.P256())
	m := &memAnchor{}
	path := filepath.Join(t.TempDir(), "audit.log")
	l := mustOpen(t, path, key, Options{Anchor: m})
	ctx := context.Background()
	appendN(t, l, 2)
	if _, err := l.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	m.setFail(errors.New("CKR_DEVICE_REMOVED"))
	appendN(t, l, 2)
	rec, err := l.Checkpoint(ctx)
	if !errors.Is(err, ErrAnchor) || rec.Seq != 6 {
		t.Fatalf("Checkpoint with a failing anchor: %+v %v; want record 6 and ErrAnchor", rec, err)
	}
	if !errors.Is(l.CheckpointErr(), ErrAnchor) {
		t.Fatalf("CheckpointErr = %v, want ErrAnchor", l.CheckpointErr())
	}
	if err := l.Close(); !errors.Is(err, ErrAnchor) {
		t.Fatalf("Close with a failing anchor: %v", err)
	}
	if a := m.get(t); a.Seq != 3 {
		t.Fatalf("anchor moved to %d despite failures", a.Seq)
	}
	m.setFail(nil)
	l = mustOpen(t, path, key, Options{Anchor: m})
	if a := m.get(t); a.Seq != 6 || l.CheckpointErr() != nil {
		t.Fatalf("Open did not catch the anchor up: %+v, %v", a, l.CheckpointErr())
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestAnchorAcrossSegments: the anchor is checked across archived segments
// by Open and VerifyChain, and deleting the current segment is seen.
func TestAnchorAcrossSegments(t *testing.T) {
	key := newKey(t, elliptic.P256())
	keys := []crypto.PublicKey{key.Public()}
	m := &memAnchor{}
	path := filepath.Join(t.TempDir(), "audit.log")
	l := mustOpen(t, path, key, Options{CheckpointEvery: 2, Anchor: m})
	appendN(t, l, 4) // 1 2 cp3 4 5 cp6
	// Appenders do not wait for the anchor update: let cp6's land first.
	for deadline := time.Now().Add(5 * time.Second); m.get(t) == nil || m.get(t).Seq != 6; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("anchor %+v never reached checkpoint 6", m.get(t))
		}
	}
	m.setFail(errors.New("HSM away"))
	appendN(t, l, 1) // 7
	if _, err := l.Rotate(context.Background()); err != nil {
		t.Fatal(err) // seals with cp8, unanchored
	}
	appendN(t, l, 1) // continued 9, 10
	l.Close()
	m.setFail(nil)
	if a := m.get(t); a.Seq != 6 {
		t.Fatalf("anchor %+v, want checkpoint 6 in the archived segment", a)
	}
	segs, _ := Segments(path)
	if rep, err := VerifyChain(segs, VerifyOptions{Keys: keys, Anchor: m.get(t)}); err != nil {
		t.Fatalf("VerifyChain: %v\n%s", err, problemList(rep.Problems))
	}
	wrong := &memAnchor{val: Anchor{Seq: 6, Hash: strings.Repeat("cd", 32)}.encode()}
	if _, err := Open(path, key, Options{Anchor: wrong}); !errors.Is(err, ErrTampered) || !strings.Contains(err.Error(), "record 6 is not checkpoint 6") {
		t.Fatalf("Open with an anchor the archived segment contradicts: %v", err)
	}
	l = mustOpen(t, path, key, Options{Anchor: m}) // catches the anchor up to the final checkpoint
	l.Close()
	a := m.get(t)
	if a.Seq <= 10 {
		t.Fatalf("anchor %+v not caught up", a)
	}

	// The current segment deleted: the archive alone ends before the anchor.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	segs, _ = Segments(path)
	rep, err := VerifyChain(segs, VerifyOptions{Keys: keys, Anchor: a})
	if !errors.Is(err, ErrTampered) || rep.Problems[0].Kind != ProblemTruncated || rep.Problems[0].Seq != 9 {
		t.Fatalf("VerifyChain without the current segment: %v\n%s", err, problemList(rep.Problems))
	}
	if _, err := Open(path, key, Options{Anchor: m}); !errors.Is(err, ErrTampered) || !strings.Contains(err.Error(), "records 9..") {
		t.Fatalf("Open without the current segment: %v", err)
	}
}
