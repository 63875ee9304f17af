// Package verifytest builds TPM attestation artifacts in software (an RSA
// EK, an ECC P-256 AK, credential activation, signed quotes) so that the
// server side can be tested and benchmarked without a TPM. Nothing here is
// secure; never use it outside tests.
package verifytest

import (
	"bytes"
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"

	"github.com/google/go-tpm/tpm2"

	"github.com/palisade-id/palisade/attestor/verify"
)

// Node is a software stand-in for a TPM holding one EK and one AK.
type Node struct {
	EKKey *rsa.PrivateKey
	AKKey *ecdsa.PrivateKey
	// EKPublic and AKPublic are TPMT_PUBLIC wire bytes.
	EKPublic []byte
	AKPublic []byte
	AKName   []byte
	// PCRs holds SHA-256 bank values; missing indices read as zero.
	PCRs map[uint32][]byte
	// Log is the firmware event log recorded by Measure.
	Log []LogEvent
}

// NewNode generates fresh keys.
func NewNode() (*Node, error) {
	ek, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	ak, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	return NodeFromKeys(ek, ak)
}

// NodeFromKeys builds a node around existing keys.
func NodeFromKeys(ek *rsa.PrivateKey, ak *ecdsa.PrivateKey) (*Node, error) {
	ekPub := tpm2.RSAEKTemplate
	ekPub.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: ek.N.Bytes()})
	if ek.E != 65537 {
		return nil, errors.New("verifytest: EK exponent must be 65537")
	}
	akPub := verify.AKTemplate()
	raw, err := ak.PublicKey.Bytes() // uncompressed point
	if err != nil {
		return nil, err
	}
	akPub.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
		X: tpm2.TPM2BECCParameter{Buffer: raw[1:33]},
		Y: tpm2.TPM2BECCParameter{Buffer: raw[33:]},
	})
	name, err := tpm2.ObjectName(&akPub)
	if err != nil {
		return nil, err
	}
	return &Node{
		EKKey: ek, AKKey: ak,
		EKPublic: tpm2.Marshal(ekPub), AKPublic: tpm2.Marshal(akPub),
		AKName: name.Buffer, PCRs: map[uint32][]byte{},
	}, nil
}

// Activate recovers a credential made to the EK for the object named name,
// as TPM2_ActivateCredential would.
func (n *Node) Activate(name, idObject, encSecret []byte) ([]byte, error) {
	seed, err := rsa.DecryptOAEP(sha256.New(), nil, n.EKKey, encSecret, []byte("IDENTITY\x00"))
	if err != nil {
		return nil, fmt.Errorf("verifytest: decrypt seed: %w", err)
	}
	if len(idObject) < 2 {
		return nil, errors.New("verifytest: short id object")
	}
	hl := int(binary.BigEndian.Uint16(idObject))
	if len(idObject) < 2+hl {
		return nil, errors.New("verifytest: short id object")
	}
	integrity, encIdentity := idObject[2:2+hl], idObject[2+hl:]
	mac := hmac.New(sha256.New, tpm2.KDFa(crypto.SHA256, seed, "INTEGRITY", nil, nil, 256))
	mac.Write(encIdentity)
	mac.Write(name)
	if !hmac.Equal(mac.Sum(nil), integrity) {
		return nil, errors.New("verifytest: integrity check failed (wrong object name?)")
	}
	block, err := aes.NewCipher(tpm2.KDFa(crypto.SHA256, seed, "STORAGE", name, nil, 128))
	if err != nil {
		return nil, err
	}
	plain := make([]byte, len(encIdentity))
	//lint:ignore SA1019 TPM credential protection is AES-CFB by specification (TPM 2.0 Part 1, 24.4).
	cipher.NewCFBDecrypter(block, make([]byte, 16)).XORKeyStream(plain, encIdentity)
	if len(plain) < 2 || int(binary.BigEndian.Uint16(plain)) != len(plain)-2 {
		return nil, errors.New("verifytest: bad credential encoding")
	}
	return plain[2:], nil
}

// PCR returns the value of PCR i.
func (n *Node) PCR(i uint32) []byte {
	if v, ok := n.PCRs[i]; ok {
		return v
	}
	return make([]byte, sha256.Size)
}

// Extend extends PCR i with data's SHA-256, as TPM2_PCR_Event would.
func (n *Node) Extend(i uint32, data []byte) {
	d := sha256.Sum256(data)
	h := sha256.New()
	h.Write(n.PCR(i))
	h.Write(d[:])
	n.PCRs[i] = h.Sum(nil)
}

// Quote signs a TPMS_ATTEST quote over pcrs (SHA-256 bank) with extraData
// nonce. It returns the attestation, the TPMT_SIGNATURE and the PCR values.
func (n *Node) Quote(nonce []byte, pcrs []uint32) (quoted, sig []byte, values map[uint32][]byte, err error) {
	sel, err := verify.PCRSelection(pcrs)
	if err != nil {
		return nil, nil, nil, err
	}
	h := sha256.New()
	values = map[uint32][]byte{}
	for _, i := range slices.Sorted(slices.Values(pcrs)) {
		h.Write(n.PCR(i))
		values[i] = bytes.Clone(n.PCR(i))
	}
	att := tpm2.TPMSAttest{
		Magic:           tpm2.TPMGeneratedValue,
		Type:            tpm2.TPMSTAttestQuote,
		QualifiedSigner: tpm2.TPM2BName{Buffer: n.AKName},
		ExtraData:       tpm2.TPM2BData{Buffer: nonce},
		Attested: tpm2.NewTPMUAttest(tpm2.TPMSTAttestQuote, &tpm2.TPMSQuoteInfo{
			PCRSelect: sel,
			PCRDigest: tpm2.TPM2BDigest{Buffer: h.Sum(nil)},
		}),
	}
	quoted = tpm2.Marshal(att)
	sig, err = n.Sign(quoted)
	return quoted, sig, values, err
}

// Sign produces a TPMT_SIGNATURE (ECDSA-SHA256) over msg with the AK.
func (n *Node) Sign(msg []byte) ([]byte, error) {
	return SignWith(n.AKKey, msg)
}

// SignWith signs msg with key as a TPM would with an ECDSA-SHA256 AK.
func SignWith(key *ecdsa.PrivateKey, msg []byte) ([]byte, error) {
	d := sha256.Sum256(msg)
	r, s, err := ecdsa.Sign(rand.Reader, key, d[:])
	if err != nil {
		return nil, err
	}
	return tpm2.Marshal(tpm2.TPMTSignature{
		SigAlg: tpm2.TPMAlgECDSA,
		Signature: tpm2.NewTPMUSignature(tpm2.TPMAlgECDSA, &tpm2.TPMSSignatureECC{
			Hash:       tpm2.TPMAlgSHA256,
			SignatureR: tpm2.TPM2BECCParameter{Buffer: r.FillBytes(make([]byte, 32))},
			SignatureS: tpm2.TPM2BECCParameter{Buffer: s.FillBytes(make([]byte, 32))},
		}),
	}), nil
}
