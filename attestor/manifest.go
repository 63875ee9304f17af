package attestor

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/palisade-id/palisade/attestor/verify"
)

// manifestIndex is an immutable snapshot of the manifest for lookups.
type manifestIndex struct {
	byHash  map[string]ManifestEntry
	roots   *x509.CertPool           // nil without CA entries
	byCA    map[string]ManifestEntry // keyed by cert DER hash
	entries []ManifestEntry
}

func buildIndex(entries []ManifestEntry) (*manifestIndex, error) {
	ix := &manifestIndex{byHash: map[string]ManifestEntry{}, byCA: map[string]ManifestEntry{}, entries: entries}
	for _, e := range entries {
		switch e.Kind {
		case KindEKHash:
			ix.byHash[e.EKHash] = e
		case KindEKCA:
			c, err := x509.ParseCertificate(e.CACert)
			if err != nil {
				return nil, fmt.Errorf("%w: %s: %v", ErrInvalidManifest, e.ID, err)
			}
			if ix.roots == nil {
				ix.roots = x509.NewCertPool()
			}
			ix.roots.AddCert(c)
			ix.byCA[derHash(e.CACert)] = e
		default:
			return nil, fmt.Errorf("%w: %s: kind %q", ErrInvalidManifest, e.ID, e.Kind)
		}
	}
	return ix, nil
}

func derHash(der []byte) string {
	h := sha256.Sum256(der)
	return hex.EncodeToString(h[:])
}

// admit decides whether ek (with an optional certificate chain) is in the
// manifest and returns the admitting entry. An EK-hash entry wins over a CA
// entry. A certificate that names another key is refused even when the
// hash is allowlisted: the node is presenting inconsistent evidence.
func (ix *manifestIndex) admit(ek *verify.EK, cert *x509.Certificate, intermediates *x509.CertPool, now time.Time) (ManifestEntry, error) {
	if cert != nil {
		h, err := verify.HashPublicKey(cert.PublicKey)
		if err != nil || h != ek.Hash {
			return ManifestEntry{}, verify.ErrEKCertMismatch
		}
	}
	if e, ok := ix.byHash[ek.HashHex()]; ok {
		return e, nil
	}
	if cert == nil {
		return ManifestEntry{}, fmt.Errorf("%w: no entry for EK %s and no EK certificate", ErrNotInManifest, ek.HashHex())
	}
	if ix.roots == nil {
		return ManifestEntry{}, fmt.Errorf("%w: no entry for EK %s and no manufacturer roots", ErrNotInManifest, ek.HashHex())
	}
	chain, err := verify.VerifyEKCert(cert, ek, intermediates, ix.roots, now)
	if err != nil {
		return ManifestEntry{}, fmt.Errorf("%w: %w", ErrNotInManifest, err)
	}
	// The most specific manifest anchor in the chain decides the class.
	for _, c := range chain[1:] {
		if e, ok := ix.byCA[derHash(c.Raw)]; ok {
			return e, nil
		}
	}
	return ManifestEntry{}, fmt.Errorf("%w: chain anchor not in manifest", ErrNotInManifest)
}

// hasEK reports whether an EK-hash entry lists the EK with hex hash h.
func (ix *manifestIndex) hasEK(h string) bool {
	_, ok := ix.byHash[h]
	return ok
}

var hexHashRE = regexp.MustCompile(`^[0-9a-f]{64}$`)

// ParseManifestInput turns operator input into a manifest entry for class:
// a 64-hex EK hash, or PEM holding a CERTIFICATE (a CA certificate becomes
// a KindEKCA entry, an EK certificate a KindEKHash entry for its key) or a
// PUBLIC KEY (the EK itself). DER certificates are accepted too.
func ParseManifestInput(input []byte, class, comment string) (ManifestEntry, error) {
	if !verify.ValidClassName(class) {
		return ManifestEntry{}, fmt.Errorf("%w: invalid class %q", ErrInvalidManifest, class)
	}
	s := strings.ToLower(strings.TrimSpace(string(input)))
	if hexHashRE.MatchString(s) {
		return ManifestEntry{ID: "ek:" + s, Kind: KindEKHash, EKHash: s, Class: class, Comment: comment}, nil
	}
	der := input
	typ := "CERTIFICATE"
	if b, _ := pem.Decode(input); b != nil {
		der, typ = b.Bytes, b.Type
	} else if bytes.HasPrefix(bytes.TrimSpace(input), []byte("-----")) {
		return ManifestEntry{}, fmt.Errorf("%w: unreadable PEM", ErrInvalidManifest)
	}
	switch typ {
	case "PUBLIC KEY":
		key, err := x509.ParsePKIXPublicKey(der)
		if err != nil {
			return ManifestEntry{}, fmt.Errorf("%w: %v", ErrInvalidManifest, err)
		}
		h, err := verify.HashPublicKey(key)
		if err != nil {
			return ManifestEntry{}, fmt.Errorf("%w: %v", ErrInvalidManifest, err)
		}
		hx := hex.EncodeToString(h[:])
		return ManifestEntry{ID: "ek:" + hx, Kind: KindEKHash, EKHash: hx, Class: class, Comment: comment}, nil
	case "CERTIFICATE":
		cert, err := verify.ParseEKCert(der) // tolerates the TCG critical SAN
		if err != nil {
			return ManifestEntry{}, fmt.Errorf("%w: %v", ErrInvalidManifest, err)
		}
		if cert.IsCA {
			return ManifestEntry{ID: "ca:" + derHash(cert.Raw), Kind: KindEKCA, CACert: cert.Raw, Class: class, Comment: comment}, nil
		}
		h, err := verify.HashPublicKey(cert.PublicKey)
		if err != nil {
			return ManifestEntry{}, fmt.Errorf("%w: %v", ErrInvalidManifest, err)
		}
		hx := hex.EncodeToString(h[:])
		return ManifestEntry{ID: "ek:" + hx, Kind: KindEKHash, EKHash: hx, Class: class, Comment: comment}, nil
	default:
		return ManifestEntry{}, fmt.Errorf("%w: PEM type %q (want CERTIFICATE or PUBLIC KEY)", ErrInvalidManifest, typ)
	}
}

// validateEntry checks an entry before it is stored.
func validateEntry(e ManifestEntry) error {
	if !verify.ValidClassName(e.Class) {
		return fmt.Errorf("%w: invalid class %q", ErrInvalidManifest, e.Class)
	}
	switch e.Kind {
	case KindEKHash:
		if !hexHashRE.MatchString(e.EKHash) || e.ID != "ek:"+e.EKHash || len(e.CACert) != 0 {
			return fmt.Errorf("%w: malformed EK hash entry", ErrInvalidManifest)
		}
	case KindEKCA:
		c, err := x509.ParseCertificate(e.CACert)
		if err != nil || !c.IsCA || e.ID != "ca:"+derHash(e.CACert) || e.EKHash != "" {
			return fmt.Errorf("%w: malformed CA entry", ErrInvalidManifest)
		}
	default:
		return fmt.Errorf("%w: kind %q", ErrInvalidManifest, e.Kind)
	}
	if len(e.Comment) > 256 {
		return fmt.Errorf("%w: comment longer than 256 bytes", ErrInvalidManifest)
	}
	return nil
}
