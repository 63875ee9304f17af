package attestor

import (
	"context"
	"encoding/binary"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/palisade-id/palisade/attestor/attestorpb"
)

// BenchmarkVerifyAttestation measures the server side of one attestation
// with no TPM in the loop: EK parse and manifest lookup, ban check, AK and
// CSR checks, MakeCredential, activation check, nonce issue and consume,
// quote signature, PCR digest and golden policy checks, node record update
// (in memory) and issuance (static). The node's work (decrypting the
// credential, signing quotes) is precomputed. Run with -cpu 1,2.
func BenchmarkVerifyAttestation(b *testing.B) {
	// renewal: the EK parse is cached, as for a node that attested before.
	b.Run("renewal", func(b *testing.B) { benchVerify(b, false) })
	// first-contact: every EK is parsed and checked from scratch.
	b.Run("first-contact", func(b *testing.B) { benchVerify(b, true) })
}

func benchVerify(b *testing.B, cold bool) {
	s, _, _ := newTestService(b)
	s.ekCache.disabled = cold
	n := sharedNode()
	secret := make([]byte, 32)
	s.newSecret = func() ([]byte, error) { return secret, nil }
	var next atomic.Uint64
	s.newNonce = func() ([]byte, error) {
		nonce := make([]byte, 32)
		binary.BigEndian.PutUint64(nonce, next.Add(1))
		return nonce, nil
	}
	pcrs := []uint32{0, 7}
	hello := &attestorpb.NodeMessage{Msg: &attestorpb.NodeMessage_Hello{Hello: &attestorpb.Hello{
		EkPublic: n.EKPublic, AkPublic: n.AKPublic, Csr: testCSR(b)}}}
	act := &attestorpb.NodeMessage{Msg: &attestorpb.NodeMessage_Activation{Activation: &attestorpb.ActivationProof{Secret: secret}}}
	quotes := make([]*attestorpb.NodeMessage, b.N)
	for i := range quotes {
		nonce := make([]byte, 32)
		binary.BigEndian.PutUint64(nonce, uint64(i+1))
		q, sig, vals, err := n.Quote(nonce, pcrs)
		if err != nil {
			b.Fatal(err)
		}
		quotes[i] = &attestorpb.NodeMessage{Msg: &attestorpb.NodeMessage_Quote{Quote: &attestorpb.QuoteResponse{
			Quoted: q, Signature: sig, PcrValues: []*attestorpb.PCRValue{{Index: 0, Digest: vals[0]}, {Index: 7, Digest: vals[7]}}}}}
	}
	ctx := context.Background()
	cpu0 := cpuTime()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			ss := s.newSession("bench")
			if _, err := ss.step(ctx, hello); err != nil {
				b.Error(err)
				return
			}
			if _, err := ss.step(ctx, act); err != nil {
				b.Error(err)
				return
			}
			// The session's nonce number picks the quote signed over it.
			i := binary.BigEndian.Uint64(ss.nonce) - 1
			if _, err := ss.step(ctx, quotes[i]); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "attestations/s")
	// CPU time per attestation is robust to a loaded host: 1e6/cpu-µs is
	// the rate one fully available core sustains.
	b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/float64(b.N), "cpu-µs/op")
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
