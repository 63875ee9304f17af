//go:build integration

package crl

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/palisade-id/palisade/ca/store"
	"github.com/palisade-id/palisade/crl"
	"github.com/palisade-id/palisade/crl/castore"
	"github.com/palisade-id/palisade/test/testca"
	"github.com/palisade-id/palisade/test/testenv"
)

// fillRevoked records n certificates of one node through the store's public
// API (concurrent RecordIssued, group-committed) and revokes them all with
// one RevokeNode transaction.
func fillRevoked(b *testing.B, path, issuer string, n int) {
	st, err := store.Open(path, store.Options{NoSync: true})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	now := time.Now()
	var next atomic.Int64
	var wg sync.WaitGroup
	var failed atomic.Value
	for w := 0; w < 128; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var raw [16]byte
			for next.Add(1) <= int64(n) {
				rand.Read(raw[:])
				raw[0] = 1
				err := st.RecordIssued(store.CertRecord{Serial: new(big.Int).SetBytes(raw[:]), SPIFFEID: "spiffe://example.org/w",
					NodeID: "spiffe://example.org/node/big", IssuerKeyID: issuer, Kind: store.KindX509SVID,
					NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour)})
				if err != nil {
					failed.Store(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if err, _ := failed.Load().(error); err != nil {
		b.Fatal(err)
	}
	got, err := st.RevokeNode("spiffe://example.org/node/big", crl.ReasonKeyCompromise, now)
	if err != nil || len(got) != n {
		b.Fatalf("RevokeNode: %d %v", len(got), err)
	}
}

// filled caches one filled store per size for the process: the benchmark
// function runs more than once per size.
var filled = map[int]string{}

func filledStore(b *testing.B, issuer string, n int) string {
	if p, ok := filled[n]; ok {
		return p
	}
	dir, err := os.MkdirTemp("", "crl-bench-")
	if err != nil {
		b.Fatal(err)
	}
	benchDirs = append(benchDirs, dir)
	path := filepath.Join(dir, "ca.db")
	t0 := time.Now()
	fillRevoked(b, path, issuer, n)
	b.Logf("filled %d revoked records in %v", n, time.Since(t0))
	filled[n] = path
	return path
}

// BenchmarkCRLFromStore builds and signs the full CRL of an issuer with N
// revoked certificates read from the CA's bbolt store: the whole path a
// revocation triggers (store scan + encode + sign). The store is filled
// once per size and not measured.
func BenchmarkCRLFromStore(b *testing.B) {
	ca := testca.New(b, "example.org")
	issuer := hex.EncodeToString(ca.Intermediate().SubjectKeyId)
	for _, n := range []int{10_000, 100_000, 1_000_000} {
		b.Run(fmt.Sprintf("entries=%d", n), func(b *testing.B) {
			path := filledStore(b, issuer, n)
			st, err := store.Open(path, store.Options{})
			if err != nil {
				b.Fatal(err)
			}
			defer st.Close()
			src := castore.New(st)
			heapPeak := testenv.HeapPeak()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				count := 0
				_, err := crl.EncodeCRL(crl.CRLTemplate{Issuer: ca.Intermediate(), Signer: ca.IssuerSigner(), Number: uint64(i + 1),
					ThisUpdate: time.Now(), NextUpdate: time.Now().Add(time.Hour)}, n,
					func(fn func(*big.Int, time.Time, int) error) error {
						return src.ForEachRevoked(issuer, time.Time{}, func(c crl.CertInfo) error {
							count++
							return fn(c.Serial, c.RevokedAt, c.Reason)
						})
					})
				if err != nil || count != n {
					b.Fatalf("%d entries, %v", count, err)
				}
			}
			b.StopTimer()
			b.ReportMetric(heapPeak(), "peak_heap_MB")
		})
	}
}
