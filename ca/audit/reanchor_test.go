package audit

import (
	"bytes"
	"context"
	"crypto"
	"crypto/elliptic"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

const testOperator = "operator:root,uid=0,pid=4242"

// TestReanchorRestoredLog: a log behind its anchor (restored from a
// backup) is refused by Open until Reanchor records the rollback; then
// Open and Verify with the new anchor pass and show who rolled back what.
func TestReanchorRestoredLog(t *testing.T) {
	path, key, m := anchoredLog(t) // checkpoints 5, 10, 12; anchor 12
	lines := readLines(t, path)
	old := *m.get(t)
	keys := []crypto.PublicKey{key.Public()}
	// diverged: the backup went on without the anchor and wrote another
	// record 12.
	diverged := func(t *testing.T) []string {
		p := writeLines(t, lines[:10])
		l := mustOpen(t, p, key, Options{Now: fixedClock()})
		appendN(t, l, 3)
		l.Close()
		return readLines(t, p)
	}
	tests := []struct {
		name        string
		lines       func(t *testing.T) []string
		head        uint64 // the restored log's head
		lastCP      uint64
		missing     uint64
		problem     string
		recoveredAt uint64 // seq of the audit.recovered record, if any
	}{
		{"backup at an earlier checkpoint", func(*testing.T) []string { return lines[:10] }, 10, 10, 2, "records 11..12 are missing", 0},
		{"backup at the first checkpoint", func(*testing.T) []string { return lines[:5] }, 5, 5, 7, "records 6..12 are missing", 0},
		{"backup with an unsigned tail", func(*testing.T) []string { return lines[:7] }, 7, 5, 5, "records 8..12 are missing", 0},
		{"backup with a torn line", func(*testing.T) []string {
			return append(lines[:10:10], lines[10][:20])
		}, 10, 10, 2, "records 11..12 are missing", 11},
		{"another record at the anchored seq", diverged, 14, 14, 0, "record 12 is not checkpoint 12 anchored", 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := &memAnchor{val: old.encode()}
			p := writeLines(t, tc.lines(t))
			if _, err := Open(p, key, Options{Anchor: m}); !errors.Is(err, ErrTampered) || !strings.Contains(err.Error(), tc.problem) {
				t.Fatalf("Open of the restored log: %v; want ErrTampered saying %q", err, tc.problem)
			}
			r, err := Reanchor(p, key, Options{Anchor: m, Now: fixedClock()}, testOperator, "restored from backup")
			if err != nil {
				t.Fatal(err)
			}
			seq := tc.head + 1
			if tc.recoveredAt != 0 {
				seq++
			}
			head := Anchor{Seq: tc.head, Hash: mustParse(t, readLines(t, p)[tc.head-1]).Hash}
			if r.Seq != seq || r.Previous != old || r.Head != head || r.Missing != tc.missing ||
				r.LastCheckpoint != tc.lastCP || r.Actor != testOperator || r.Reason != "restored from backup" ||
				!strings.Contains(r.Problem, tc.problem) || r.Checkpoint.Seq != seq+1 {
				t.Fatalf("Reanchor returned %+v", r)
			}
			if a := m.get(t); *a != r.Checkpoint {
				t.Fatalf("anchor %+v, want the reanchor's checkpoint %+v", a, r.Checkpoint)
			}
			got := readLines(t, p)
			if uint64(len(got)) != seq+1 {
				t.Fatalf("log has %d lines, want %d", len(got), seq+1)
			}
			if tc.recoveredAt != 0 && mustParse(t, got[tc.recoveredAt-1]).Kind != KindRecovered {
				t.Fatalf("record %d is not %s: %s", tc.recoveredAt, KindRecovered, got[tc.recoveredAt-1])
			}
			w := mustParse(t, got[seq-1])
			var d reanchorData
			if err := json.Unmarshal(w.Data, &d); err != nil || w.Kind != KindReanchored || w.Actor != testOperator ||
				d.Previous != old || d.Head != head || d.Missing != tc.missing || d.Reason != "restored from backup" {
				t.Fatalf("reanchor record: %s (%v)", got[seq-1], err)
			}
			if cp := mustParse(t, got[seq]); cp.Kind != KindCheckpoint || cp.Hash != r.Checkpoint.Hash {
				t.Fatalf("record after the reanchor: %s", got[seq])
			}

			rep, err := VerifyChain([]string{p}, VerifyOptions{Keys: keys, Anchor: m.get(t), RequireCheckpointAtEnd: true})
			if err != nil {
				t.Fatalf("verify after reanchor: %v\n%s", err, problemList(rep.Problems))
			}
			if len(rep.Reanchors) != 1 || rep.Reanchors[0].Seq != seq || rep.Reanchors[0].Previous != old ||
				rep.Reanchors[0].Head != head || rep.Reanchors[0].Actor != testOperator || rep.Reanchors[0].Missing != tc.missing {
				t.Fatalf("Report.Reanchors = %+v", rep.Reanchors)
			}
			l := mustOpen(t, p, key, Options{Anchor: m})
			appendN(t, l, 2)
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			if a := m.get(t); a.Seq != seq+4 {
				t.Fatalf("anchor %+v did not move on after the reanchor", a)
			}
			b, _ := os.ReadFile(p)
			if rep, err := verifyBytes(b, VerifyOptions{Keys: keys, Anchor: m.get(t), RequireCheckpointAtEnd: true}); err != nil {
				t.Fatalf("verify after reopening: %v\n%s", err, problemList(rep.Problems))
			}
		})
	}
}

