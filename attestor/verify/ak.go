package verify

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"fmt"

	"github.com/google/go-tpm/tpm2"
)

// AK is a parsed attestation key.
type AK struct {
	Public tpm2.TPMTPublic
	Key    *ecdsa.PublicKey
	// Name is the TPM Name (nameAlg || H(TPMT_PUBLIC)) MakeCredential binds to.
	Name []byte
}

// ParseAKPublic parses a TPMT_PUBLIC and requires an ECC NIST P-256
// restricted signing key with ECDSA-SHA256, generated inside and fixed to the
// TPM: only such a key signs quotes and nothing else that looks like one.
func ParseAKPublic(raw []byte) (*AK, error) {
	// No canonical check: the name below hashes raw itself, so bytes that
	// parse loosely or carry a trailer name no object a TPM holds, and the
	// credential bound to that name cannot be activated.
	pub, err := unmarshalLimited[tpm2.TPMTPublic]("AK public", raw, MaxPublicSize)
	if err != nil {
		return nil, err
	}
	a := pub.ObjectAttributes
	if !a.Restricted || !a.SignEncrypt || a.Decrypt || !a.FixedTPM || !a.FixedParent || !a.SensitiveDataOrigin {
		return nil, ErrAKAttributes
	}
	if pub.Type != tpm2.TPMAlgECC || pub.NameAlg != tpm2.TPMAlgSHA256 {
		return nil, ErrAKAlgorithm
	}
	parms, err := pub.Parameters.ECCDetail()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if parms.CurveID != tpm2.TPMECCNistP256 || parms.Scheme.Scheme != tpm2.TPMAlgECDSA {
		return nil, ErrAKAlgorithm
	}
	scheme, err := parms.Scheme.Details.ECDSA()
	if err != nil || scheme.HashAlg != tpm2.TPMAlgSHA256 {
		return nil, ErrAKAlgorithm
	}
	point, err := pub.Unique.ECC()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if len(point.X.Buffer) != 32 || len(point.Y.Buffer) != 32 {
		return nil, fmt.Errorf("%w: AK point coordinates must be 32 bytes", ErrMalformed)
	}
	// Uncompressed SEC 1 point; parsing checks it is on the curve.
	sec1 := append(append([]byte{4}, point.X.Buffer...), point.Y.Buffer...)
	key, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), sec1)
	if err != nil {
		return nil, fmt.Errorf("%w: AK point: %v", ErrMalformed, err)
	}
	// Name = nameAlg || SHA-256(TPMT_PUBLIC) over the bytes as received.
	h := sha256.Sum256(raw)
	name := append([]byte{byte(tpm2.TPMAlgSHA256 >> 8), byte(tpm2.TPMAlgSHA256)}, h[:]...)
	return &AK{Public: *pub, Key: key, Name: name}, nil
}

// AKTemplate is the AK a node creates: ECC NIST P-256, ECDSA-SHA256,
// restricted signing, fixedTPM (so a key loaded from outside the TPM can never
// stand in for it). ParseAKPublic accepts keys of this shape only.
func AKTemplate() tpm2.TPMTPublic {
	return tpm2.TPMTPublic{
		Type:    tpm2.TPMAlgECC,
		NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{
			FixedTPM: true, FixedParent: true, SensitiveDataOrigin: true,
			UserWithAuth: true, Restricted: true, SignEncrypt: true, NoDA: true,
		},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
			Scheme: tpm2.TPMTECCScheme{
				Scheme:  tpm2.TPMAlgECDSA,
				Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSigSchemeECDSA{HashAlg: tpm2.TPMAlgSHA256}),
			},
			CurveID: tpm2.TPMECCNistP256,
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
			X: tpm2.TPM2BECCParameter{Buffer: make([]byte, 32)},
			Y: tpm2.TPM2BECCParameter{Buffer: make([]byte, 32)},
		}),
	}
}
