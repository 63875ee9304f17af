package pkcs11

import (
	"crypto"
	"errors"
	"testing"

	p11 "github.com/miekg/pkcs11"
)

// keyObjects counts the token objects labelled label (key halves of any
// class), through the Token's own module handle.
func keyObjects(t *testing.T, tok *Token, label string) int {
	t.Helper()
	sess, err := tok.raw.OpenSession(tok.found.slot, p11.CKF_SERIAL_SESSION)
	if err != nil {
		t.Fatal(err)
	}
	defer tok.raw.CloseSession(sess)
	if err := tok.raw.FindObjectsInit(sess, []*p11.Attribute{p11.NewAttribute(p11.CKA_LABEL, label)}); err != nil {
		t.Fatal(err)
	}
	objs, _, err := tok.raw.FindObjects(sess, 16)
	tok.raw.FindObjectsFinal(sess)
	if err != nil {
		t.Fatal(err)
	}
	return len(objs)
}

func TestDeleteKeyDestroysBothHalves(t *testing.T) {
	tok := openToken(t)
	s, label := newSigner(t, tok, "delete-both")
	if n := keyObjects(t, tok, label); n != 2 {
		t.Fatalf("%d objects labelled %q after GenerateSigner, want 2 (private and public)", n, label)
	}
	if err := tok.DeleteKey(label, s.Public()); err != nil {
		t.Fatal(err)
	}
	if n := keyObjects(t, tok, label); n != 0 {
		t.Fatalf("%d objects labelled %q after DeleteKey, want none", n, label)
	}
	if _, err := tok.Signer(label); !errors.Is(err, ErrKeyNotFound) {
		t.Fatalf("Signer after DeleteKey: %v, want ErrKeyNotFound", err)
	}
}

// Ping probes the last key handed out: deleting that key must not make the
// token look gone.
func TestPingAfterDeletingProbeKey(t *testing.T) {
	tok := openToken(t)
	s, label := newSigner(t, tok, "delete-probe")
	if err := tok.Ping(); err != nil {
		t.Fatal(err)
	}
	if err := tok.DeleteKey(label, s.Public()); err != nil {
		t.Fatal(err)
	}
	if err := tok.Ping(); err != nil {
		t.Fatalf("Ping after deleting the probe key: %v", err)
	}
	// A key someone else holds is still probed.
	other, otherLabel := newSigner(t, tok, "delete-probe-other")
	if err := tok.DeleteKey(otherLabel, s.Public()); !errors.Is(err, ErrKeyNotFound) {
		t.Fatalf("DeleteKey with another key's public key: %v, want ErrKeyNotFound", err)
	}
	if p := tok.probe.Load(); p == nil || !p.pub.(interface{ Equal(crypto.PublicKey) bool }).Equal(other.Public()) {
		t.Fatal("a refused DeleteKey cleared the probe")
	}
}

func TestDeleteKeyValidation(t *testing.T) {
	tok := openToken(t)
	s, label := newSigner(t, tok, "delete-validate")
	if err := tok.DeleteKey("", s.Public()); err == nil {
		t.Error("empty label accepted")
	}
	if err := tok.DeleteKey(label, nil); err == nil {
		t.Error("nil public key accepted")
	}
	if _, err := tok.Signer(label); err != nil {
		t.Fatalf("refused DeleteKey removed the key: %v", err)
	}
}
