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

	mkEK := func(ext pkix.Extension, pub any) []byte {
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(2), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			KeyUsage: x509.KeyUsageKeyEncipherment, ExtraExtensions: []pkix.Extension{ext},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, pub, caKey)
		if err != nil {
			t.Fatal(err)
		}
		return der
	}
	otherKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	critOther := pkix.Extension{Id: asn1.ObjectIdentifier{1, 2, 3, 4}, Critical: true, Value: []byte{5, 0}}

	tests := []struct {
		name      string
		der       []byte
		roots     *x509.CertPool
		parseErr  error
		verifyErr error
	}{
		{"TCG SAN chains to root", mkEK(tcgSAN(t, 4), &n.EKKey.PublicKey), roots, nil, nil},
		{"critical SAN with DNS name", mkEK(tcgSAN(t, 2), &n.EKKey.PublicKey), roots, verify.ErrEKCert, nil},
		{"other critical extension", mkEK(critOther, &n.EKKey.PublicKey), roots, verify.ErrEKCert, nil},
		{"certifies another key", mkEK(tcgSAN(t, 4), &otherKey.PublicKey), roots, nil, verify.ErrEKCertMismatch},
		{"unknown root", mkEK(tcgSAN(t, 4), &n.EKKey.PublicKey), x509.NewCertPool(), nil, verify.ErrEKCert},
		{"garbage", []byte{0x30, 0x03, 1, 2, 3}, roots, verify.ErrEKCert, nil},
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
			chain, err := verify.VerifyEKCert(cert, ek, nil, tc.roots, time.Now())
			if !errors.Is(err, tc.verifyErr) {
				t.Fatalf("verify err = %v, want %v", err, tc.verifyErr)
			}
			if err == nil && !chain[len(chain)-1].Equal(ca) {
				t.Fatal("chain does not end at the manufacturer root")
			}
		})
	}
}
