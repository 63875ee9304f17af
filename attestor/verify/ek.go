package verify

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"encoding/hex"
	"fmt"
	"slices"
	"time"

	"github.com/google/go-tpm/tpm2"
)

// EK is a parsed endorsement key public area.
type EK struct {
	Public tpm2.TPMTPublic
	Key    crypto.PublicKey // *rsa.PublicKey or *ecdsa.PublicKey
	PKIX   []byte           // DER SubjectPublicKeyInfo
	Hash   [32]byte         // SHA-256 of PKIX: the node's hardware identity
	encap  tpm2.LabeledEncapsulationKey
}

// HashHex is the lowercase hex EK hash used in node IDs and manifests.
func (ek *EK) HashHex() string { return hex.EncodeToString(ek.Hash[:]) }

// ParseEKPublic parses a TPMT_PUBLIC and checks that it is an EK-shaped key:
// restricted decryption, fixed to the TPM, RSA (2048 or larger) or ECC
// (P-256/P-384).
func ParseEKPublic(raw []byte) (*EK, error) {
	pub, err := unmarshalCanonical[tpm2.TPMTPublic]("EK public", raw, MaxPublicSize)
	if err != nil {
		return nil, err
	}
	a := pub.ObjectAttributes
	if !a.Restricted || !a.Decrypt || a.SignEncrypt || !a.FixedTPM || !a.FixedParent {
		return nil, ErrEKAttributes
	}
	if pub.NameAlg != tpm2.TPMAlgSHA256 && pub.NameAlg != tpm2.TPMAlgSHA384 {
		return nil, fmt.Errorf("%w: name algorithm 0x%x", ErrEKAlgorithm, pub.NameAlg)
	}
	key, err := publicKey(pub)
	if err != nil {
		return nil, err
	}
	switch k := key.(type) {
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return nil, fmt.Errorf("%w: RSA-%d", ErrEKAlgorithm, k.N.BitLen())
		}
	case *ecdsa.PublicKey:
		if _, err := k.ECDH(); err != nil { // validates the point
			return nil, fmt.Errorf("%w: EK point: %v", ErrMalformed, err)
		}
	}
	encap, err := tpm2.ImportEncapsulationKey(pub)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrEKAlgorithm, err)
	}
	der, err := x509.MarshalPKIXPublicKey(key)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrEKAlgorithm, err)
	}
	return &EK{Public: *pub, Key: key, PKIX: der, Hash: sha256.Sum256(der), encap: encap}, nil
}

func publicKey(pub *tpm2.TPMTPublic) (k crypto.PublicKey, err error) {
	defer func() {
		if r := recover(); r != nil {
			k, err = nil, fmt.Errorf("%w: public key: %v", ErrMalformed, r)
		}
	}()
	switch pub.Type {
	case tpm2.TPMAlgRSA, tpm2.TPMAlgECC:
	default:
		return nil, fmt.Errorf("%w: key type 0x%x", ErrEKAlgorithm, pub.Type)
	}
	k, err = tpm2.Pub(*pub)
	if err != nil {
		return nil, fmt.Errorf("%w: public key: %v", ErrMalformed, err)
	}
	return k, nil
}

// HashPublicKey returns the SHA-256 of the DER SubjectPublicKeyInfo of key,
// the form manifests store for TPMs without EK certificates.
func HashPublicKey(key crypto.PublicKey) ([32]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(key)
	if err != nil {
		return [32]byte{}, fmt.Errorf("%w: %v", ErrEKAlgorithm, err)
	}
	return sha256.Sum256(der), nil
}

// oidSubjectAltName is marked critical in EK certificates whose subject is
// empty (TCG EK Credential Profile): it then holds only a directoryName with
// the TPM manufacturer, model and version, which Go's x509 does not parse.
var oidSubjectAltName = asn1.ObjectIdentifier{2, 5, 29, 17}

