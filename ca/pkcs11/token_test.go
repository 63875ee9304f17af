package pkcs11

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/sha512"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/ThalesIgnite/crypto11"
	p11 "github.com/miekg/pkcs11"

	"github.com/palisade-id/palisade/test/testenv"
)

func TestGenerateSignVerify(t *testing.T) {
	tok := openToken(t)
	tests := []struct {
		name  string
		alg   Algorithm
		curve elliptic.Curve
		hash  crypto.Hash
	}{
		{"p256", ECDSAP256, elliptic.P256(), crypto.SHA256},
		{"p384", ECDSAP384, elliptic.P384(), crypto.SHA384},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := tok.GenerateSignerAlg(uniqueLabel(tt.name), tt.alg)
			if err != nil {
				t.Fatal(err)
			}
			pub, ok := s.Public().(*ecdsa.PublicKey)
			if !ok || pub.Curve != tt.curve {
				t.Fatalf("Public() = %T %v, want ECDSA on %s", s.Public(), s.Public(), tt.curve.Params().Name)
			}
			h := tt.hash.New()
			h.Write([]byte("palisade"))
			digest := h.Sum(nil)
			sig, err := s.Sign(nil, digest, tt.hash)
			if err != nil {
				t.Fatal(err)
			}
			if !ecdsa.VerifyASN1(pub, digest, sig) {
				t.Fatal("signature does not verify with the public key")
			}
			digest[0] ^= 1
			if ecdsa.VerifyASN1(pub, digest, sig) {
				t.Fatal("signature verifies for another digest")
			}
		})
	}
}

// TestKeyNeverLeavesToken reads the private key object's attributes back
// from the token and tries to export it, through the same module and from
// outside the process with pkcs11-tool.
func TestKeyNeverLeavesToken(t *testing.T) {
	tok := openToken(t)
	s, label := newSigner(t, tok, "sealed")
	key := s.(*signer).ref.Load().key
	want := map[crypto11.AttributeType]bool{
		crypto11.CkaToken:            true,
		crypto11.CkaPrivate:          true,
		crypto11.CkaSensitive:        true,
		crypto11.CkaAlwaysSensitive:  true,
		crypto11.CkaExtractable:      false,
		crypto11.CkaNeverExtractable: true,
		crypto11.CkaLocal:            true,
		crypto11.CkaSign:             true,
		crypto11.CkaDerive:           false,
		crypto11.CkaDecrypt:          false,
		crypto11.CkaUnwrap:           false,
	}
	tok.mu.RLock()
	ctx := tok.ctx
	tok.mu.RUnlock()
	for typ, wantVal := range want {
		a, err := ctx.GetAttribute(key, typ)
		if err != nil {
			t.Fatalf("GetAttribute(%#x): %v", typ, err)
		}
		if a == nil || len(a.Value) != 1 {
			t.Fatalf("attribute %#x: got %v", typ, a)
		}
		if got := a.Value[0] != 0; got != wantVal {
			t.Errorf("attribute %#x = %v, want %v", typ, got, wantVal)
		}
	}
	if a, err := ctx.GetAttribute(key, crypto11.CkaId); err != nil || len(a.Value) != 16 {
		t.Errorf("CKA_ID = %v, %v; want 16 bytes", a, err)
	}

	// The private value cannot be read.
	_, err := ctx.GetAttribute(key, crypto11.CkaValue)
	var pe p11.Error
	if !errors.As(err, &pe) || pe != p11.CKR_ATTRIBUTE_SENSITIVE {
		t.Errorf("reading CKA_VALUE: %v, want CKR_ATTRIBUTE_SENSITIVE", err)
	}

	// Nor wrapped out under a key the caller controls.
	wrapOut(t, label)

	// Another process sees the same flags.
	if _, err := exec.LookPath("pkcs11-tool"); err != nil {
		testenv.Missing(t, "pkcs11-tool (apt-get install opensc)")
	}
	list, err := exec.Command("pkcs11-tool", "--module", hsm.Module, "--token-label", hsm.Label,
		"--login", "--pin", hsm.PIN, "--list-objects", "--type", "privkey", "--label", label).CombinedOutput()
	if err != nil {
		t.Fatalf("pkcs11-tool --list-objects: %v: %s", err, list)
	}
	var block string
	for _, b := range strings.Split(string(list), "Private Key Object") {
		if strings.Contains(b, "label:      "+label+"\n") {
			block = b
		}
	}
	for _, want := range []string{"Usage:      sign\n", "Access:     sensitive, always sensitive, never extractable, local"} {
		if !strings.Contains(block, want) {
			t.Errorf("pkcs11-tool listing of %q lacks %q:\n%s", label, want, list)
		}
	}
}

