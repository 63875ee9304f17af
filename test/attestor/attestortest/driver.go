package attestortest

import (
	"context"
	"testing"

	"github.com/palisade-id/palisade/attestor/agent"
	"github.com/palisade-id/palisade/attestor/attestorpb"
)

// Driver speaks the node side of the Attest protocol one message at a time,
// so that a test can tamper with any step (agent.Attest only runs it
// honestly).
type Driver struct {
	t      testing.TB
	stream attestorpb.Attestor_AttestClient
}

// NewDriver opens an Attest stream on client.
func NewDriver(t testing.TB, client attestorpb.AttestorClient) *Driver {
	t.Helper()
	s, err := client.Attest(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return &Driver{t: t, stream: s}
}

// Send sends m and returns the server's reply. A server that has already
// ended the stream fails the send with io.EOF; the error is then the status
// it ended the stream with.
func (d *Driver) Send(m *attestorpb.NodeMessage) (*attestorpb.ServerMessage, error) {
	if err := d.stream.Send(m); err != nil {
		_, rerr := d.stream.Recv()
		return nil, rerr
	}
	return d.stream.Recv()
}

// UpToQuote runs hello (with tpm's own AK, a CSR for its node ID in trust
// domain td and ekIntermediates) and activation honestly and returns the
// quote request; it fails the test if the server refuses either.
func (d *Driver) UpToQuote(td string, tpm agent.TPM, ekIntermediates ...[]byte) *attestorpb.QuoteRequest {
	d.t.Helper()
	m, err := d.Send(Hello(tpm, tpm.AKPublic(), CSR(d.t, td, tpm), ekIntermediates...))
	if err != nil {
		d.t.Fatalf("hello: %v", err)
	}
	secret, err := tpm.ActivateCredential(m.GetChallenge().GetIdObject(), m.GetChallenge().GetEncryptedSecret())
	if err != nil {
		d.t.Fatal(err)
	}
	if m, err = d.Send(ActivationProof(secret)); err != nil {
		d.t.Fatalf("activation: %v", err)
	}
	return m.GetQuoteRequest()
}

// Hello is tpm's opening message presenting akPub as its AK: a test may
// name a key that is not tpm's.
func Hello(tpm agent.TPM, akPub, csr []byte, ekIntermediates ...[]byte) *attestorpb.NodeMessage {
	return &attestorpb.NodeMessage{Msg: &attestorpb.NodeMessage_Hello{Hello: &attestorpb.Hello{
		EkPublic: tpm.EKPublic(), EkCert: tpm.EKCert(), EkIntermediates: ekIntermediates,
		AkPublic: akPub, Csr: csr}}}
}

// ActivationProof is the message answering the credential challenge.
func ActivationProof(secret []byte) *attestorpb.NodeMessage {
	return &attestorpb.NodeMessage{Msg: &attestorpb.NodeMessage_Activation{Activation: &attestorpb.ActivationProof{Secret: secret}}}
}

// QuoteResponse is the message answering the quote request.
func QuoteResponse(quoted, sig []byte, values map[uint32][]byte) *attestorpb.NodeMessage {
	return &attestorpb.NodeMessage{Msg: &attestorpb.NodeMessage_Quote{Quote: &attestorpb.QuoteResponse{
		Quoted: quoted, Signature: sig, PcrValues: agent.PCRValues(values)}}}
}
