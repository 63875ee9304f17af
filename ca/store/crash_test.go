package store

import (
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/palisade-id/palisade/test/crashtest"
)

func TestMain(m *testing.M) {
	if spec, ok := crashtest.Child("STORE"); ok {
		crashChild(spec)
		return
	}
	os.Exit(m.Run())
}

// crashChild records certificates from several goroutines as fast as it can
// and prints each one only after RecordIssued (or Revoke) returned: those
// are the acknowledged writes the parent checks after SIGKILL.
func crashChild(spec string) {
	path, baseStr, _ := strings.Cut(spec, "|")
	base, err := strconv.ParseInt(baseStr, 10, 64)
	if err != nil {
		crashtest.Fail("spec", err)
	}
	s, err := Open(path, Options{})
	if err != nil {
		crashtest.Fail("open", err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	next := base
	for range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				mu.Lock()
				next++
				n := next
				mu.Unlock()
				r := svid(n, "spiffe://example.org/crash", nodeA)
				if err := s.RecordIssued(r); err != nil {
					crashtest.Fail("record", err)
				}
				fmt.Fprintf(os.Stdout, "ok %d\n", n)
				if n%5 == 0 {
					rec, err := s.Revoke(r.Serial, 1, t0)
					if err != nil {
						crashtest.Fail("revoke", err)
					}
					fmt.Fprintf(os.Stdout, "rev %d %d\n", n, rec.RevokeSeq)
				}
			}
		}()
	}
	wg.Wait()
}

// TestKill9 SIGKILLs a process in the middle of durable writes, several
// times, and checks every acknowledged write survived and the file is
// consistent (full page check and recount).
func TestKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns processes")
	}
	path := filepath.Join(t.TempDir(), "ca.db")
	acked := map[int64]uint64{} // serial → RevokeSeq (0: valid)
	for round := range 3 {
		// Kill at a different point each round, mid-stream.
		lines := crashtest.Kill(t, crashtest.Run{Name: "STORE", Arg: fmt.Sprintf("%s|%d", path, int64(round+1)<<32),
			Acks: 150 + 120*round, IsAck: func(l string) bool { return strings.HasPrefix(l, "ok ") }})
		for _, l := range lines {
			f := strings.Fields(l)
			serial, _ := strconv.ParseInt(f[1], 10, 64)
			if f[0] == "ok" {
				acked[serial] = 0
			} else if f[0] == "rev" {
				acked[serial], _ = strconv.ParseUint(f[2], 10, 64)
			}
		}

		s, err := Open(path, Options{Verify: true})
		if err != nil {
			t.Fatalf("round %d: reopen after SIGKILL: %v", round, err)
		}
		for serial, seq := range acked {
			r, err := s.Cert(big.NewInt(serial))
			if err != nil {
				t.Fatalf("round %d: acknowledged serial %d lost: %v", round, serial, err)
			}
			if seq != 0 && (r.Status != CertRevoked || r.RevokeSeq != seq) {
				t.Fatalf("round %d: acknowledged revocation of %d (seq %d) lost: %+v", round, serial, seq, r)
			}
		}
		last, err := s.LastRevocationSeq()
		if err != nil {
			t.Fatal(err)
		}
		log, err := s.RevocationsSince(0, MaxRevocationsPage)
		if err != nil || uint64(len(log)) != last {
			t.Fatalf("round %d: revocation log has %d entries (%v), last seq %d", round, len(log), err, last)
		}
		t.Logf("round %d: %d acknowledged serials intact, %d revocations", round, len(acked), last)
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
}