// wrapOut tries to export the private key labelled label with C_WrapKey
// under a fresh AES key, on its own session of the already initialised
// module; the token must refuse with CKR_KEY_UNEXTRACTABLE.
func wrapOut(t *testing.T, label string) {
	t.Helper()
	ctx := p11.New(hsm.Module)
	if ctx == nil {
		t.Fatal("cannot load module")
	}
	defer ctx.Destroy() // no Finalize: the Token under test holds the module
	slots, err := ctx.GetSlotList(true)
	if err != nil {
		t.Fatal(err)
	}
	var slot uint
	for _, sl := range slots {
		if ti, err := ctx.GetTokenInfo(sl); err == nil && clean(ti.Label) == hsm.Label {
			slot = sl
		}
	}
	sess, err := ctx.OpenSession(slot, p11.CKF_SERIAL_SESSION|p11.CKF_RW_SESSION)
	if err != nil {
		t.Fatal(err)
	}
	defer ctx.CloseSession(sess)
	if err := ctx.Login(sess, p11.CKU_USER, hsm.PIN); err != nil && !errors.Is(err, p11.Error(p11.CKR_USER_ALREADY_LOGGED_IN)) {
		t.Fatal(err)
	}
	if err := ctx.FindObjectsInit(sess, []*p11.Attribute{
		p11.NewAttribute(p11.CKA_CLASS, p11.CKO_PRIVATE_KEY), p11.NewAttribute(p11.CKA_LABEL, label),
	}); err != nil {
		t.Fatal(err)
	}
	objs, _, err := ctx.FindObjects(sess, 2)
	ctx.FindObjectsFinal(sess)
	if err != nil || len(objs) != 1 {
		t.Fatalf("find private key: %v, %d objects", err, len(objs))
	}
	wrapKey, err := ctx.GenerateKey(sess, []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_KEY_GEN, nil)}, []*p11.Attribute{
		p11.NewAttribute(p11.CKA_TOKEN, false), p11.NewAttribute(p11.CKA_VALUE_LEN, 32),
		p11.NewAttribute(p11.CKA_WRAP, true), p11.NewAttribute(p11.CKA_UNWRAP, true),
	})
	if err != nil {
		t.Fatalf("generate wrapping key: %v", err)
	}
	defer ctx.DestroyObject(sess, wrapKey)
	wrapped, err := ctx.WrapKey(sess, []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_KEY_WRAP_PAD, nil)}, wrapKey, objs[0])
	if err == nil {
		t.Fatalf("C_WrapKey exported the private key (%d bytes)", len(wrapped))
	}
	if !errors.Is(err, p11.Error(p11.CKR_KEY_UNEXTRACTABLE)) {
		t.Errorf("C_WrapKey: %v, want CKR_KEY_UNEXTRACTABLE", err)
	}
}

