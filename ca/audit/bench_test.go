package audit

import (
	"bytes"
	"context"
	"crypto"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

// BenchmarkAppend measures durable (fsynced) appends/s with GOMAXPROCS
// concurrent appenders: go test -run '^$' -bench Append -cpu 1,2,8 ./ca/audit/
func BenchmarkAppend(b *testing.B) {
	benchAppend(b, 1)
}

// BenchmarkAppendInflight models the CA with many issuances in flight
// (goroutines = GOMAXPROCS × inflight), which is what group commit batches.
func BenchmarkAppendInflight(b *testing.B) {
	for _, p := range []int{8, 32} {
		b.Run(fmt.Sprintf("x%d", p), func(b *testing.B) { benchAppend(b, p) })
	}
}

func benchAppend(b *testing.B, parallelism int) {
	key := newKey(b, elliptic.P256())
	l, err := Open(filepath.Join(b.TempDir(), "audit.log"), key, Options{})
	if err != nil {
		b.Fatal(err)
	}
	type issued struct {
		SPIFFEID string `json:"spiffe_id"`
		Serial   string `json:"serial"`
		NotAfter string `json:"not_after"`
	}
	data := issued{"spiffe://prod.example.org/ns/payments/sa/api", "5f2c9a0e4b7d11ee8c90a1b2c3d4e5f6", "2026-11-23T11:00:00Z"}
	b.SetParallelism(parallelism)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := l.Append(context.Background(), "x509svid.issued", "spiffe://prod.example.org/palisade/ca", data); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "appends/s")
	if err := l.Close(); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/float64(l.writes), "appends/fsync")
}

// BenchmarkVerify measures verification (and so Open) throughput in records/s.
func BenchmarkVerify(b *testing.B) {
	key := newKey(b, elliptic.P256())
	path := filepath.Join(b.TempDir(), "audit.log")
	l, err := Open(path, key, Options{})
	if err != nil {
		b.Fatal(err)
	}
	var wg sync.WaitGroup
	for w := 0; w < 64; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 20000/64; i++ {
				if _, err := l.Append(context.Background(), "x509svid.issued", "spiffe://example.org/ca", map[string]int{"i": i}); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if err := l.Close(); err != nil {
		b.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		b.Fatal(err)
	}
	opts := VerifyOptions{Keys: []crypto.PublicKey{key.Public()}, RequireCheckpointAtEnd: true}
	b.SetBytes(int64(len(data)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := Verify(bytes.NewReader(data), opts); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)*float64(bytes.Count(data, []byte("\n")))/b.Elapsed().Seconds(), "records/s")
}

// BenchmarkSignThenAppend models issuance: an ECDSA P-256 signature (the
// in-memory stand-in for the HSM) followed by a durable append, with
// GOMAXPROCS×16 issuances in flight. Compare with sign=only.
func BenchmarkSignThenAppend(b *testing.B) {
	for _, withAudit := range []bool{false, true} {
		name := "sign=only"
		if withAudit {
			name = "sign+append"
		}
		b.Run(name, func(b *testing.B) {
			key := newKey(b, elliptic.P256())
			l, err := Open(filepath.Join(b.TempDir(), "audit.log"), key, Options{})
			if err != nil {
				b.Fatal(err)
			}
			defer l.Close()
			digest := sha256.Sum256([]byte("tbs certificate"))
			b.SetParallelism(16)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					sig, err := key.Sign(rand.Reader, digest[:], crypto.SHA256)
					if err != nil {
						b.Error(err)
						return
					}
					if !withAudit {
						continue
					}
					if _, err := l.Append(context.Background(), "x509svid.issued", "spiffe://example.org/ca", map[string]any{"sig_len": len(sig)}); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "issuances/s")
		})
	}
}
