// Package testca is an in-memory SPIFFE CA for unit tests that need SVIDs
// but not the HSM: a root, one intermediate carrying a URI name constraint
// for the trust domain, and X509-SVIDs shaped like the real CA's.
// End-to-end tests use the real ca package instead.
package testca

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net/url"
	"testing"
	"time"
)

// CA is a root and an intermediate for one trust domain.
type CA struct {
	TrustDomain string
	root        *x509.Certificate
	rootKey     *ecdsa.PrivateKey
	inter       *x509.Certificate
	interKey    *ecdsa.PrivateKey
}

// New returns a CA for trustDomain (e.g. "example.org"), valid for a day.
func New(t testing.TB, trustDomain string) *CA {
	t.Helper()
	c := &CA{TrustDomain: trustDomain}
	now := time.Now()
	c.rootKey = mustKey(t)
	c.root = mustCert(t, &x509.Certificate{
		SerialNumber:          Serial(t),
		Subject:               pkix.Name{Organization: []string{"testca"}, CommonName: trustDomain + " root"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(48 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		URIs:                  []*url.URL{{Scheme: "spiffe", Host: trustDomain}},
	}, nil, c.rootKey, c.rootKey)
	c.interKey = mustKey(t)
	c.inter = mustCert(t, &x509.Certificate{
		SerialNumber:          Serial(t),
		Subject:               pkix.Name{Organization: []string{"testca"}, CommonName: trustDomain + " intermediate"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
		URIs:                  []*url.URL{{Scheme: "spiffe", Host: trustDomain}},
		PermittedURIDomains:   []string{trustDomain},
	}, c.root, c.interKey, c.rootKey)
	return c
}

// Root returns the trust anchor.
func (c *CA) Root() *x509.Certificate { return c.root }

// Intermediate returns the issuing CA certificate.
func (c *CA) Intermediate() *x509.Certificate { return c.inter }

// IssuerSigner returns the intermediate's private key.
func (c *CA) IssuerSigner() crypto.Signer { return c.interKey }

// RootSigner returns the root's private key.
func (c *CA) RootSigner() crypto.Signer { return c.rootKey }

// Pool returns a pool holding the root.
func (c *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(c.root)
	return p
}

// BundlePEM returns the root as PEM.
func (c *CA) BundlePEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.root.Raw})
}

// SVIDOptions adjusts a minted SVID, e.g. to make it expired.
type SVIDOptions struct {
	NotBefore, NotAfter time.Time // zero: now-1m, now+ttl
	OCSPServer          []string
	CRLDistribution     []string
}

// MintX509SVID issues a leaf for spiffeID valid for ttl. chain holds the
// leaf then the intermediate.
func (c *CA) MintX509SVID(t testing.TB, spiffeID string, ttl time.Duration) (*x509.Certificate, []*x509.Certificate, crypto.Signer) {
	t.Helper()
	return c.MintX509SVIDWith(t, spiffeID, ttl, SVIDOptions{})
}

// MintX509SVIDWith is MintX509SVID with options.
func (c *CA) MintX509SVIDWith(t testing.TB, spiffeID string, ttl time.Duration, o SVIDOptions) (*x509.Certificate, []*x509.Certificate, crypto.Signer) {
	t.Helper()
	u, err := url.Parse(spiffeID)
	if err != nil {
		t.Fatalf("testca: %v", err)
	}
	now := time.Now()
	if o.NotBefore.IsZero() {
		o.NotBefore = now.Add(-time.Minute)
	}
	if o.NotAfter.IsZero() {
		o.NotAfter = now.Add(ttl)
	}
	key := mustKey(t)
	leaf := mustCert(t, &x509.Certificate{
		SerialNumber:          Serial(t),
		Subject:               pkix.Name{Organization: []string{"testca"}},
		NotBefore:             o.NotBefore,
		NotAfter:              o.NotAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		URIs:                  []*url.URL{u},
		OCSPServer:            o.OCSPServer,
		CRLDistributionPoints: o.CRLDistribution,
	}, c.inter, key, c.interKey)
	return leaf, []*x509.Certificate{leaf, c.inter}, key
}

// SelfSigned returns a look-alike SVID for spiffeID that chains to nothing.
func SelfSigned(t testing.TB, spiffeID string, ttl time.Duration) (*x509.Certificate, crypto.Signer) {
	t.Helper()
	u, err := url.Parse(spiffeID)
	if err != nil {
		t.Fatalf("testca: %v", err)
	}
	key := mustKey(t)
	tmpl := &x509.Certificate{
		SerialNumber:          Serial(t),
		NotBefore:             time.Now().Add(-time.Minute),
		NotAfter:              time.Now().Add(ttl),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		URIs:                  []*url.URL{u},
	}
	return mustCert(t, tmpl, nil, key, key), key
}

// Serial returns a random positive 128-bit serial.
func Serial(t testing.TB) *big.Int {
	t.Helper()
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	b[0] &= 0x7f
	b[0] |= 0x40 // keep it 16 bytes long and positive
	return new(big.Int).SetBytes(b)
}

func mustKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func mustCert(t testing.TB, tmpl, parent *x509.Certificate, key *ecdsa.PrivateKey, signer crypto.Signer) *x509.Certificate {
	t.Helper()
	spki, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	ski := sha256.Sum256(spki)
	tmpl.SubjectKeyId = ski[:20]
	if parent == nil {
		parent = tmpl
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, signer)
	if err != nil {
		t.Fatalf("testca: create certificate: %v", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(cert.SubjectKeyId, ski[:20]) {
		t.Fatal("testca: subject key id not kept")
	}
	return cert
}