func TestOpenErrors(t *testing.T) {
	h := testToken(t)
	notLib := filepath.Join(t.TempDir(), "not-a-module.so")
	if err := os.WriteFile(notLib, []byte("not an ELF file"), 0o600); err != nil {
		t.Fatal(err)
	}
	pinFile := "file:" + h.PINFile
	tests := []struct {
		name    string
		uri     string
		opts    []Option
		want    error
		wantMsg string
		wantRV  p11.Error
	}{
		{"wrong PIN", "pkcs11:token=" + h.Label + "?module-path=" + h.Module, []Option{WithPIN("wrong-pin")},
			ErrPINIncorrect, h.Label, p11.CKR_PIN_INCORRECT},
		{"missing token", "pkcs11:token=no-such-token?module-path=" + h.Module + "&pin-source=" + pinFile, nil,
			ErrTokenNotFound, "no-such-token", 0},
		{"missing serial", "pkcs11:token=" + h.Label + ";serial=0000?module-path=" + h.Module + "&pin-source=" + pinFile, nil,
			ErrTokenNotFound, "serial=0000", 0},
		{"missing module", "pkcs11:token=" + h.Label + "?module-path=/nonexistent/libvendor.so&pin-source=" + pinFile, nil,
			ErrModule, "/nonexistent/libvendor.so", 0},
		{"not a module", "pkcs11:token=" + h.Label + "?module-path=" + notLib + "&pin-source=" + pinFile, nil,
			ErrModule, notLib, 0},
		{"unknown module name", "pkcs11:token=" + h.Label + "?module-name=libnope&pin-source=" + pinFile, nil,
			ErrModule, `"libnope" not found`, 0},
		{"library mismatch", "pkcs11:token=" + h.Label + ";library-manufacturer=Acme?module-path=" + h.Module + "&pin-source=" + pinFile, nil,
			ErrModule, "Acme", 0},
		{"no PIN", "pkcs11:token=" + h.Label + "?module-path=" + h.Module, nil,
			ErrPIN, "requires login", 0},
		{"unreadable pin-source", "pkcs11:token=" + h.Label + "?module-path=" + h.Module + "&pin-source=file:/nonexistent/pin", nil,
			ErrPIN, "/nonexistent/pin", 0},
		{"no module", "pkcs11:token=" + h.Label, nil, ErrInvalidURI, "neither module-path nor module-name", 0},
		{"no token selector", "pkcs11:object=x?module-path=" + h.Module, nil, ErrInvalidURI, "selects no token", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u, err := ParseURI(tt.uri)
			if err != nil {
				t.Fatal(err)
			}
			tok, err := Open(u, tt.opts...)
			if err == nil {
				tok.Close()
				t.Fatalf("Open(%s) succeeded", tt.uri)
			}
			if !errors.Is(err, tt.want) {
				t.Errorf("Open: %v; want %v", err, tt.want)
			}
			if !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("Open: %q does not name %q", err, tt.wantMsg)
			}
			if tt.wantRV != 0 {
				var pe p11.Error
				if !errors.As(err, &pe) || pe != tt.wantRV {
					t.Errorf("Open: %v; want PKCS#11 return value %v", err, tt.wantRV)
				}
			}
		})
	}
}

// A second login in the same process is not checked by the token
// (CKR_USER_ALREADY_LOGGED_IN); Open must still refuse a wrong PIN.
func TestWrongPINWhileLoggedIn(t *testing.T) {
	openToken(t)
	u, err := ParseURI(hsm.TokenURI())
	if err != nil {
		t.Fatal(err)
	}
	tok, err := Open(u, WithPIN("wrong-pin"))
	if err == nil {
		tok.Close()
		t.Fatal("Open with a wrong PIN succeeded while another Token is logged in")
	}
	if !errors.Is(err, ErrPINIncorrect) {
		t.Fatalf("Open: %v; want ErrPINIncorrect", err)
	}
	second, err := Open(u, WithPIN(hsm.PIN))
	if err != nil {
		t.Fatalf("Open with the right PIN while logged in: %v", err)
	}
	if err := second.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestOpenSelectors(t *testing.T) {
	h := testToken(t)
	first := openToken(t)
	serial := clean(first.found.info.SerialNumber)
	slot := int(first.found.slot)
	pin := "&pin-source=file:" + h.PINFile
	for _, tt := range []struct {
		name string
		uri  string
		opts []Option
	}{
		{"serial", "pkcs11:serial=" + serial + "?module-path=" + h.Module + pin, nil},
		{"slot-id", "pkcs11:slot-id=" + strconv.Itoa(slot) + "?module-path=" + h.Module + pin, nil},
		{"module-name", "pkcs11:token=" + h.Label + "?module-name=libsofthsm2.so" + pin, []Option{WithModuleDirs(filepath.Dir(h.Module))}},
		{"env PIN", "pkcs11:token=" + h.Label + "?module-path=" + h.Module + "&pin-source=env:PALISADE_TEST_HSM_PIN", nil},
		{"pin-value", "pkcs11:token=" + h.Label + "?module-path=" + h.Module + "&pin-value=" + h.PIN, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("PALISADE_TEST_HSM_PIN", h.PIN)
			u, err := ParseURI(tt.uri)
			if err != nil {
				t.Fatal(err)
			}
			tok, err := Open(u, tt.opts...)
			if err != nil {
				t.Fatalf("Open(%s): %v", tt.uri, err)
			}
			defer tok.Close()
			if err := tok.Ping(); err != nil {
				t.Fatal(err)
			}
			if got := tok.KeyURI("k"); strings.Contains(got, h.PIN) || strings.Contains(got, "pin-value") {
				t.Errorf("KeyURI %q carries the PIN", got)
			}
		})
	}
}