// TestReanchorRefuses: Reanchor accepts the anchor being out of reach and
// nothing else; every refusal leaves the log and the anchor as they were.
func TestReanchorRefuses(t *testing.T) {
	path, key, m := anchoredLog(t)
	lines := readLines(t, path)
	backup := lines[:10]
	ca := newTestCA(t)
	forgerKey := newKey(t, elliptic.P256())
	edited := append([]string(nil), backup...)
	w := mustParse(t, edited[2])
	w.Actor = "operator:uid=4242"
	edited[2] = encode(w)
	rehashed := append([]string(nil), backup...)
	w = mustParse(t, rehashed[2])
	w.Actor = "operator:uid=4242"
	rehash(w)
	rehashed[2] = encode(w)

	tests := []struct {
		name   string
		lines  []string
		anchor []byte // nil: the log's anchor
		reason string
		want   error
		says   string
	}{
		{"log reaches the anchor", lines, nil, "restored", ErrNothingToReanchor, "reaches checkpoint 12"},
		{"no anchor stored", backup, []byte{}, "restored", ErrNothingToReanchor, "no anchor"},
		{"forged with another key", forge(t, backup, forgerKey, ca.issue(t, forgerKey)), nil, "restored", ErrTampered, "seq 5: bad-signature: checkpoint signed by untrusted key"},
		{"record edited", edited, nil, "restored", ErrTampered, "seq 3: edited: record 3 content does not match its hash"},
		{"record edited and rehashed", rehashed, nil, "restored", ErrTampered, "seq 3: edited: record 3 was rewritten"},
		{"empty reason", backup, nil, "", ErrInvalid, "empty reason"},
		{"blank reason", backup, nil, " \n\t", ErrInvalid, "empty reason"},
		{"oversized reason", backup, nil, strings.Repeat("x", MaxReasonBytes+1), ErrInvalid, "reason longer than"},
		{"reason not UTF-8", backup, nil, "restored \xff", ErrInvalid, "not valid UTF-8"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			am := &memAnchor{val: m.val}
			if tc.anchor != nil {
				am.val = nil
			}
			p := writeLines(t, tc.lines)
			before, val := snapshot(t, p, am)
			_, err := Reanchor(p, key, Options{Anchor: am}, testOperator, tc.reason)
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.says) {
				t.Fatalf("Reanchor: %v; want %v saying %q", err, tc.want, tc.says)
			}
			t.Logf("refused: %v", err)
			unchanged(t, p, before, am, val)
		})
	}

	t.Run("log in use", func(t *testing.T) {
		am := &memAnchor{val: m.val}
		p := writeLines(t, lines)
		l := mustOpen(t, p, key, Options{Anchor: am})
		defer l.Close()
		before, val := snapshot(t, p, am)
		if _, err := Reanchor(p, key, Options{Anchor: am}, testOperator, "restored"); !errors.Is(err, unix.EWOULDBLOCK) || !strings.Contains(err.Error(), "in use") {
			t.Fatalf("Reanchor of an open log: %v", err)
		}
		unchanged(t, p, before, am, val)
	})
	t.Run("no log", func(t *testing.T) {
		p := filepath.Join(t.TempDir(), "audit.log")
		if _, err := Reanchor(p, key, Options{Anchor: &memAnchor{val: m.val}}, testOperator, "restored"); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("Reanchor without a log: %v", err)
		}
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Fatal("Reanchor created the log")
		}
	})
	t.Run("second reanchor", func(t *testing.T) {
		am := &memAnchor{val: m.val}
		p := writeLines(t, backup)
		if _, err := Reanchor(p, key, Options{Anchor: am}, testOperator, "restored"); err != nil {
			t.Fatal(err)
		}
		before, val := snapshot(t, p, am)
		if _, err := Reanchor(p, key, Options{Anchor: am}, testOperator, "again"); !errors.Is(err, ErrNothingToReanchor) {
			t.Fatalf("second Reanchor: %v", err)
		}
		unchanged(t, p, before, am, val)
	})
	t.Run("signer fails", func(t *testing.T) {
		am := &memAnchor{val: m.val}
		p := writeLines(t, backup)
		before, val := snapshot(t, p, am)
		s := &flakySigner{Signer: key}
		s.broken.Store(true)
		if _, err := Reanchor(p, s, Options{Anchor: am}, testOperator, "restored"); err == nil || !strings.Contains(err.Error(), "CKR_DEVICE_REMOVED") {
			t.Fatalf("Reanchor with a failing signer: %v", err)
		}
		unchanged(t, p, before, am, val)
	})
	t.Run("anchor update fails", func(t *testing.T) {
		am := &memAnchor{val: m.val, fail: errors.New("CKR_DEVICE_REMOVED")}
		p := writeLines(t, backup)
		if _, err := Reanchor(p, key, Options{Anchor: am}, testOperator, "restored"); !errors.Is(err, ErrAnchor) {
			t.Fatalf("Reanchor with a failing anchor: %v", err)
		}
		// The reanchor is in the log but not anchored: Open still refuses,
		// and a second reanchor records itself too.
		if _, err := Open(p, key, Options{Anchor: am}); !errors.Is(err, ErrTampered) {
			t.Fatalf("Open after a failed anchor update: %v", err)
		}
		am.setFail(nil)
		if r, err := Reanchor(p, key, Options{Anchor: am}, testOperator, "restored, anchor update retried"); err != nil || r.Seq != 13 {
			t.Fatalf("retried Reanchor: %+v %v", r, err)
		}
		b, _ := os.ReadFile(p)
		rep, err := verifyBytes(b, VerifyOptions{Keys: []crypto.PublicKey{key.Public()}, Anchor: am.get(t)})
		if err != nil || len(rep.Reanchors) != 2 {
			t.Fatalf("verify: %v, %d reanchors\n%s", err, len(rep.Reanchors), problemList(rep.Problems))
		}
	})
}

