package pkcs11

import (
	"crypto"
	"crypto/sha256"
	"crypto/sha512"
	"testing"
)

// BenchmarkSign measures raw ECDSA P-256 signing inside the token, with
// GOMAXPROCS goroutines (run with -cpu 1,2).
func BenchmarkSign(b *testing.B) { benchSign(b, ECDSAP256) }

// BenchmarkSignP384 is BenchmarkSign for ECDSA P-384.
func BenchmarkSignP384(b *testing.B) { benchSign(b, ECDSAP384) }

func benchSign(b *testing.B, alg Algorithm) {
	tok := openToken(b)
	s, err := tok.GenerateSignerAlg(uniqueLabel("bench-"+alg.String()), alg)
	if err != nil {
		b.Fatal(err)
	}
	var digest []byte
	var h crypto.Hash
	if alg == ECDSAP384 {
		d := sha512.Sum384([]byte("palisade"))
		digest, h = d[:], crypto.SHA384
	} else {
		d := sha256.Sum256([]byte("palisade"))
		digest, h = d[:], crypto.SHA256
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := s.Sign(nil, digest, h); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "signs/s")
}