func TestKeyLookup(t *testing.T) {
	tok := openToken(t)
	gen, label := newSigner(t, tok, "lookup")
	id := gen.(*signer).id
	keyURI := tok.KeyURI(label)
	parsedKeyURI, err := ParseURI(keyURI)
	if err != nil {
		t.Fatalf("KeyURI %q does not parse: %v", keyURI, err)
	}
	if parsedKeyURI.Object != label || parsedKeyURI.Type != "private" || parsedKeyURI.Token != hsm.Label {
		t.Errorf("KeyURI %q: object/type/token wrong", keyURI)
	}
	tests := []struct {
		name    string
		find    func() (crypto.Signer, error)
		want    error // nil: must find the generated key
		wantMsg string
	}{
		{"by label", func() (crypto.Signer, error) { return tok.Signer(label) }, nil, ""},
		{"by KeyURI", func() (crypto.Signer, error) { return tok.SignerByURI(parsedKeyURI) }, nil, ""},
		{"by id", func() (crypto.Signer, error) { return tok.SignerByURI(&URI{ID: id}) }, nil, ""},
		{"unknown label", func() (crypto.Signer, error) { return tok.Signer("no-such-key") }, ErrKeyNotFound, `"no-such-key"`},
		{"unknown id", func() (crypto.Signer, error) { return tok.SignerByURI(&URI{ID: []byte{1, 2, 3}}) }, ErrKeyNotFound, "id 010203"},
		{"label and wrong id", func() (crypto.Signer, error) { return tok.SignerByURI(&URI{Object: label, ID: []byte{9}}) }, ErrKeyNotFound, label},
		{"duplicate", func() (crypto.Signer, error) { return tok.GenerateSigner(label) }, ErrKeyExists, label},
		{"duplicate other alg", func() (crypto.Signer, error) { return tok.GenerateSignerAlg(label, ECDSAP384) }, ErrKeyExists, label},
		{"other token", func() (crypto.Signer, error) { return tok.SignerByURI(&URI{Token: "other", Object: label}) }, ErrInvalidURI, "another token"},
		{"cert type", func() (crypto.Signer, error) { return tok.SignerByURI(&URI{Object: label, Type: "cert"}) }, ErrInvalidURI, "type=cert"},
		{"no object", func() (crypto.Signer, error) { return tok.SignerByURI(&URI{Token: hsm.Label}) }, ErrInvalidURI, "names no key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := tt.find()
			if tt.want != nil {
				if !errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.wantMsg) {
					t.Fatalf("got %v, %v; want %v naming %q", s, err, tt.want, tt.wantMsg)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !gen.Public().(*ecdsa.PublicKey).Equal(s.Public()) {
				t.Fatal("found a different key")
			}
			d := sha256.Sum256([]byte("lookup"))
			sig, err := s.Sign(nil, d[:], crypto.SHA256)
			if err != nil || !ecdsa.VerifyASN1(gen.Public().(*ecdsa.PublicKey), d[:], sig) {
				t.Fatalf("sign with found key: %v", err)
			}
		})
	}
	if _, err := tok.GenerateSigner(""); err == nil {
		t.Error("GenerateSigner accepted an empty label")
	}
}

func TestSignRejectsWrongDigestLength(t *testing.T) {
	s, _ := newSigner(t, openToken(t), "digest")
	d := sha512.Sum512([]byte("x"))
	if _, err := s.Sign(nil, d[:], crypto.SHA256); err == nil || !strings.Contains(err.Error(), "digest is 64 bytes") {
		t.Fatalf("Sign with a 64-byte digest for SHA-256: %v", err)
	}
}

func TestCloseAndTwoTokens(t *testing.T) {
	a := openToken(t)
	u, _ := ParseURI(hsm.TokenURI())
	b, err := Open(u)
	if err != nil {
		t.Fatal(err)
	}
	sa, label := newSigner(t, a, "two")
	sb, err := b.Signer(label)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	d := sha256.Sum256([]byte("x"))
	if _, err := sb.Sign(nil, d[:], crypto.SHA256); !errors.Is(err, ErrClosed) {
		t.Fatalf("Sign on closed token: %v, want ErrClosed", err)
	}
	if err := b.Ping(); !errors.Is(err, ErrClosed) {
		t.Fatalf("Ping on closed token: %v, want ErrClosed", err)
	}
	if err := b.Reopen(); !errors.Is(err, ErrClosed) {
		t.Fatalf("Reopen on closed token: %v, want ErrClosed", err)
	}
	// Closing one Token leaves the other (same module, same login) working.
	if _, err := sa.Sign(nil, d[:], crypto.SHA256); err != nil {
		t.Fatalf("Sign on the other token after Close: %v", err)
	}
}