type anchorState struct {
	val    []byte
	writes int
}

func snapshot(t *testing.T, p string, am *memAnchor) ([]byte, anchorState) {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b, anchorState{am.val, am.writes}
}

// unchanged fails t unless the log at p is still before, no file was added
// beside it and the anchor was not written.
func unchanged(t *testing.T, p string, before []byte, am *memAnchor, was anchorState) {
	t.Helper()
	if after, _ := os.ReadFile(p); !bytes.Equal(before, after) {
		t.Fatal("refused reanchor changed the log")
	}
	if am.writes != was.writes || !bytes.Equal(am.val, was.val) {
		t.Fatalf("refused reanchor wrote the anchor: %s", am.val)
	}
	if matches, _ := filepath.Glob(p + ".*"); len(matches) > 0 {
		t.Fatalf("refused reanchor left files: %v", matches)
	}
}

// TestReanchorRecordIsReserved: nobody but Reanchor writes the record.
func TestReanchorRecordIsReserved(t *testing.T) {
	l := mustOpen(t, filepath.Join(t.TempDir(), "audit.log"), newKey(t, elliptic.P256()), Options{})
	defer l.Close()
	if _, err := l.Append(context.Background(), KindReanchored, testOperator, nil); !errors.Is(err, ErrInvalid) {
		t.Fatalf("Append of %s: %v", KindReanchored, err)
	}
}

