package device_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"testing"
	"time"

	"github.com/palisade-id/palisade/attestor/device"
	"github.com/palisade-id/palisade/attestor/verify"
	"github.com/palisade-id/palisade/test/attestor/swtpm"
)

// TestSwtpmECCEK uses swtpm's ECC P-384 EK (TCG high-range template,
// userWithAuth) and its certificate instead of the RSA one.
func TestSwtpmECCEK(t *testing.T) {
	in := swtpm.New(t)
	tr, err := device.DialSwtpm("unix", in.Socket)
	if err != nil {
		t.Fatal(err)
	}
	d, err := device.Open(tr, device.Options{EKHandle: 0x81010016, EKCertIndex: 0x01c00016})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
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
	root, issuer := in.CACerts(t)
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	roots.AddCert(root)
	inter.AddCert(issuer)
	if _, err := verify.VerifyEKCert(cert, ek, inter, roots, time.Now()); err != nil {
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
