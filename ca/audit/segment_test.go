package audit

import (
	"context"
	"crypto"
	"crypto/elliptic"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestRotate(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name string
		// run appends and rotates; it returns the Log still open (or nil).
		run      func(t *testing.T, path string, key crypto.Signer) *Log
		segments int
	}{
		{"manual rotate twice", func(t *testing.T, path string, key crypto.Signer) *Log {
			l := mustOpen(t, path, key, Options{})
			for r := 0; r < 2; r++ {
				appendN(t, l, 5)
				archived, err := l.Rotate(ctx)
				if err != nil || filepath.Base(archived) != filepath.Base(segmentName(path, uint64(7*r+6))) {
					t.Fatalf("rotate %d: %q %v", r, archived, err)
				}
			}
			appendN(t, l, 2)
			return l
		}, 3},
		{"rotate an empty log", func(t *testing.T, path string, key crypto.Signer) *Log {
			l := mustOpen(t, path, key, Options{})
			if archived, err := l.Rotate(ctx); archived != "" || err != nil {
				t.Fatalf("rotate of an empty log: %q %v", archived, err)
			}
			appendN(t, l, 1)
			return l
		}, 1},
		{"automatic by size", func(t *testing.T, path string, key crypto.Signer) *Log {
			l := mustOpen(t, path, key, Options{SegmentBytes: 4096})
			appendN(t, l, 60)
			return l
		}, 0},
		{"crash after rename", func(t *testing.T, path string, key crypto.Signer) *Log {
			l := mustOpen(t, path, key, Options{})
			appendN(t, l, 4)
			l.Close()
			os.Rename(path, segmentName(path, 5))
			l = mustOpen(t, path, key, Options{})
			appendN(t, l, 1)
			return l
		}, 2},
		{"crash after creating the new file", func(t *testing.T, path string, key crypto.Signer) *Log {
			l := mustOpen(t, path, key, Options{})
			appendN(t, l, 4)
			l.Close()
			os.Rename(path, segmentName(path, 5))
			os.WriteFile(path, nil, 0o600)
			return mustOpen(t, path, key, Options{})
		}, 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			key := newKey(t, elliptic.P256())
			path := filepath.Join(t.TempDir(), "audit.log")
			l := tc.run(t, path, key)
			head, hash := l.Head()
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			segs, err := Segments(path)
			if err != nil {
				t.Fatal(err)
			}
			if tc.segments > 0 && len(segs) != tc.segments || len(segs) < 2 && tc.segments != 1 {
				t.Fatalf("%d segments: %v", len(segs), segs)
			}
			opts := VerifyOptions{Keys: []crypto.PublicKey{key.Public()}, RequireCheckpointAtEnd: true}
			rep, err := VerifyChain(segs, opts)
			if err != nil {
				t.Fatalf("verify chain: %v\n%s", err, problemList(rep.Problems))
			}
			if rep.FirstSeq != 1 || rep.HeadSeq < head || rep.Records != int(rep.HeadSeq) {
				t.Fatalf("chain report first %d head %d records %d; log head %d", rep.FirstSeq, rep.HeadSeq, rep.Records, head)
			}
			if rep.HeadSeq == head && rep.HeadHash != hash {
				t.Fatal("head hash differs")
			}
			// Each segment also verifies on its own.
			for _, s := range segs {
				b, _ := os.ReadFile(s)
				if rep, err := verifyBytes(b, opts); err != nil {
					t.Fatalf("%s: %v\n%s", s, err, problemList(rep.Problems))
				}
			}
		})
	}
}

func TestVerifyChainDetectsMissingSegments(t *testing.T) {
	ctx := context.Background()
	key := newKey(t, elliptic.P256())
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.log")
	l := mustOpen(t, path, key, Options{})
	for r := 0; r < 3; r++ {
		appendN(t, l, 3)
		if _, err := l.Rotate(ctx); err != nil {
			t.Fatal(err)
		}
	}
	l.Close()
	segs, _ := Segments(path)
	if len(segs) != 4 {
		t.Fatalf("segments %v", segs)
	}
	other := writeLog(t, key, 3, Options{})
	opts := VerifyOptions{Keys: []crypto.PublicKey{key.Public()}}
	tests := []struct {
		name  string
		files []string
		kind  string
		seq   uint64
	}{
		{"middle segment missing", []string{segs[0], segs[2], segs[3]}, ProblemDropped, 5},
		{"first segment missing", segs[1:], ProblemDropped, 1},
		{"segments out of order", []string{segs[0], segs[2], segs[1], segs[3]}, ProblemDropped, 5},
		{"segment from another log", []string{other, segs[1]}, ProblemEdited, 5},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rep, err := VerifyChain(tc.files, opts)
			if !errors.Is(err, ErrTampered) {
				t.Fatalf("err %v", err)
			}
			if p := rep.Problems[0]; p.Kind != tc.kind || p.Seq != tc.seq || p.File == "" {
				t.Fatalf("want %s at seq %d, got\n%s", tc.kind, tc.seq, problemList(rep.Problems))
			}
		})
	}
}

func mustOpen(t *testing.T, path string, key crypto.Signer, opts Options) *Log {
	t.Helper()
	l, err := Open(path, key, opts)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func appendN(t *testing.T, l *Log, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		if _, err := l.Append(context.Background(), "entry.created", "operator:uid=0", map[string]int{"i": i}); err != nil {
			t.Fatal(err)
		}
	}
}
