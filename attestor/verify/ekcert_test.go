package verify_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"math/big"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/palisade-id/palisade/attestor/verify"
)

// tcgSAN is a critical subjectAltName holding one directoryName with a TPM
// manufacturer attribute, as in TCG EK certificates.
func tcgSAN(t *testing.T, tag int) pkix.Extension {
	t.Helper()
	name, err := asn1.Marshal(pkix.Name{ExtraNames: []pkix.AttributeTypeAndValue{
		{Type: asn1.ObjectIdentifier{2, 23, 133, 2, 1}, Value: "id:00001014"},
	}}.ToRDNSequence())
	if err != nil {
		t.Fatal(err)
	}
	val, err := asn1.Marshal([]asn1.RawValue{{Class: asn1.ClassContextSpecific, Tag: tag, IsCompound: true, Bytes: name}})
	if err != nil {
		t.Fatal(err)
	}
	return pkix.Extension{Id: asn1.ObjectIdentifier{2, 5, 29, 17}, Critical: true, Value: val}
}

func TestEKCert(t *testing.T) {
	n := node(t)
	ek, err := verify.ParseEKPublic(n.EKPublic)
	if err != nil {
		t.Fatal(err)
	}
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "TPM manufacturer root"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, _ := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	ca, _ := x509.ParseCertificate(caDER)
	roots := x509.NewCertPool()
	roots.AddCert(ca)

	mkEK := func(ext pkix.Extension, pub any, edits ...func(*x509.Certificate)) []byte {
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(2), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			KeyUsage: x509.KeyUsageKeyEncipherment, ExtraExtensions: []pkix.Extension{ext},
		}
		for _, edit := range edits {
			edit(tmpl)
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, pub, caKey)
		if err != nil {
			t.Fatal(err)
		}
		return der
	}
	otherKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	critOther := pkix.Extension{Id: asn1.ObjectIdentifier{1, 2, 3, 4}, Critical: true, Value: []byte{5, 0}}

	eccKey, eccEK := eccEK(t)
	tcgEKU := func(c *x509.Certificate) { c.UnknownExtKeyUsage = []asn1.ObjectIdentifier{{2, 23, 133, 8, 1}} }
	keyUsage := func(ku x509.KeyUsage) func(*x509.Certificate) { return func(c *x509.Certificate) { c.KeyUsage = ku } }
	tlsServer := func(c *x509.Certificate) {
		c.KeyUsage, c.ExtKeyUsage, c.DNSNames = x509.KeyUsageDigitalSignature, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, []string{"www.example.com"}
	}
	isCA := func(c *x509.Certificate) {
		c.IsCA, c.BasicConstraintsValid, c.KeyUsage = true, true, x509.KeyUsageKeyEncipherment|x509.KeyUsageCertSign
	}

	tests := []struct {
		name      string
		der       []byte
		ek        *verify.EK // default: the node's RSA EK
		roots     *x509.CertPool
		parseErr  error
		verifyErr error
	}{
		{"TCG SAN chains to root", mkEK(tcgSAN(t, 4), &n.EKKey.PublicKey), nil, roots, nil, nil},
		{"TCG EK EKU", mkEK(tcgSAN(t, 4), &n.EKKey.PublicKey, tcgEKU), nil, roots, nil, nil},
		{"TCG EK EKU among others", mkEK(tcgSAN(t, 4), &n.EKKey.PublicKey, tcgEKU, func(c *x509.Certificate) {
			c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
		}), nil, roots, nil, nil},
		{"ECC EK with keyAgreement", mkEK(tcgSAN(t, 4), &eccKey.PublicKey, keyUsage(x509.KeyUsageKeyAgreement)), eccEK, roots, nil, nil},
		{"ECC EK with keyEncipherment only", mkEK(tcgSAN(t, 4), &eccKey.PublicKey), eccEK, roots, nil, verify.ErrEKCert},
		{"RSA EK without keyEncipherment", mkEK(tcgSAN(t, 4), &n.EKKey.PublicKey, keyUsage(x509.KeyUsageDigitalSignature)), nil, roots, nil, verify.ErrEKCert},
		{"no key usage", mkEK(tcgSAN(t, 4), &n.EKKey.PublicKey, keyUsage(0)), nil, roots, nil, verify.ErrEKCert},
		{"TLS server certificate", mkEK(tcgSAN(t, 4), &n.EKKey.PublicKey, tlsServer), nil, roots, nil, verify.ErrEKCert},
		{"EKU without the TCG EK purpose", mkEK(tcgSAN(t, 4), &n.EKKey.PublicKey, func(c *x509.Certificate) {
			c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
		}), nil, roots, nil, verify.ErrEKCert},
		{"CA certificate", mkEK(tcgSAN(t, 4), &n.EKKey.PublicKey, isCA, tcgEKU), nil, roots, nil, verify.ErrEKCert},
		{"critical SAN with DNS name", mkEK(tcgSAN(t, 2), &n.EKKey.PublicKey), nil, roots, verify.ErrEKCert, nil},
		{"other critical extension", mkEK(critOther, &n.EKKey.PublicKey), nil, roots, verify.ErrEKCert, nil},
		{"certifies another key", mkEK(tcgSAN(t, 4), &otherKey.PublicKey), nil, roots, nil, verify.ErrEKCertMismatch},
		{"unknown root", mkEK(tcgSAN(t, 4), &n.EKKey.PublicKey), nil, x509.NewCertPool(), nil, verify.ErrEKCert},
		{"garbage", []byte{0x30, 0x03, 1, 2, 3}, nil, roots, verify.ErrEKCert, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cert, err := verify.ParseEKCert(tc.der)
			if !errors.Is(err, tc.parseErr) {
				t.Fatalf("parse err = %v, want %v", err, tc.parseErr)
			}
			if err != nil {
				return
			}
			want := ek
			if tc.ek != nil {
				want = tc.ek
			}
			chain, err := verify.VerifyEKCert(cert, want, nil, tc.roots, time.Now())
			if !errors.Is(err, tc.verifyErr) {
				t.Fatalf("verify err = %v, want %v", err, tc.verifyErr)
			}
			if err == nil && !chain[len(chain)-1].Equal(ca) {
				t.Fatal("chain does not end at the manufacturer root")
			}
		})
	}
}

// eccEK is a software P-256 key presented as a TPM ECC EK.
func eccEK(t *testing.T) (*ecdsa.PrivateKey, *verify.EK) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pub := tpm2.ECCEKTemplate
	x, y := key.X.FillBytes(make([]byte, 32)), key.Y.FillBytes(make([]byte, 32))
	pub.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{X: tpm2.TPM2BECCParameter{Buffer: x}, Y: tpm2.TPM2BECCParameter{Buffer: y}})
	ek, err := verify.ParseEKPublic(tpm2.Marshal(pub))
	if err != nil {
		t.Fatal(err)
	}
	return key, ek
}
