package verify

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"math/big"
	"slices"

	"github.com/google/go-tpm/tpm2"
)

// Quote is a quote whose signature has been verified.
type Quote struct {
	Attest tpm2.TPMSAttest
	Info   tpm2.TPMSQuoteInfo
	// PCRs holds the SHA-256 values of the quoted PCRs, by index, once
	// CheckPCRs has matched them against the quoted digest.
	PCRs map[uint32][]byte
}

// Nonce is the quote's extraData (the server nonce, once signature-checked).
func (q *Quote) Nonce() []byte { return q.Attest.ExtraData.Buffer }

// VerifyQuote checks, in this order, that sig is the AK's ECDSA-SHA256
// signature over quoted, that quoted is a TPM-generated quote with extraData
// equal to nonce, and then CheckPCRs. Freshness of the nonce is the caller's
// business.
func VerifyQuote(ak *AK, quoted, sig, nonce []byte, pcrs []uint32, values map[uint32][]byte) (*Quote, error) {
	q, err := VerifyQuoteSignature(ak, quoted, sig)
	if err != nil {
		return nil, err
	}
	if subtle.ConstantTimeCompare(q.Nonce(), nonce) != 1 {
		return nil, ErrQuoteNonce
	}
	if err := q.CheckPCRs(pcrs, values); err != nil {
		return nil, err
	}
	return q, nil
}

// VerifyQuoteSignature checks that sig is the AK's ECDSA-SHA256 signature
// over quoted and that quoted is a TPM-generated quote.
func VerifyQuoteSignature(ak *AK, quoted, sig []byte) (*Quote, error) {
	if len(quoted) > MaxAttestSize {
		return nil, fmt.Errorf("%w: quote is %d bytes (max %d)", ErrTooLarge, len(quoted), MaxAttestSize)
	}
	s, err := unmarshalLimited[tpm2.TPMTSignature]("quote signature", sig, MaxSignatureSize)
	if err != nil {
		return nil, err
	}
	if s.SigAlg != tpm2.TPMAlgECDSA {
		return nil, fmt.Errorf("%w: signature algorithm 0x%x", ErrQuoteSignature, s.SigAlg)
	}
	ecc, err := s.Signature.ECDSA()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if ecc.Hash != tpm2.TPMAlgSHA256 {
		return nil, fmt.Errorf("%w: signature hash 0x%x", ErrQuoteSignature, ecc.Hash)
	}
	// sigAlg, hash and two sized integers: nothing may follow.
	if len(sig) != 8+len(ecc.SignatureR.Buffer)+len(ecc.SignatureS.Buffer) {
		return nil, fmt.Errorf("%w: quote signature has trailing bytes", ErrMalformed)
	}
	digest := sha256.Sum256(quoted)
	r := new(big.Int).SetBytes(ecc.SignatureR.Buffer)
	sv := new(big.Int).SetBytes(ecc.SignatureS.Buffer)
	if !ecdsa.Verify(ak.Key, digest[:], r, sv) {
		return nil, ErrQuoteSignature
	}
	// Signed by the AK: the bytes are what the TPM produced, so no
	// canonical-encoding check is needed.
	att, err := unmarshalLimited[tpm2.TPMSAttest]("quote", quoted, MaxAttestSize)
	if err != nil {
		return nil, err
	}
	if att.Magic != tpm2.TPMGeneratedValue || att.Type != tpm2.TPMSTAttestQuote {
		return nil, ErrQuoteType
	}
	info, err := att.Attested.Quote()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrQuoteType, err)
	}
	return &Quote{Attest: *att, Info: *info}, nil
}

// CheckPCRs checks that the quote covers exactly the SHA-256 bank PCRs in
// pcrs and that values (SHA-256 digests by index) hash to the quoted digest.
func (q *Quote) CheckPCRs(pcrs []uint32, values map[uint32][]byte) error {
	want, err := PCRSelection(pcrs)
	if err != nil {
		return err
	}
	got := q.Info.PCRSelect.PCRSelections
	if len(got) != 1 || got[0].Hash != tpm2.TPMAlgSHA256 ||
		!bytes.Equal(got[0].PCRSelect, want.PCRSelections[0].PCRSelect) {
		return ErrQuoteSelection
	}
	if len(values) != len(pcrs) {
		return fmt.Errorf("%w: %d PCR values for %d quoted PCRs", ErrPCRDigest, len(values), len(pcrs))
	}
	h := sha256.New()
	for _, i := range slices.Sorted(slices.Values(pcrs)) {
		v, ok := values[i]
		if !ok || len(v) != sha256.Size {
			return fmt.Errorf("%w: PCR %d value missing or not SHA-256", ErrPCRDigest, i)
		}
		h.Write(v)
	}
	if subtle.ConstantTimeCompare(h.Sum(nil), q.Info.PCRDigest.Buffer) != 1 {
		return ErrPCRDigest
	}
	q.PCRs = values
	return nil
}

// PCRSelection builds the SHA-256 bank selection of pcrs (sorted, unique,
// each at most MaxPCR).
func PCRSelection(pcrs []uint32) (tpm2.TPMLPCRSelection, error) {
	if len(pcrs) == 0 {
		return tpm2.TPMLPCRSelection{}, fmt.Errorf("%w: empty PCR selection", ErrPolicy)
	}
	bitmap := make([]byte, 3)
	for _, i := range pcrs {
		if i > MaxPCR {
			return tpm2.TPMLPCRSelection{}, fmt.Errorf("%w: PCR %d out of range", ErrPolicy, i)
		}
		bitmap[i/8] |= 1 << (i % 8)
	}
	return tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{
		Hash: tpm2.TPMAlgSHA256, PCRSelect: bitmap,
	}}}, nil
}
