package memkeys

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"errors"
	"strings"
	"testing"

	"github.com/palisade-id/palisade/ca/keystore/keystoretest"
)

func TestContract(t *testing.T) {
	shared := New()
	keystoretest.Run(t, func(t *testing.T) keystoretest.KeyStore { return shared },
		keystoretest.NotFound(ErrKeyNotFound), keystoretest.Exists(ErrKeyExists))
}

func TestContractFreshStores(t *testing.T) {
	keystoretest.Run(t, func(t *testing.T) keystoretest.KeyStore { return New(WithCurve(elliptic.P384())) },
		keystoretest.NotFound(ErrKeyNotFound), keystoretest.Exists(ErrKeyExists))
}

func TestSetFailure(t *testing.T) {
	outage := errors.New("hsm gone")
	s := New()
	k, err := s.GenerateSigner("root")
	if err != nil {
		t.Fatal(err)
	}
	d := sha256.Sum256([]byte("x"))
	s.SetFailure(outage)
	tests := []struct {
		name string
		op   func() error
	}{
		{"sign", func() error { _, err := k.Sign(nil, d[:], crypto.SHA256); return err }},
		{"signer", func() error { _, err := s.Signer("root"); return err }},
		{"generate", func() error { _, err := s.GenerateSigner("other"); return err }},
		{"delete", func() error { return s.DeleteKey("root", k.Public()) }},
		{"ping", s.Ping},
		{"reopen", s.Reopen},
	}
	for _, tt := range tests {
		if err := tt.op(); !errors.Is(err, outage) {
			t.Errorf("%s during outage: %v, want %v", tt.name, err, outage)
		}
	}
	s.SetFailure(nil)
	sig, err := k.Sign(nil, d[:], crypto.SHA256)
	if err != nil || !ecdsa.VerifyASN1(k.Public().(*ecdsa.PublicKey), d[:], sig) {
		t.Fatalf("sign after recovery: %v", err)
	}
	if len(s.Labels()) != 1 {
		t.Errorf("Labels() = %v, want only root (generate during outage must not store a key)", s.Labels())
	}
}

func TestKeyURIAndValidation(t *testing.T) {
	s := New(WithName("test ca"))
	if got, want := s.KeyURI("root key"), "pkcs11:token=test%20ca;object=root%20key;type=private"; got != want {
		t.Errorf("KeyURI = %q, want %q", got, want)
	}
	if _, err := s.GenerateSigner(""); err == nil {
		t.Error("empty label accepted")
	}
	k, err := s.GenerateSigner("k")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := k.Sign(nil, []byte("short"), crypto.SHA256); err == nil || !strings.Contains(err.Error(), "digest is 5 bytes") {
		t.Errorf("Sign with a short digest: %v", err)
	}
	if _, ok := k.(*ecdsa.PrivateKey); ok {
		t.Error("signer exposes the private key type")
	}
}

func TestDeletedKeyNoLongerSigns(t *testing.T) {
	s := New()
	old, err := s.GenerateSigner("k")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteKey("k", old.Public()); err != nil {
		t.Fatal(err)
	}
	d := sha256.Sum256([]byte("x"))
	if _, err := old.Sign(nil, d[:], crypto.SHA256); !errors.Is(err, ErrKeyNotFound) {
		t.Fatalf("Sign with a deleted key: %v, want ErrKeyNotFound", err)
	}
	// A new key under the same label does not revive the old signer.
	if _, err := s.GenerateSigner("k"); err != nil {
		t.Fatal(err)
	}
	if _, err := old.Sign(nil, d[:], crypto.SHA256); !errors.Is(err, ErrKeyNotFound) {
		t.Fatalf("Sign with a deleted key after its label was reused: %v, want ErrKeyNotFound", err)
	}
}
