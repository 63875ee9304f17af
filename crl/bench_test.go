package crl

import (
	"crypto/x509"
	"fmt"
	"math/big"
	"testing"
	"time"

	"github.com/palisade-id/palisade/test/testca"
	"github.com/palisade-id/palisade/test/testenv"
)

// synthWalk yields n distinct 17-byte serials (as the CA issues) without
// holding them, so the benchmark measures the encoder, not a store.
func synthWalk(n int) Walk {
	return func(fn func(*big.Int, time.Time, int) error) error {
		s := new(big.Int)
		base := new(big.Int).Lsh(big.NewInt(1), 128)
		at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
		for i := 0; i < n; i++ {
			s.SetUint64(uint64(i)*0x9e3779b97f4a7c15 + 1)
			s.Add(s, base)
			if err := fn(s, at.Add(time.Duration(i)*time.Second), i%6); err != nil {
				return err
			}
		}
		return nil
	}
}

// BenchmarkCRLBuild builds and signs full CRLs of 10k, 100k and 1M
// entries; peak_heap_MB samples the live heap during the build.
func BenchmarkCRLBuild(b *testing.B) {
	ca := testca.New(b, "example.org")
	for _, n := range []int{10_000, 100_000, 1_000_000} {
		b.Run(fmt.Sprintf("entries=%d", n), func(b *testing.B) {
			heapPeak := testenv.HeapPeak()
			b.ReportAllocs()
			b.ResetTimer()
			var size int
			for i := 0; i < b.N; i++ {
				der, err := EncodeCRL(CRLTemplate{Issuer: ca.Intermediate(), Signer: ca.IssuerSigner(), Number: uint64(i + 1),
					ThisUpdate: time.Now(), NextUpdate: time.Now().Add(time.Hour)}, n, synthWalk(n))
				if err != nil {
					b.Fatal(err)
				}
				size = len(der)
			}
			b.StopTimer()
			b.ReportMetric(heapPeak(), "peak_heap_MB")
			b.ReportMetric(float64(size)/(1<<20), "crl_MB")
		})
	}
}

func TestEncodeCRLLargeParses(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	ca := testca.New(t, "example.org")
	const n = 360_000 // > 16 MiB: exercises 4-byte DER lengths
	der, err := EncodeCRL(CRLTemplate{Issuer: ca.Intermediate(), Signer: ca.IssuerSigner(), Number: 7,
		ThisUpdate: time.Now(), NextUpdate: time.Now().Add(time.Hour)}, n, synthWalk(n))
	if err != nil {
		t.Fatal(err)
	}
	rl, err := x509.ParseRevocationList(der)
	if err != nil {
		t.Fatal(err)
	}
	if err := rl.CheckSignatureFrom(ca.Intermediate()); err != nil {
		t.Fatal(err)
	}
	if len(rl.RevokedCertificateEntries) != n {
		t.Fatalf("%d entries", len(rl.RevokedCertificateEntries))
	}
}