// TestTokenVanishes removes the token's storage under a running Token: the
// failure must surface as ErrHSMUnavailable (never a silent "not found"),
// and Reopen must bring back the Signers handed out before.
func TestTokenVanishes(t *testing.T) {
	tok := openToken(t)
	s, label := newSigner(t, tok, "vanish")
	d := sha256.Sum256([]byte("vanish"))
	if _, err := s.Sign(nil, d[:], crypto.SHA256); err != nil {
		t.Fatal(err)
	}
	restore := hideToken(t)

	if _, err := s.Sign(nil, d[:], crypto.SHA256); !errors.Is(err, ErrHSMUnavailable) {
		t.Fatalf("Sign after the token vanished: %v, want ErrHSMUnavailable", err)
	}
	var pe p11.Error
	if _, err := s.Sign(nil, d[:], crypto.SHA256); !errors.As(err, &pe) {
		t.Errorf("Sign error %v hides the PKCS#11 return value", err)
	}
	if err := tok.Ping(); !errors.Is(err, ErrHSMUnavailable) {
		t.Fatalf("Ping after the token vanished: %v, want ErrHSMUnavailable", err)
	}
	if _, err := tok.Signer(label); !errors.Is(err, ErrHSMUnavailable) {
		t.Fatalf("Signer after the token vanished: %v, want ErrHSMUnavailable, not not-found", err)
	}

	restore()
	// The old Context does not heal on its own.
	if err := tok.Ping(); !errors.Is(err, ErrHSMUnavailable) {
		t.Fatalf("Ping before Reopen: %v, want ErrHSMUnavailable", err)
	}
	if err := tok.Reopen(); err != nil {
		t.Fatalf("Reopen: %v", err)
	}
	if err := tok.Ping(); err != nil {
		t.Fatalf("Ping after Reopen: %v", err)
	}
	sig, err := s.Sign(nil, d[:], crypto.SHA256)
	if err != nil {
		t.Fatalf("old Signer after Reopen: %v", err)
	}
	if !ecdsa.VerifyASN1(s.Public().(*ecdsa.PublicKey), d[:], sig) {
		t.Fatal("signature after Reopen does not verify")
	}
}

// TestReopenWhileGone: Reopen fails while the token is away, signing keeps
// reporting ErrHSMUnavailable, and a later Reopen recovers.
func TestReopenWhileGone(t *testing.T) {
	tok := openToken(t)
	s, _ := newSigner(t, tok, "gone")
	restore := hideToken(t)
	err := tok.Reopen()
	if err == nil {
		t.Fatal("Reopen succeeded without the token")
	}
	t.Logf("Reopen without the token: %v", err)
	d := sha256.Sum256([]byte("gone"))
	if _, err := s.Sign(nil, d[:], crypto.SHA256); !errors.Is(err, ErrHSMUnavailable) {
		t.Fatalf("Sign after failed Reopen: %v, want ErrHSMUnavailable", err)
	}
	if err := tok.Ping(); !errors.Is(err, ErrHSMUnavailable) {
		t.Fatalf("Ping after failed Reopen: %v, want ErrHSMUnavailable", err)
	}
	restore()
	if err := tok.Reopen(); err != nil {
		t.Fatalf("Reopen after the token returned: %v", err)
	}
	if _, err := s.Sign(nil, d[:], crypto.SHA256); err != nil {
		t.Fatalf("Sign after recovery: %v", err)
	}
}

// TestPingWithoutKeys: Ping notices a vanished token before any key has
// been handed out (nothing to probe but the slot).
func TestPingWithoutKeys(t *testing.T) {
	tok := openToken(t)
	if err := tok.Ping(); err != nil {
		t.Fatal(err)
	}
	restore := hideToken(t)
	if err := tok.Ping(); !errors.Is(err, ErrHSMUnavailable) {
		t.Fatalf("Ping with the token gone: %v, want ErrHSMUnavailable", err)
	}
	restore()
	if err := tok.Reopen(); err != nil {
		t.Fatal(err)
	}
	if err := tok.Ping(); err != nil {
		t.Fatalf("Ping after Reopen: %v", err)
	}
}
