// Package agent is the node side of the Attest protocol: it drives one
// attestation stream with a TPM (attestor/device, or anything with the same
// methods) and returns the node SVID. It also builds the node's TLS and gRPC
// client setup. Renewal is calling Attest again.
package agent

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"

	"github.com/palisade-id/palisade/attestor/attestorpb"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// TPM is what the protocol needs from the node's TPM.
type TPM interface {
	// EKPublic is the EK's TPMT_PUBLIC; EKCert its DER certificate or nil.
	EKPublic() []byte
	EKCert() []byte
	// AKPublic is the AK's TPMT_PUBLIC.
	AKPublic() []byte
	// ActivateCredential recovers the server's secret with the EK and AK.
	ActivateCredential(idObject, encryptedSecret []byte) ([]byte, error)
	// Quote signs the SHA-256 bank PCRs with the AK over nonce and returns
	// the TPMS_ATTEST, the TPMT_SIGNATURE and the PCR values.
	Quote(nonce []byte, pcrs []uint32) (quoted, sig []byte, values map[uint32][]byte, err error)
}

// EventLogger is implemented by TPMs that can supply the firmware event
// log; Attest sends it with the quote.
type EventLogger interface {
	EventLog() ([]byte, error)
}

// ErrProtocol reports an unexpected server message.
var ErrProtocol = errors.New("agent: unexpected server message")

// Result is an attested node's SVID.
type Result struct {
	ID    spiffeid.ID
	Chain []*x509.Certificate // leaf first
}

// Attest runs one attestation over client and returns the node SVID for the
// key that signed csrDER. Server refusals come back as gRPC status errors
// whose message names the reason.
func Attest(ctx context.Context, client attestorpb.AttestorClient, tpm TPM, csrDER []byte, intermediates ...[]byte) (*Result, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := client.Attest(ctx)
	if err != nil {
		return nil, fmt.Errorf("agent: open stream: %w", err)
	}
	if err := stream.Send(&attestorpb.NodeMessage{Msg: &attestorpb.NodeMessage_Hello{Hello: &attestorpb.Hello{
		EkPublic: tpm.EKPublic(), EkCert: tpm.EKCert(), EkIntermediates: intermediates,
		AkPublic: tpm.AKPublic(), Csr: csrDER,
	}}}); err != nil {
		return nil, recvErr(stream, err)
	}
	msg, err := stream.Recv()
	if err != nil {
		return nil, err
	}
	ch := msg.GetChallenge()
	if ch == nil {
		return nil, fmt.Errorf("%w: want challenge, got %T", ErrProtocol, msg.GetMsg())
	}
	secret, err := tpm.ActivateCredential(ch.GetIdObject(), ch.GetEncryptedSecret())
	if err != nil {
		return nil, fmt.Errorf("agent: activate credential: %w", err)
	}
	if err := stream.Send(&attestorpb.NodeMessage{Msg: &attestorpb.NodeMessage_Activation{Activation: &attestorpb.ActivationProof{Secret: secret}}}); err != nil {
		return nil, recvErr(stream, err)
	}
	if msg, err = stream.Recv(); err != nil {
		return nil, err
	}
	qr := msg.GetQuoteRequest()
	if qr == nil {
		return nil, fmt.Errorf("%w: want quote request, got %T", ErrProtocol, msg.GetMsg())
	}
	quoted, sig, values, err := tpm.Quote(qr.GetNonce(), qr.GetPcrs())
	if err != nil {
		return nil, fmt.Errorf("agent: quote: %w", err)
	}
	var eventLog []byte
	if el, ok := tpm.(EventLogger); ok {
		if eventLog, err = el.EventLog(); err != nil {
			return nil, fmt.Errorf("agent: event log: %w", err)
		}
	}
	if err := stream.Send(&attestorpb.NodeMessage{Msg: &attestorpb.NodeMessage_Quote{Quote: &attestorpb.QuoteResponse{
		Quoted: quoted, Signature: sig, PcrValues: PCRValues(values), EventLog: eventLog,
	}}}); err != nil {
		return nil, recvErr(stream, err)
	}
	if msg, err = stream.Recv(); err != nil {
		return nil, err
	}
	res := msg.GetResult()
	if res == nil {
		return nil, fmt.Errorf("%w: want result, got %T", ErrProtocol, msg.GetMsg())
	}
	_ = stream.CloseSend()
	id, err := spiffeid.FromString(res.GetSpiffeId())
	if err != nil {
		return nil, fmt.Errorf("%w: SPIFFE ID: %v", ErrProtocol, err)
	}
	out := &Result{ID: id}
	for _, der := range res.GetSvidChain() {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("%w: SVID chain: %v", ErrProtocol, err)
		}
		out.Chain = append(out.Chain, c)
	}
	if len(out.Chain) == 0 {
		return nil, fmt.Errorf("%w: empty SVID chain", ErrProtocol)
	}
	return out, nil
}

// recvErr prefers the server's status (the real reason) over a send error.
func recvErr(stream attestorpb.Attestor_AttestClient, sendErr error) error {
	if _, err := stream.Recv(); err != nil {
		return err
	}
	return sendErr
}

// PCRValues converts PCR values to wire form, sorted by index.
func PCRValues(values map[uint32][]byte) []*attestorpb.PCRValue {
	out := make([]*attestorpb.PCRValue, 0, len(values))
	for i, v := range values {
		out = append(out, &attestorpb.PCRValue{Index: i, Digest: v})
	}
	slices.SortFunc(out, func(a, b *attestorpb.PCRValue) int { return int(a.Index) - int(b.Index) })
	return out
}
