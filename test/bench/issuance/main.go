// Command issuance measures, in one run, the raw SoftHSM2 ECDSA P-256 sign
// rate and the end-to-end durable X509-SVID issuance rate (CSR parsed and
// checked → HSM signature → serial recorded in bbolt with fsync → audit
// record fsynced → certificate returned) at 1, 2 and 8 concurrent clients,
// and prints them side by side with their ratio, the CPU the issuance cell
// used and how many records each journal fsync carried.
package main

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"flag"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/palisade-id/palisade/ca"
	"github.com/palisade-id/palisade/ca/audit"
	"github.com/palisade-id/palisade/ca/pkcs11"
	"github.com/palisade-id/palisade/ca/store"
	"github.com/palisade-id/palisade/test/softhsm"
)

type sink struct{ l *audit.Log }

func (s sink) Append(ctx context.Context, kind, actor string, data any) error {
	_, err := s.l.Append(ctx, kind, actor, data)
	return err
}

// cpuTime is the CPU time (user and system) this process has used, the
// SoftHSM2 module's included.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// rate runs op from n goroutines for d and returns operations per second.
func rate(n int, d time.Duration, op func() error) (float64, error) {
	var count atomic.Int64
	var firstErr atomic.Value
	deadline := time.Now().Add(d)
	start := time.Now()
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				if err := op(); err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
				count.Add(1)
			}
		}()
	}
	wg.Wait()
	if err, _ := firstErr.Load().(error); err != nil {
		return 0, err
	}
	return float64(count.Load()) / time.Since(start).Seconds(), nil
}

func main() {
	dur := flag.Duration("duration", 3*time.Second, "measuring time per cell")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of the whole run to this file")
	flag.Parse()
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
		defer pprof.StopCPUProfile()
	}
	if err := run(*dur); err != nil {
		pprof.StopCPUProfile()
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run(dur time.Duration) error {
	dir, err := os.MkdirTemp("", "palisade-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	tok, err := softhsm.Create(dir, "bench")
	if err != nil {
		return err
	}
	u, err := pkcs11.ParseURI(tok.TokenURI())
	if err != nil {
		return err
	}
	keys, err := pkcs11.Open(u)
	if err != nil {
		return err
	}
	defer keys.Close()
	st, err := store.Open(filepath.Join(dir, "palisade.db"), store.Options{})
	if err != nil {
		return err
	}
	defer st.Close()
	auditPath := filepath.Join(dir, "audit.log")
	var log *audit.Log
	cfg := ca.Config{TrustDomain: "bench.palisade.internal"}
	ctx := context.Background()
	if _, err := ca.Ceremony(ctx, cfg, keys, st, "bench", func(s crypto.Signer, c *x509.Certificate) (ca.Auditor, error) {
		log, err = audit.Open(auditPath, s, audit.Options{SignerCert: c})
		return sink{log}, err
	}, nil); err != nil {
		return err
	}
	defer log.Close()
	c, err := ca.Load(cfg, ca.Options{Keys: keys, Store: st, Audit: sink{log}})
	if err != nil {
		return err
	}
	signer, err := keys.GenerateSigner("bench-raw")
	if err != nil {
		return err
	}
	digest := sha256.Sum256([]byte("palisade"))
	wkey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	u2, _ := url.Parse("spiffe://bench.palisade.internal/workload")
	csrDER, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{u2}}, wkey)
	if err != nil {
		return err
	}
	issue := func() error {
		csr, err := ca.ParseCSR(csrDER, c.TrustDomain())
		if err != nil {
			return err
		}
		_, err = c.SignX509SVID(ctx, ca.X509Request{CSR: csr, Actor: "bench"})
		return err
	}
	sign := func() error { _, err := signer.Sign(rand.Reader, digest[:], crypto.SHA256); return err }

	fmt.Printf("SVID issuance vs raw HSM signing (SoftHSM2, ECDSA P-256, %s per cell, %d CPUs)\n\n", dur, runtime.NumCPU())
	fmt.Printf("%-8s %16s %22s %8s %14s %16s\n", "clients", "raw sign/s", "durable issuance/s", "ratio", "issuance CPU", "records/fsync")
	for _, n := range []int{1, 2, 8, 32} {
		raw, err := rate(n, dur, sign)
		if err != nil {
			return fmt.Errorf("raw sign: %w", err)
		}
		// CPU use and journal batching explain the ratio: whether the cell
		// was bound by the processors or by waiting for the disk.
		s0, err := st.Stats()
		if err != nil {
			return err
		}
		cpu0, start := cpuTime(), time.Now()
		iss, err := rate(n, dur, issue)
		if err != nil {
			return fmt.Errorf("issuance: %w", err)
		}
		cores := (cpuTime() - cpu0).Seconds() / time.Since(start).Seconds()
		s1, err := st.Stats()
		if err != nil {
			return err
		}
		perWrite := float64(s1.GroupRecords-s0.GroupRecords) / float64(max(s1.GroupCommits-s0.GroupCommits, 1))
		fmt.Printf("%-8d %16.0f %22.0f %7.0f%% %8.2f cores %16.1f\n", n, raw, iss, 100*iss/raw, cores, perWrite)
	}
	stats, err := st.Stats()
	if err != nil {
		return err
	}
	f, err := os.Open(auditPath)
	if err != nil {
		return err
	}
	defer f.Close()
	roots := x509.NewCertPool()
	roots.AddCert(c.Root())
	if _, err := log.Checkpoint(ctx); err != nil {
		return err
	}
	rep, err := audit.Verify(f, audit.VerifyOptions{Roots: roots})
	if err != nil {
		return fmt.Errorf("audit log after the run: %w", err)
	}
	fmt.Printf("\nrecorded certificates: %d; audit records: %d (chain and checkpoints verified)\n", stats.Certs, rep.Records)
	return nil
}
