package store

import (
	"crypto/rand"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// BenchmarkRecordIssued measures durable (fsynced) records per second with
// GOMAXPROCS concurrent callers: go test -bench RecordIssued -cpu 1,2,8.
func BenchmarkRecordIssued(b *testing.B) {
	benchRecord(b, Options{})
}

// BenchmarkRecordIssuedCallers fixes the number of concurrent callers
// whatever -cpu is: a durable record costs one commit (two fdatasyncs in
// bbolt), so throughput is callers per batch over the commit time.
func BenchmarkRecordIssuedCallers(b *testing.B) {
	for _, callers := range []int{1, 8, 64, 256} {
		b.Run(fmt.Sprintf("callers=%d", callers), func(b *testing.B) {
			s, err := Open(filepath.Join(b.TempDir(), "ca.db"), Options{})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			var next atomic.Int64
			var wg sync.WaitGroup
			b.ResetTimer()
			for range callers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						n := next.Add(1)
						if n > int64(b.N) {
							return
						}
						if err := s.RecordIssued(benchRecordOf(n)); err != nil {
							b.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
		})
	}
}

// benchRecordOf is an SVID record with a random 128-bit serial, as the CA
// issues them (random keys dirty more pages per commit than sequential ones).
func benchRecordOf(n int64) CertRecord {
	var raw [16]byte
	_, _ = rand.Read(raw[:])
	r := svid(n, fmt.Sprintf("spiffe://example.org/ns/default/sa/web-%d", n%500), fmt.Sprintf("spiffe://example.org/spire/agent/tpm/%d", n%50))
	r.Serial = new(big.Int).SetBytes(raw[:])
	r.Serial.SetBit(r.Serial, 127, 1)
	r.NotBefore = time.Now()
	r.NotAfter = r.NotBefore.Add(time.Hour)
	return r
}

// BenchmarkCommit is the floor under RecordIssued: one durable bbolt commit
// of one small key (two fdatasyncs). N concurrent callers can record at most
// N per commit.
func BenchmarkCommit(b *testing.B) {
	s, err := Open(filepath.Join(b.TempDir(), "ca.db"), Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	for b.Loop() {
		if err := s.PutMeta("k", []byte("v")); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "commits/s")
}

func benchRecord(b *testing.B, opts Options) {
	s, err := Open(filepath.Join(b.TempDir(), "ca.db"), opts)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	var next atomic.Int64
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := s.RecordIssued(benchRecordOf(next.Add(1))); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
}

const revokedScanN = 1_000_000

var (
	revokedOnce sync.Once
	revokedPath string
	revokedErr  error
)

// revokedDB builds, once per process, a store whose issuer issuerA has 1M
// revoked certificates with random serials, written straight into the
// buckets in large transactions (the build is not what is measured).
func revokedDB(b *testing.B) string {
	revokedOnce.Do(func() {
		dir, err := os.MkdirTemp("", "store-bench-")
		if err != nil {
			revokedErr = err
			return
		}
		revokedPath = filepath.Join(dir, "ca.db")
		s, err := Open(revokedPath, Options{NoSync: true})
		if err != nil {
			revokedErr = err
			return
		}
		defer s.Close()
		var seq uint64
		for done := 0; done < revokedScanN && revokedErr == nil; done += 100_000 {
			revokedErr = s.update("fill", func(tx *bolt.Tx) error {
				ib, err := tx.Bucket(bucketRevoked).CreateBucketIfNotExists([]byte(issuerA))
				if err != nil {
					return err
				}
				ib.FillPercent = 0.9
				var raw [16]byte
				for range 100_000 {
					_, _ = rand.Read(raw[:])
					r := svid(1, "spiffe://example.org/ns/default/sa/web", nodeA)
					r.Serial = new(big.Int).SetBytes(raw[:])
					seq++
					r.Status, r.Reason, r.RevokedAt, r.RevokeSeq = CertRevoked, 1, t0, seq
					key, _ := serialKey(r.Serial)
					if err := ib.Put(key, encodeCert(&r)); err != nil {
						return err
					}
				}
				return nil
			})
		}
	})
	if revokedErr != nil {
		b.Fatal(revokedErr)
	}
	return revokedPath
}

// BenchmarkRevokedScan streams 1M revoked records of one issuer (what a CRL
// build reads): go test -bench RevokedScan -benchtime 5x.
func BenchmarkRevokedScan(b *testing.B) {
	path := revokedDB(b)
	s, err := Open(path, Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	b.ResetTimer()
	for b.Loop() {
		n := 0
		if err := s.ForEachRevoked(issuerA, func(CertRecord) error { n++; return nil }); err != nil {
			b.Fatal(err)
		}
		if n != revokedScanN {
			b.Fatalf("scanned %d, want %d", n, revokedScanN)
		}
	}
	b.ReportMetric(float64(b.N)*revokedScanN/b.Elapsed().Seconds(), "records/s")
}
