package ca

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"encoding/pem"
	"fmt"
	"sort"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
)

// BundleRefreshHint tells bundle consumers how often to poll.
const BundleRefreshHint = 5 * time.Minute

// Bundle returns the trust bundle: the root as the X.509 authority and the
// JWT keys of every live generation (the next one included, so it is
// published before it signs anything). Its sequence number is kept in the
// store and changes exactly when these contents do.
func (c *CA) Bundle() *spiffebundle.Bundle {
	b := spiffebundle.New(c.td)
	b.AddX509Authority(c.root)
	c.mu.RLock()
	for _, s := range c.live {
		_ = b.AddJWTAuthority(s.rec.KeyID, s.jwtSigner.Public())
	}
	seq := c.bundleSq
	c.mu.RUnlock()
	b.SetRefreshHint(BundleRefreshHint)
	b.SetSequenceNumber(seq)
	return b
}

// bundleDigest identifies the bundle's contents: the X.509 authority and
// each JWT authority's key ID and key, in key ID order.
func bundleDigest(root *x509.Certificate, live []*slot) ([]byte, error) {
	h := sha256.New()
	put := func(b []byte) {
		h.Write(binary.BigEndian.AppendUint32(nil, uint32(len(b))))
		h.Write(b)
	}
	put(root.Raw)
	byKID := append([]*slot(nil), live...)
	sort.Slice(byKID, func(i, j int) bool { return byKID[i].rec.KeyID < byKID[j].rec.KeyID })
	for _, s := range byKID {
		pub, err := x509.MarshalPKIXPublicKey(s.jwtSigner.Public())
		if err != nil {
			return nil, fmt.Errorf("ca: JWT key of %s: %w", s.rec.KeyID, err)
		}
		put([]byte(s.rec.KeyID))
		put(pub)
	}
	return h.Sum(nil), nil
}

// BundleJSON returns the bundle in SPIFFE bundle (JWKS) format.
func (c *CA) BundleJSON() ([]byte, error) {
	out, err := c.Bundle().Marshal()
	if err != nil {
		return nil, fmt.Errorf("ca: marshal bundle: %w", err)
	}
	return out, nil
}

// BundlePEM returns the X.509 trust anchors as PEM.
func (c *CA) BundlePEM() []byte { return CertsPEM([]*x509.Certificate{c.root}) }

// CertsPEM encodes certificates as consecutive PEM blocks.
func CertsPEM(certs []*x509.Certificate) []byte {
	var out []byte
	for _, cert := range certs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})...)
	}
	return out
}

// ParseCertsPEM decodes consecutive PEM certificates, the inverse of
// CertsPEM. A block that is not a parseable certificate is an error.
func ParseCertsPEM(b []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for blk, rest := pem.Decode(b); blk != nil; blk, rest = pem.Decode(rest) {
		cert, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("ca: PEM block %d (%s): %w", len(out)+1, blk.Type, err)
		}
		out = append(out, cert)
	}
	return out, nil
}
