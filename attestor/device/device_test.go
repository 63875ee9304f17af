package device_test

import (
	"bytes"
	"crypto/rand"
	"os"
	"path/filepath"
	"testing"

	"github.com/palisade-id/palisade/attestor/device"
	"github.com/palisade-id/palisade/attestor/verify"
	"github.com/palisade-id/palisade/attestor/verify/verifytest"
	"github.com/palisade-id/palisade/test/attestor/swtpm"
)

func TestSwtpm(t *testing.T) {
	in := swtpm.New(t)
	d := in.Open(t)

	ek, err := verify.ParseEKPublic(d.EKPublic())
	if err != nil {
		t.Fatalf("EK public from the TPM: %v", err)
	}
	t.Run("EK certificate chains to the manufacturer", func(t *testing.T) {
		cert, err := verify.ParseEKCert(d.EKCert())
		if err != nil {
			t.Fatalf("swtpm EK certificate: %v", err)
		}
		if err := in.VerifyEKCert(t, cert, ek); err != nil {
			t.Fatal(err)
		}
	})

	ak, err := verify.ParseAKPublic(d.AKPublic())
	if err != nil {
		t.Fatalf("AK public from the TPM: %v", err)
	}
	t.Run("credential activation", func(t *testing.T) {
		secret := []byte("0123456789abcdef0123456789abcdef")
		ch, err := verify.MakeCredential(rand.Reader, ek, ak.Name, secret)
		if err != nil {
			t.Fatal(err)
		}
		got, err := d.ActivateCredential(ch.IDObject, ch.EncryptedSecret)
		if err != nil || !bytes.Equal(got, secret) {
			t.Fatalf("activate = %x, %v", got, err)
		}
		// A credential for an AK outside this TPM does not activate.
		foreign, err := verifytest.NewNode()
		if err != nil {
			t.Fatal(err)
		}
		ch, _ = verify.MakeCredential(rand.Reader, ek, foreign.AKName, secret)
		if _, err := d.ActivateCredential(ch.IDObject, ch.EncryptedSecret); err == nil {
			t.Fatal("foreign AK credential activated")
		}
	})
	t.Run("quote", func(t *testing.T) {
		nonce := bytes.Repeat([]byte{3}, 32)
		pcrs := []uint32{0, 1, 2, 3, 4, 5, 6, 7, 9, 16}
		quoted, sig, values, err := d.Quote(nonce, pcrs)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := verify.VerifyQuote(ak, quoted, sig, nonce, pcrs, values); err != nil {
			t.Fatalf("TPM quote does not verify: %v", err)
		}
		before := values[16]
		if err := d.ExtendPCR(16, []byte("event")); err != nil {
			t.Fatal(err)
		}
		after, err := d.ReadPCRs([]uint32{16})
		if err != nil || bytes.Equal(after[16], before) {
			t.Fatalf("PCR 16 unchanged after extend (%v)", err)
		}
		// The old values no longer match a fresh quote.
		quoted, sig, _, err = d.Quote(nonce, pcrs)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := verify.VerifyQuote(ak, quoted, sig, nonce, pcrs, values); err == nil {
			t.Fatal("stale PCR values verified against a new quote")
		}
	})
}

func TestOpenDeviceRefusesRegularFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "tpm")
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := device.OpenDevice(p); err == nil {
		t.Fatal("opened a regular file as a TPM")
	}
	if _, err := device.OpenDevice(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Fatal("opened a missing device")
	}
}
