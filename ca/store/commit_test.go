package store

import (
	"errors"
	"math/big"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Concurrent durable callers share journal writes, and a duplicate serial
// gets its own error without failing the others.
func TestGroupCommit(t *testing.T) {
	s, err := Open(filepath.Join(t.TempDir(), "ca.db"), Options{MaxBatchSize: 16})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const callers, per = 32, 8
	var ok, dup atomic.Int64
	var wg sync.WaitGroup
	for g := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range per {
				// Pairs of callers race for the same serials.
				err := s.RecordIssued(svid(int64((g/2)*per+i+1), "spiffe://example.org/w", nodeA))
				switch {
				case err == nil:
					ok.Add(1)
				case errors.Is(err, ErrSerialExists):
					dup.Add(1)
				default:
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	st := stats(t, s)
	if ok.Load() != callers*per/2 || dup.Load() != callers*per/2 || st.Certs != callers*per/2 {
		t.Fatalf("%d recorded, %d duplicates, %d stored; want %d each", ok.Load(), dup.Load(), st.Certs, callers*per/2)
	}
	if st.GroupRecords != callers*per/2 {
		t.Fatalf("journal wrote %d records, want %d (duplicates are refused before the write)", st.GroupRecords, callers*per/2)
	}
	if st.GroupCommits >= st.GroupRecords {
		t.Fatalf("%d commits for %d calls: nothing was batched", st.GroupCommits, st.GroupRecords)
	}
	if avg := float64(st.GroupRecords) / float64(st.GroupCommits); avg > 16 {
		t.Fatalf("mean batch %.1f exceeds MaxBatchSize 16", avg)
	}
	t.Logf("%d calls in %d commits", st.GroupRecords, st.GroupCommits)
	for n := int64(1); n <= callers*per/2; n++ {
		if _, err := s.Cert(big.NewInt(n)); err != nil {
			t.Fatalf("serial %d: %v", n, err)
		}
	}
}

// A serial stays taken while the applier moves it from the journal into the
// B-tree: retries that race the move must all be refused.
func TestSerialUniqueDuringApply(t *testing.T) {
	s, err := Open(filepath.Join(t.TempDir(), "ca.db"), Options{ApplyInterval: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const serials, racers = 300, 4
	for n := int64(1); n <= serials; n++ {
		if err := s.RecordIssued(svid(n, "spiffe://example.org/w", nodeA)); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		for range racers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				// Spread the retries over a few apply rounds.
				for range 5 {
					if err := s.RecordIssued(svid(n, "spiffe://example.org/other", nodeA)); !errors.Is(err, ErrSerialExists) {
						t.Errorf("serial %d recorded twice: %v", n, err)
						return
					}
					time.Sleep(100 * time.Microsecond)
				}
			}()
		}
		wg.Wait()
		if t.Failed() {
			return
		}
	}
	if st := stats(t, s); st.Certs != serials {
		t.Fatalf("%d stored, want %d", st.Certs, serials)
	}
}
