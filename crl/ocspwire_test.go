package crl

import (
	"bytes"
	"crypto"
	"errors"
	"testing"
	"time"

	"golang.org/x/crypto/ocsp"

	"github.com/palisade-id/palisade/test/testca"
)

func TestParseRequest(t *testing.T) {
	ca := testca.New(t, "example.org")
	leaf, _, _ := ca.MintX509SVID(t, "spiffe://example.org/a", time.Hour)
	for _, h := range []crypto.Hash{crypto.SHA1, crypto.SHA256, crypto.SHA384, crypto.SHA512} {
		der, err := ocsp.CreateRequest(leaf, ca.Intermediate(), &ocsp.RequestOptions{Hash: h})
		if err != nil {
			t.Fatal(err)
		}
		r, err := ParseRequest(der)
		if err != nil {
			t.Fatalf("%v: %v", h, err)
		}
		ih, _ := hashesFor(ca.Intermediate(), h)
		if r.HashAlg != h || !bytes.Equal(r.IssuerKeyHash, ih.key) || !bytes.Equal(r.IssuerNameHash, ih.name) ||
			!bytes.Equal(r.Serial, serialContent(leaf.SerialNumber)) || r.Nonce != nil {
			t.Fatalf("%v: parsed %+v", h, r)
		}
		if !bytes.Equal(certIDFor(h, ih, r.Serial), r.CertID) {
			t.Fatalf("%v: CertID re-encoding differs", h)
		}
	}
	bad := [][]byte{nil, {0x30}, {0x30, 0x00}, {0x30, 0x02, 0x30, 0x00}, bytes.Repeat([]byte{0x30, 0x80}, 10)}
	for _, b := range bad {
		if _, err := ParseRequest(b); !errors.Is(err, ErrMalformedRequest) {
			t.Fatalf("%x: %v", b, err)
		}
	}
}

func FuzzParseRequest(f *testing.F) {
	ca := testca.New(f, "example.org")
	leaf, _, _ := ca.MintX509SVID(f, "spiffe://example.org/a", time.Hour)
	der, _ := ocsp.CreateRequest(leaf, ca.Intermediate(), nil)
	f.Add(der)
	der256, _ := ocsp.CreateRequest(leaf, ca.Intermediate(), &ocsp.RequestOptions{Hash: crypto.SHA256})
	f.Add(der256)
	f.Add([]byte{0x30, 0x03, 0x30, 0x01, 0x00})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ParseRequest(b)
		if err != nil {
			if !errors.Is(err, ErrMalformedRequest) {
				t.Fatalf("error not wrapped: %v", err)
			}
			return
		}
		if len(r.IssuerKeyHash) != r.HashAlg.Size() || !canonicalInt(r.Serial) || len(r.Nonce) > maxNonceValue {
			t.Fatalf("accepted inconsistent request %+v", r)
		}
	})
}
