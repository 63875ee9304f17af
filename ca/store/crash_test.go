package store

import (
	"bufio"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const crashChildEnv = "PALISADE_STORE_CRASH_CHILD"

func TestMain(m *testing.M) {
	if spec := os.Getenv(crashChildEnv); spec != "" {
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
		fmt.Fprintln(os.Stderr, "bad spec", spec)
		os.Exit(2)
	}
	s, err := Open(path, Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, "open:", err)
		os.Exit(2)
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
					fmt.Fprintln(os.Stderr, "record:", err)
					os.Exit(2)
				}
				fmt.Fprintf(os.Stdout, "ok %d\n", n)
				if n%5 == 0 {
					rec, err := s.Revoke(r.Serial, 1, t0)
					if err != nil {
						fmt.Fprintln(os.Stderr, "revoke:", err)
						os.Exit(2)
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
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s|%d", crashChildEnv, path, int64(round+1)<<32))
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		pid := cmd.Process.Pid
		t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
		// Kill at a different point each round, mid-stream.
		target := 150 + 120*round
		sc := bufio.NewScanner(out)
		n := 0
		deadline := time.AfterFunc(60*time.Second, func() { _ = cmd.Process.Kill() })
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			serial, _ := strconv.ParseInt(f[1], 10, 64)
			switch f[0] {
			case "ok":
				acked[serial] = 0
				n++
			case "rev":
				seq, _ := strconv.ParseUint(f[2], 10, 64)
				acked[serial] = seq
			}
			if n == target {
				if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
					t.Fatal(err)
				}
				break
			}
		}
		deadline.Stop()
		// Drain lines written before the kill landed: they were acknowledged too.
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			serial, _ := strconv.ParseInt(f[1], 10, 64)
			if f[0] == "ok" {
				acked[serial] = 0
			} else if f[0] == "rev" {
				acked[serial], _ = strconv.ParseUint(f[2], 10, 64)
			}
		}
		_ = cmd.Wait()
		if n < target {
			t.Fatalf("round %d: child stopped after %d acks: %s", round, n, stderr.String())
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
