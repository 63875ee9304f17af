package enforcer

import (
	"crypto/x509"
	"fmt"
	"math/big"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// RevocationChecker answers whether a certificate is revoked. The revocation
// package (CRL/OCSP from the appliance, cached and refreshed) implements
// it. An error fails closed: the peer is not admitted.
type RevocationChecker interface {
	Revoked(serial *big.Int, issuerSKI []byte) (bool, error)
}

// BanChecker answers whether a node or workload is banned on the
// appliance, whatever its certificates say. Optional.
type BanChecker interface {
	Banned(id spiffeid.ID) (bool, error)
}

// CertRef names a certificate for revocation checks.
type CertRef struct {
	Serial    *big.Int
	IssuerSKI []byte
}

// Verified is an SVID that passed Verifier.Verify.
type Verified struct {
	ID       spiffeid.ID
	NotAfter time.Time // earliest not-after of the verified chain
	Certs    []CertRef // leaf and intermediates, for re-checking revocation
}

// Verifier checks a peer's X509-SVID chain: chain to the trust bundle,
// validity at the current time, trust domain, revocation of every
// non-root certificate, and bans.
type Verifier struct {
	TrustDomain spiffeid.TrustDomain
	Bundle      x509bundle.Source
	Revocation  RevocationChecker
	Bans        BanChecker       // optional
	Now         func() time.Time // optional, for tests
}

func (v *Verifier) now() time.Time {
	if v.Now != nil {
		return v.Now()
	}
	return time.Now()
}

// Verify returns the peer's identity or an error wrapping ErrNotAdmitted
// (and ErrRevoked for revocation or bans).
func (v *Verifier) Verify(chain []*x509.Certificate) (Verified, error) {
	if v.Bundle == nil || v.Revocation == nil || v.TrustDomain.IsZero() {
		return Verified{}, fmt.Errorf("%w: verifier needs a trust domain, bundle and revocation checker", ErrConfig)
	}
	id, chains, err := x509svid.Verify(chain, v.Bundle, x509svid.WithTime(v.now()))
	if err != nil {
		return Verified{}, fmt.Errorf("%w: %w", ErrNotAdmitted, err)
	}
	if id.TrustDomain() != v.TrustDomain {
		return Verified{}, fmt.Errorf("%w: trust domain %q, want %q", ErrNotAdmitted, id.TrustDomain(), v.TrustDomain)
	}
	out := Verified{ID: id}
	// Every verified chain ends in a root of the bundle; check all
	// certificates of the first chain but the root.
	vc := chains[0]
	for _, c := range vc[:len(vc)-1] {
		if out.NotAfter.IsZero() || c.NotAfter.Before(out.NotAfter) {
			out.NotAfter = c.NotAfter
		}
		out.Certs = append(out.Certs, CertRef{Serial: c.SerialNumber, IssuerSKI: c.AuthorityKeyId})
	}
	if err := v.Recheck(out); err != nil {
		return Verified{}, err
	}
	return out, nil
}

// Recheck repeats the revocation and ban checks of an admitted SVID.
func (v *Verifier) Recheck(p Verified) error {
	for _, c := range p.Certs {
		revoked, err := v.Revocation.Revoked(c.Serial, c.IssuerSKI)
		if err != nil {
			return fmt.Errorf("%w: %w: serial %x: %w", ErrNotAdmitted, ErrRevocationUnknown, c.Serial, err)
		}
		if revoked {
			return fmt.Errorf("%w: %w: serial %x", ErrNotAdmitted, ErrRevoked, c.Serial)
		}
	}
	if v.Bans != nil {
		banned, err := v.Bans.Banned(p.ID)
		if err != nil {
			return fmt.Errorf("%w: %w: ban status of %s: %w", ErrNotAdmitted, ErrRevocationUnknown, p.ID, err)
		}
		if banned {
			return fmt.Errorf("%w: %w: %s is banned", ErrNotAdmitted, ErrRevoked, p.ID)
		}
	}
	return nil
}
