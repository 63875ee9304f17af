package store

import (
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// crashCopy copies the database and its journal segments as a crash would
// leave them: acknowledged records still only in the journal.
func crashCopy(t *testing.T, s *Store) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "ca.db")
	segs, err := segments(s.path)
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]string{s.path: dst}
	for _, n := range segs {
		files[segmentName(s.path, n)] = segmentName(dst, n)
	}
	for from, to := range files {
		b, err := os.ReadFile(from)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(to, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

func TestJournalReplay(t *testing.T) {
	tests := []struct {
		name    string
		damage  func(t *testing.T, db string)
		wantErr error
		want    int // records present after reopening
	}{
		{"clean", nil, nil, 50},
		{"torn-final-frame", func(t *testing.T, db string) {
			appendTo(t, lastSegment(t, db), []byte{0, 0, 0, 90, 1, 2, 3, 4, 5})
		}, nil, 50},
		{"torn-final-header", func(t *testing.T, db string) {
			appendTo(t, lastSegment(t, db), []byte{0, 0})
		}, nil, 50},
		{"flipped-byte-mid-segment", func(t *testing.T, db string) {
			p := lastSegment(t, db)
			b, _ := os.ReadFile(p)
			b[20] ^= 0xff
			os.WriteFile(p, b, 0o600)
		}, ErrCorrupt, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := Open(filepath.Join(t.TempDir(), "ca.db"), Options{ApplyInterval: time.Hour})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			for i := 1; i <= 50; i++ {
				if err := s.RecordIssued(svid(int64(i), "spiffe://example.org/w", nodeA)); err != nil {
					t.Fatal(err)
				}
			}
			// Visible before it is applied.
			if _, err := s.Cert(big.NewInt(7)); err != nil {
				t.Fatalf("journaled record not visible: %v", err)
			}
			db := crashCopy(t, s)
			if tt.damage != nil {
				tt.damage(t, db)
			}
			c, err := Open(db, Options{})
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Open = %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Open after crash: %v", err)
			}
			defer c.Close()
			st, err := c.Stats()
			if err != nil || st.Certs != uint64(tt.want) {
				t.Fatalf("Certs = %d (%v), want %d", st.Certs, err, tt.want)
			}
			if segs, _ := segments(db); len(segs) != 1 {
				t.Fatalf("%d journal segments after replay, want 1 fresh one", len(segs))
			}
			if err := c.RecordIssued(svid(3, "spiffe://example.org/w", nodeA)); !errors.Is(err, ErrSerialExists) {
				t.Fatalf("replayed serial reusable: %v", err)
			}
		})
	}
}

func TestJournalAppliedAndRemoved(t *testing.T) {
	s, err := Open(filepath.Join(t.TempDir(), "ca.db"), Options{ApplyInterval: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 20; i++ {
		if err := s.RecordIssued(svid(int64(i), "spiffe://example.org/w", nodeA)); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for s.pendingCount() > 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if n := s.pendingCount(); n != 0 {
		t.Fatalf("%d records never applied", n)
	}
	path := s.path
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if segs, _ := segments(path); len(segs) != 0 {
		t.Fatalf("Close left %d journal segments", len(segs))
	}
}

func lastSegment(t *testing.T, db string) string {
	t.Helper()
	segs, err := segments(db)
	if err != nil || len(segs) == 0 {
		t.Fatalf("no journal segment: %v", err)
	}
	return segmentName(db, segs[len(segs)-1])
}

func appendTo(t *testing.T, path string, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(b); err != nil {
		t.Fatal(err)
	}
}
