package ca_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/pem"
	"errors"
	"testing"

	"github.com/palisade-id/palisade/ca"
	"github.com/palisade-id/palisade/test/testca"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func TestParseCSR(t *testing.T) {
	tdom := spiffeid.RequireTrustDomainFromString(td)
	good, _ := testca.CSR(t, "spiffe://example.org/web")
	p224, err := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rsa1024, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	tampered := bytes.Clone(good)
	tampered[len(tampered)-5] ^= 0xff
	pemGood := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: good})
	tests := []struct {
		name string
		raw  []byte
		want error
	}{
		{"good-der", good, nil},
		{"good-pem", pemGood, nil},
		{"empty", nil, ca.ErrMalformedCSR},
		{"garbage", []byte("not a csr"), ca.ErrMalformedCSR},
		{"oversized", make([]byte, ca.MaxCSRSize+1), ca.ErrCSRTooLarge},
		{"truncated", good[:len(good)/2], ca.ErrMalformedCSR},
		{"bad-signature", tampered, ca.ErrCSRSignature},
		{"zero-uri-sans", func() []byte { d, _ := testca.CSR(t); return d }(), ca.ErrURISANCount},
		{"two-uri-sans", func() []byte { d, _ := testca.CSR(t, "spiffe://example.org/a", "spiffe://example.org/b"); return d }(), ca.ErrURISANCount},
		{"foreign-trust-domain", func() []byte { d, _ := testca.CSR(t, "spiffe://evil.org/web"); return d }(), ca.ErrForeignTrustDomain},
		{"not-spiffe-scheme", func() []byte { d, _ := testca.CSR(t, "https://example.org/web"); return d }(), ca.ErrInvalidSPIFFEID},
		{"trust-domain-only", func() []byte { d, _ := testca.CSR(t, "spiffe://example.org"); return d }(), ca.ErrInvalidSPIFFEID},
		{"uppercase-path-bad-chars", func() []byte { d, _ := testca.CSR(t, "spiffe://example.org/a%20b"); return d }(), ca.ErrInvalidSPIFFEID},
		{"weak-curve", testca.CSRFor(t, p224, "spiffe://example.org/web"), ca.ErrCSRKey},
		{"weak-rsa", testca.CSRFor(t, rsa1024, "spiffe://example.org/web"), ca.ErrCSRKey},
		{"pem-wrong-type", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: good}), ca.ErrMalformedCSR},
		{"pem-trailing-data", append(bytes.Clone(pemGood), "junk"...), ca.ErrMalformedCSR},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			csr, err := ca.ParseCSR(tt.raw, tdom)
			if tt.want == nil {
				if err != nil {
					t.Fatalf("ParseCSR: %v", err)
				}
				if csr.ID.String() != "spiffe://example.org/web" {
					t.Fatalf("ID = %s", csr.ID)
				}
				return
			}
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
		})
	}
}

// FuzzParseCSR: arbitrary bytes must give a CSR or a classified error,
// never a panic or an unclassified failure.
func FuzzParseCSR(f *testing.F) {
	good, _ := testca.CSR(f, "spiffe://example.org/web")
	two, _ := testca.CSR(f, "spiffe://example.org/a", "spiffe://example.org/b")
	f.Add(good)
	f.Add(two)
	f.Add(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: good}))
	f.Add([]byte{0x30, 0x82, 0xff, 0xff})
	tdom := spiffeid.RequireTrustDomainFromString(td)
	classes := []error{ca.ErrMalformedCSR, ca.ErrCSRTooLarge, ca.ErrCSRSignature, ca.ErrCSRKey,
		ca.ErrURISANCount, ca.ErrInvalidSPIFFEID, ca.ErrForeignTrustDomain}
	f.Fuzz(func(t *testing.T, raw []byte) {
		csr, err := ca.ParseCSR(raw, tdom)
		if err == nil {
			if csr.ID.TrustDomain() != tdom || len(csr.Req.URIs) != 1 {
				t.Fatalf("accepted CSR for %s with %d URIs", csr.ID, len(csr.Req.URIs))
			}
			return
		}
		for _, c := range classes {
			if errors.Is(err, c) {
				return
			}
		}
		t.Fatalf("unclassified error: %v", err)
	})
}
