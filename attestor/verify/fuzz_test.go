package verify_test

import (
	"bytes"
	"crypto/sha256"
	"testing"

	"github.com/palisade-id/palisade/attestor/verify"
)

func FuzzParseEKPublic(f *testing.F) {
	n := node(f)
	f.Add(n.EKPublic)
	f.Add(n.AKPublic)
	f.Add([]byte{0, 1, 0, 0xb})
	f.Fuzz(func(t *testing.T, raw []byte) {
		ek, err := verify.ParseEKPublic(raw)
		if err == nil && (ek.Key == nil || len(ek.PKIX) == 0) {
			t.Fatal("accepted EK without a key")
		}
	})
}

func FuzzParseAKPublic(f *testing.F) {
	n := node(f)
	f.Add(n.AKPublic)
	f.Add(n.EKPublic)
	f.Fuzz(func(t *testing.T, raw []byte) {
		ak, err := verify.ParseAKPublic(raw)
		if err != nil {
			return
		}
		// The name always binds the exact bytes received.
		h := sha256.Sum256(raw)
		if !bytes.Equal(ak.Name, append([]byte{0, 0x0b}, h[:]...)) {
			t.Fatalf("name %x does not hash the received bytes", ak.Name)
		}
	})
}

func FuzzVerifyQuote(f *testing.F) {
	n := node(f)
	ak, err := verify.ParseAKPublic(n.AKPublic)
	if err != nil {
		f.Fatal(err)
	}
	nonce := bytes.Repeat([]byte{1}, 32)
	quoted, sig, values, err := n.Quote(nonce, []uint32{0})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(quoted, sig)
	f.Add(quoted[:20], sig[:8])
	f.Fuzz(func(t *testing.T, q, s []byte) {
		_, err := verify.VerifyQuote(ak, q, s, nonce, []uint32{0}, values)
		// Only the genuine pair may pass: anything else is a forgery.
		if err == nil && !(bytes.Equal(q, quoted)) {
			t.Fatalf("accepted a quote the AK did not sign")
		}
	})
}

func FuzzParseEKCert(f *testing.F) {
	f.Add([]byte{0x30, 0x00})
	f.Fuzz(func(t *testing.T, der []byte) {
		_, _ = verify.ParseEKCert(der)
	})
}

func FuzzParsePolicy(f *testing.F) {
	f.Add([]byte("version: 1\nclasses:\n  a:\n    pcrs:\n      0: [\"" + digestHex("x") + "\"]\n"))
	f.Fuzz(func(t *testing.T, raw []byte) {
		p, err := verify.ParsePolicy(raw)
		if err == nil && p.Validate() != nil {
			t.Fatal("accepted an invalid policy")
		}
	})
}
