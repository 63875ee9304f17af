package crl

import (
	"context"
	"crypto"
	"crypto/x509"
	"fmt"
	"math/big"
	"strings"
	"time"
)

// CertInfo is what the package needs to know about one issued certificate.
type CertInfo struct {
	Serial      *big.Int
	SPIFFEID    string
	NodeID      string // SPIFFE ID of the node it was issued to; may be empty
	IssuerKeyID string // hex SubjectKeyId of the issuing intermediate
	NotBefore   time.Time
	NotAfter    time.Time
	Revoked     bool
	RevokedAt   time.Time
	Reason      int // RFC 5280 CRLReason
}

// Source reads certificate records. The CA's store implements it.
type Source interface {
	// Status returns the record for serial; found is false when the CA
	// never issued it.
	Status(serial *big.Int) (info CertInfo, found bool, err error)
	// ForEachRevoked calls fn for every revoked certificate issued by
	// issuerKeyID whose RevokedAt is not before since (zero: all). fn
	// returning an error stops the walk and is returned.
	ForEachRevoked(issuerKeyID string, since time.Time, fn func(CertInfo) error) error
	// ForEachUnexpired calls fn for every certificate with NotAfter after
	// at, revoked or not (used to pre-sign OCSP responses at start).
	ForEachUnexpired(at time.Time, fn func(CertInfo) error) error
}

// ResponderCert is a delegated OCSP responder certificate an issuer signed.
type ResponderCert struct {
	Serial      *big.Int
	IssuerKeyID string // hex SubjectKeyId of the issuing intermediate
	NotBefore   time.Time
	NotAfter    time.Time
}

// CertRecorder durably records the certificates this package has an issuer
// sign (delegated OCSP responder certificates) before they are used, as
// the CA records what it issues. A serial recorded before, of any
// certificate, is refused with an error wrapping ErrSerialExists.
type CertRecorder interface {
	RecordResponderCert(ResponderCert) error
}

// Store does the durable revocation writes, each in one transaction,
// acknowledged only once on disk, and records responder certificates.
type Store interface {
	Source
	CertRecorder
	// Revoke marks serial revoked at at with reason and returns the
	// updated record and true. A certificate already revoked is returned
	// unchanged (its original time and reason) with false and no error. An
	// unknown serial is an error the store defines.
	Revoke(serial *big.Int, reason int, at time.Time) (CertInfo, bool, error)
	// ForEachOfNode calls fn for every certificate not expired at at whose
	// NodeID or SPIFFE ID is nodeID, revoked or not: what RevokeNode
	// considers, from an index rather than a walk of every certificate.
	ForEachOfNode(nodeID string, at time.Time, fn func(CertInfo) error) error
	// RevokeNode revokes, in one transaction, every unexpired, not yet
	// revoked certificate whose NodeID or SPIFFE ID is nodeID and returns
	// the records it changed.
	RevokeNode(nodeID string, reason int, at time.Time) ([]CertInfo, error)
}

// Auditor appends durable audit records (the CA's audit log).
type Auditor interface {
	Append(ctx context.Context, kind, actor string, data any) error
}

// KeyStore is the HSM as the OCSP responder uses it: the delegated
// responder keys live there. ca/pkcs11 implements it.
type KeyStore interface {
	GenerateSigner(label string) (crypto.Signer, error)
	Signer(label string) (crypto.Signer, error)
}

// Issuer is one live intermediate: CRLs and OCSP responses are produced per
// issuer. KeyID is hex(Cert.SubjectKeyId).
type Issuer struct {
	KeyID  string
	Cert   *x509.Certificate
	Signer crypto.Signer
	Active bool // signs new certificates; served at /crl/current.crl
}

// Issuers lists the live intermediates. The server adapts the CA to it.
type Issuers interface {
	Issuers() []Issuer
}

// IssuersFunc adapts a function to Issuers.
type IssuersFunc func() []Issuer

// Issuers implements Issuers.
func (f IssuersFunc) Issuers() []Issuer { return f() }

// RFC 5280 CRLReason values accepted by Revoke (7 is unused, 8 removeFromCRL
// is only meaningful in delta CRLs for certificateHold, which Palisade does
// not use).
const (
	ReasonUnspecified          = 0
	ReasonKeyCompromise        = 1
	ReasonCACompromise         = 2
	ReasonAffiliationChanged   = 3
	ReasonSuperseded           = 4
	ReasonCessationOfOperation = 5
	ReasonCertificateHold      = 6
	ReasonPrivilegeWithdrawn   = 9
	ReasonAACompromise         = 10
)

var reasonNames = map[string]int{
	"unspecified": 0, "keyCompromise": 1, "cACompromise": 2, "affiliationChanged": 3,
	"superseded": 4, "cessationOfOperation": 5, "privilegeWithdrawn": 9, "aACompromise": 10,
}

// ValidReason reports whether r is a reason Revoke accepts. certificateHold
// is refused: revocation here is permanent.
func ValidReason(r int) bool {
	switch r {
	case 0, 1, 2, 3, 4, 5, 9, 10:
		return true
	}
	return false
}

// ParseReason accepts an RFC 5280 reason name (case-insensitive, e.g.
// "keyCompromise") or its number.
func ParseReason(s string) (int, error) {
	for name, v := range reasonNames {
		if strings.EqualFold(name, s) {
			return v, nil
		}
	}
	n := 0
	if s == "" || len(s) > 2 {
		return 0, errReason(s)
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0, errReason(s)
		}
		n = n*10 + int(c-'0')
	}
	if !ValidReason(n) {
		return 0, errReason(s)
	}
	return n, nil
}

// AuditorFunc adapts a function to Auditor (e.g. an audit log whose Append
// also returns the record).
type AuditorFunc func(ctx context.Context, kind, actor string, data any) error

// Append implements Auditor.
func (f AuditorFunc) Append(ctx context.Context, kind, actor string, data any) error {
	return f(ctx, kind, actor, data)
}

func errReason(s string) error { return fmt.Errorf("%w: %q", ErrBadReason, s) }
