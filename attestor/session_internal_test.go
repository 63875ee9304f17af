package attestor

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"net/url"
	"testing"

	"github.com/palisade-id/palisade/attestor/attestorpb"
	"github.com/palisade-id/palisade/attestor/verify"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
)

// testCSR is sharedNode's CSR in example.org.
func testCSR(tb testing.TB) []byte {
	h, _ := verify.HashPublicKey(&sharedNode().EKKey.PublicKey)
	id, err := verify.NodeID(spiffeid.RequireTrustDomainFromString("example.org"), h)
	if err != nil {
		tb.Fatal(err)
	}
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id.URL()}}, k)
	if err != nil {
		tb.Fatal(err)
	}
	return der
}

// honest runs a full session in process and returns the messages sent.
func honest(tb testing.TB, s *Service) []*attestorpb.NodeMessage {
	tb.Helper()
	n := sharedNode()
	ctx := context.Background()
	ss := s.newSession("test")
	var sent []*attestorpb.NodeMessage
	step := func(m *attestorpb.NodeMessage) *attestorpb.ServerMessage {
		sent = append(sent, m)
		r, err := ss.step(ctx, m)
		if err != nil {
			tb.Fatalf("honest session refused: %v", err)
		}
		return r
	}
	r := step(&attestorpb.NodeMessage{Msg: &attestorpb.NodeMessage_Hello{Hello: &attestorpb.Hello{
		EkPublic: n.EKPublic, AkPublic: n.AKPublic, Csr: testCSR(tb)}}})
	secret, err := n.Activate(n.AKName, r.GetChallenge().GetIdObject(), r.GetChallenge().GetEncryptedSecret())
	if err != nil {
		tb.Fatal(err)
	}
	r = step(&attestorpb.NodeMessage{Msg: &attestorpb.NodeMessage_Activation{Activation: &attestorpb.ActivationProof{Secret: secret}}})
	q, sig, vals, err := n.Quote(r.GetQuoteRequest().GetNonce(), r.GetQuoteRequest().GetPcrs())
	if err != nil {
		tb.Fatal(err)
	}
	var pv []*attestorpb.PCRValue
	for _, i := range r.GetQuoteRequest().GetPcrs() {
		pv = append(pv, &attestorpb.PCRValue{Index: i, Digest: vals[i]})
	}
	if r = step(&attestorpb.NodeMessage{Msg: &attestorpb.NodeMessage_Quote{Quote: &attestorpb.QuoteResponse{
		Quoted: q, Signature: sig, PcrValues: pv}}}); r.GetResult() == nil {
		tb.Fatal("no result")
	}
	return sent
}

func TestSessionInProcess(t *testing.T) {
	s, st, _ := newTestService(t)
	honest(t, s)
	if len(st.nodes) != 1 {
		t.Fatalf("%d node records", len(st.nodes))
	}
}

// FuzzSession feeds arbitrary wire bytes as each protocol message, starting
// from seeds of a real session. Whatever the bytes, a session either
// refuses with a clear error or follows the protocol; garbage never creates
// node records, and only a complete valid session issues.
func FuzzSession(f *testing.F) {
	s, _, _ := newTestService(f)
	for _, m := range honest(f, s) {
		b, _ := proto.Marshal(m)
		f.Add(b, []byte{}, []byte{})
	}
	f.Add([]byte{0x0a, 0x02, 0x0a, 0x00}, []byte{0x12, 0x00}, []byte{0x1a, 0x00})
	f.Fuzz(func(t *testing.T, m1, m2, m3 []byte) {
		s, st, _ := newTestService(t)
		ss := s.newSession("fuzz")
		for _, raw := range [][]byte{m1, m2, m3} {
			var msg attestorpb.NodeMessage
			if err := proto.Unmarshal(raw, &msg); err != nil {
				return
			}
			_, err := ss.step(context.Background(), &msg)
			if err != nil {
				// Untrusted input is refused, never an internal failure.
				if c := Code(err); c != codes.InvalidArgument && c != codes.PermissionDenied {
					t.Fatalf("garbage input gave %v: %v", c, err)
				}
				break
			}
		}
		if len(st.nodes) != 0 && ss.state != done {
			t.Fatal("node record written by an incomplete session")
		}
		if ss.state == done && !bytes.Equal(ss.ek.PKIX, mustPKIX(t)) {
			t.Fatal("session completed for an unknown EK")
		}
	})
}

func mustPKIX(t *testing.T) []byte {
	ek, err := verify.ParseEKPublic(sharedNode().EKPublic)
	if err != nil {
		t.Fatal(err)
	}
	return ek.PKIX
}