// ParseEKCert parses a DER EK certificate. A critical SAN that consists only
// of directoryName entries (TCG TPM manufacturer attributes) is accepted and
// marked handled; any other unhandled critical extension is refused.
func ParseEKCert(der []byte) (*x509.Certificate, error) {
	if len(der) > MaxCertSize {
		return nil, fmt.Errorf("%w: EK certificate is %d bytes (max %d)", ErrTooLarge, len(der), MaxCertSize)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrEKCert, err)
	}
	var rest []asn1.ObjectIdentifier
	for _, oid := range cert.UnhandledCriticalExtensions {
		if oid.Equal(oidSubjectAltName) {
			if err := checkTCGSAN(cert); err != nil {
				return nil, err
			}
			continue
		}
		rest = append(rest, oid)
	}
	if len(rest) > 0 {
		return nil, fmt.Errorf("%w: unhandled critical extension %v", ErrEKCert, rest)
	}
	cert.UnhandledCriticalExtensions = nil
	return cert, nil
}

// checkTCGSAN requires the SAN extension to be GeneralNames holding only
// directoryName ([4]) entries.
func checkTCGSAN(cert *x509.Certificate) error {
	for _, ext := range cert.Extensions {
		if !ext.Id.Equal(oidSubjectAltName) {
			continue
		}
		var names []asn1.RawValue
		rest, err := asn1.Unmarshal(ext.Value, &names)
		if err != nil || len(rest) != 0 || len(names) == 0 {
			return fmt.Errorf("%w: malformed critical subjectAltName", ErrEKCert)
		}
		for _, n := range names {
			if n.Class != asn1.ClassContextSpecific || n.Tag != 4 {
				return fmt.Errorf("%w: critical subjectAltName holds a name other than directoryName", ErrEKCert)
			}
		}
		return nil
	}
	return fmt.Errorf("%w: critical subjectAltName missing", ErrEKCert)
}

// VerifyEKCert checks that cert certifies ek and chains to one of roots
// (through intermediates). It returns the verified chain, leaf first.
func VerifyEKCert(cert *x509.Certificate, ek *EK, intermediates, roots *x509.CertPool, now time.Time) ([]*x509.Certificate, error) {
	certHash, err := HashPublicKey(cert.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrEKCertMismatch, err)
	}
	if certHash != ek.Hash {
		return nil, ErrEKCertMismatch
	}
	if roots == nil {
		return nil, fmt.Errorf("%w: no manufacturer roots in the manifest", ErrEKCert)
	}
	// A manifest CA may also sign certificates for keys outside any TPM:
	// only an EK certificate proves the key is an EK.
	if err := checkEKProfile(cert); err != nil {
		return nil, err
	}
	chains, err := cert.Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: intermediates,
		CurrentTime:   now,
		// The leaf's EKU is checked above; intermediates may carry any.
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	})
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrEKCert, err)
	}
	// Prefer the shortest chain: it ends at the most specific manifest anchor.
	slices.SortFunc(chains, func(a, b []*x509.Certificate) int { return len(a) - len(b) })
	return chains[0], nil
}

// oidTCGKpEKCertificate is tcg-kp-EKCertificate, the EKU of EK certificates.
var oidTCGKpEKCertificate = asn1.ObjectIdentifier{2, 23, 133, 8, 1}

// checkEKProfile applies the TCG EK Credential Profile to the leaf: not a
// CA; key usage keyEncipherment for an RSA EK, keyAgreement for an ECC EK;
// an extended key usage, if present, must include tcg-kp-EKCertificate.
func checkEKProfile(cert *x509.Certificate) error {
	if cert.IsCA || cert.KeyUsage&x509.KeyUsageCertSign != 0 {
		return fmt.Errorf("%w: a CA certificate, not an EK certificate", ErrEKCert)
	}
	switch cert.PublicKey.(type) {
	case *rsa.PublicKey:
		if cert.KeyUsage&x509.KeyUsageKeyEncipherment == 0 {
			return fmt.Errorf("%w: RSA EK certificate without keyEncipherment key usage", ErrEKCert)
		}
	case *ecdsa.PublicKey:
		if cert.KeyUsage&x509.KeyUsageKeyAgreement == 0 {
			return fmt.Errorf("%w: ECC EK certificate without keyAgreement key usage", ErrEKCert)
		}
	default:
		return fmt.Errorf("%w: %T key", ErrEKCert, cert.PublicKey)
	}
	if len(cert.ExtKeyUsage) > 0 || len(cert.UnknownExtKeyUsage) > 0 {
		if !slices.ContainsFunc(cert.UnknownExtKeyUsage, oidTCGKpEKCertificate.Equal) {
			return fmt.Errorf("%w: extended key usage lacks tcg-kp-EKCertificate (2.23.133.8.1)", ErrEKCert)
		}
	}
	return nil
}
