package device_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"testing"

	"github.com/palisade-id/palisade/attestor/device"
	"github.com/palisade-id/palisade/attestor/verify"
	"github.com/palisade-id/palisade/test/attestor/swtpm"
)

// TestSwtpmECCEK uses swtpm's ECC P-384 EK (TCG high-range template,
// userWithAuth) and its certificate instead of the RSA one.
func TestSwtpmECCEK(t *testing.T) {
	in := swtpm.New(t)
	d := in.Open(t, device.Options{EKHandle: 0x81010016, EKCertIndex: 0x01c00016})
	ek, err := verify.ParseEKPublic(d.EKPublic())
	if err != nil {
		t.Fatal(err)
	}
	if k, ok := ek.Key.(*ecdsa.PublicKey); !ok || k.Curve != elliptic.P384() {
		t.Fatalf("EK key %T, want P-384", ek.Key)
	}
	cert, err := verify.ParseEKCert(d.EKCert())
	if err != nil {
		t.Fatal(err)
	}
	if err := in.VerifyEKCert(t, cert, ek); err != nil {
		t.Fatal(err)
	}
	ak, err := verify.ParseAKPublic(d.AKPublic())
	if err != nil {
		t.Fatal(err)
	}
	secret := []byte("0123456789abcdef")
	ch, err := verify.MakeCredential(rand.Reader, ek, ak.Name, secret)
	if err != nil {
		t.Fatal(err)
	}
	got, err := d.ActivateCredential(ch.IDObject, ch.EncryptedSecret)
	if err != nil || !bytes.Equal(got, secret) {
		t.Fatalf("activate = %q, %v", got, err)
	}
}