// TestReanchorAcrossSegments: a current file restored empty beside the
// archived segments is continued, then reanchored, in one write.
func TestReanchorAcrossSegments(t *testing.T) {
	key := newKey(t, elliptic.P256())
	m := &memAnchor{}
	path := filepath.Join(t.TempDir(), "audit.log")
	l := mustOpen(t, path, key, Options{CheckpointEvery: 2, Anchor: m})
	appendN(t, l, 3) // 1 2 cp3 4
	if _, err := l.Rotate(context.Background()); err != nil {
		t.Fatal(err) // sealed with cp5
	}
	appendN(t, l, 3) // continued 6, 7 8 cp9, ...
	l.Close()
	old := *m.get(t)
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(path, key, Options{Anchor: m}); !errors.Is(err, ErrTampered) {
		t.Fatalf("Open of an emptied current segment: %v", err)
	}
	r, err := Reanchor(path, key, Options{Anchor: m}, testOperator, "restored")
	if err != nil {
		t.Fatal(err)
	}
	if r.Head.Seq != 5 || r.LastCheckpoint != 5 || r.Seq != 7 || r.Missing != old.Seq-5 || *m.get(t) != r.Checkpoint {
		t.Fatalf("Reanchor returned %+v; anchor %+v", r, m.get(t))
	}
	if k := mustParse(t, readLines(t, path)[0]).Kind; k != KindContinued {
		t.Fatalf("first record of the current segment is %s", k)
	}
	segs, _ := Segments(path)
	rep, err := VerifyChain(segs, VerifyOptions{Keys: []crypto.PublicKey{key.Public()}, Anchor: m.get(t), RequireCheckpointAtEnd: true})
	if err != nil || len(rep.Reanchors) != 1 || rep.Reanchors[0].Previous != old {
		t.Fatalf("VerifyChain: %v, reanchors %+v\n%s", err, rep.Reanchors, problemList(rep.Problems))
	}
	mustOpen(t, path, key, Options{Anchor: m}).Close()
}

// TestMissingLogWithAnchor: a deleted log is refused without creating a
// file in its place (a refused start leaves data_dir as it found it, and an
// empty file must not pass for a log that reanchor could vouch for), and
// reanchor refuses a log that holds no records at all.
func TestMissingLogWithAnchor(t *testing.T) {
	_, key, m := anchoredLog(t)
	old := *m.get(t)
	dir := t.TempDir()
	p := filepath.Join(dir, "audit.log")
	am := &memAnchor{val: old.encode()}
	if _, err := Open(p, key, Options{Anchor: am}); !errors.Is(err, ErrTampered) {
		t.Fatalf("Open of a deleted log: %v, want ErrTampered", err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Fatalf("refused Open left %d files, e.g. %s", len(ents), ents[0].Name())
	}
	if _, err := Reanchor(p, key, Options{Anchor: am}, testOperator, "restored"); err == nil {
		t.Fatal("Reanchor of a missing log succeeded")
	}
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	before, was := snapshot(t, p, am)
	if _, err := Reanchor(p, key, Options{Anchor: am}, testOperator, "restored"); !errors.Is(err, ErrTampered) {
		t.Fatalf("Reanchor of an empty log: %v, want ErrTampered", err)
	}
	unchanged(t, p, before, am, was)
}
