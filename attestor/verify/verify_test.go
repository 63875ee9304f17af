package verify_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/palisade-id/palisade/attestor/verify"
	"github.com/palisade-id/palisade/attestor/verify/verifytest"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

var (
	nodeOnce sync.Once
	theNode  *verifytest.Node
)

// node returns a shared software node (RSA key generation is slow).
func node(t testing.TB) *verifytest.Node {
	t.Helper()
	nodeOnce.Do(func() {
		n, err := verifytest.NewNode()
		if err != nil {
			panic(err)
		}
		theNode = n
	})
	return theNode
}

func TestParseEKPublic(t *testing.T) {
	n := node(t)
	tests := []struct {
		name string
		raw  []byte
		want error
	}{
		{"valid RSA EK", n.EKPublic, nil},
		{"empty", nil, verify.ErrMalformed},
		{"truncated", n.EKPublic[:len(n.EKPublic)/2], verify.ErrMalformed},
		{"trailing bytes", append(bytes.Clone(n.EKPublic), 0), verify.ErrMalformed},
		{"signing key as EK", n.AKPublic, verify.ErrEKAttributes},
		{"huge", make([]byte, verify.MaxPublicSize+1), verify.ErrTooLarge},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ek, err := verify.ParseEKPublic(tc.raw)
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if tc.want == nil {
				want, _ := verify.HashPublicKey(&n.EKKey.PublicKey)
				if ek.Hash != want {
					t.Fatalf("EK hash %x, want %x", ek.Hash, want)
				}
			}
		})
	}
}

func TestParseAKPublic(t *testing.T) {
	n := node(t)
	p384 := verify.AKTemplate()
	p384.Parameters = tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
		Scheme: tpm2.TPMTECCScheme{Scheme: tpm2.TPMAlgECDSA,
			Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSigSchemeECDSA{HashAlg: tpm2.TPMAlgSHA256})},
		CurveID: tpm2.TPMECCNistP384,
	})
	unrestricted := verify.AKTemplate()
	unrestricted.ObjectAttributes.Restricted = false
	offCurve := verify.AKTemplate() // all-zero point
	tests := []struct {
		name string
		raw  []byte
		want error
	}{
		{"valid", n.AKPublic, nil},
		{"EK as AK", n.EKPublic, verify.ErrAKAttributes},
		{"P-384", tpm2.Marshal(p384), verify.ErrAKAlgorithm},
		{"unrestricted", tpm2.Marshal(unrestricted), verify.ErrAKAttributes},
		{"point not on curve", tpm2.Marshal(offCurve), verify.ErrMalformed},
		{"truncated", n.AKPublic[:10], verify.ErrMalformed},
		{"trailing bytes (name changes)", append(bytes.Clone(n.AKPublic), 0), nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ak, err := verify.ParseAKPublic(tc.raw)
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if tc.want == nil && bytes.Equal(ak.Name, n.AKName) != bytes.Equal(tc.raw, n.AKPublic) {
				t.Fatalf("name %x vs TPM name %x: must match exactly when the bytes do", ak.Name, n.AKName)
			}
		})
	}
}

func TestMakeCredential(t *testing.T) {
	n := node(t)
	ek, err := verify.ParseEKPublic(n.EKPublic)
	if err != nil {
		t.Fatal(err)
	}
	secret := []byte("0123456789abcdef0123456789abcdef")
	ch, err := verify.MakeCredential(rand.Reader, ek, n.AKName, secret)
	if err != nil {
		t.Fatal(err)
	}
	got, err := n.Activate(n.AKName, ch.IDObject, ch.EncryptedSecret)
	if err != nil || !bytes.Equal(got, secret) {
		t.Fatalf("activate = %x, %v; want %x", got, err, secret)
	}
	// Another object name (an AK outside this TPM) cannot recover it.
	other := bytes.Clone(n.AKName)
	other[5] ^= 1
	if _, err := n.Activate(other, ch.IDObject, ch.EncryptedSecret); err == nil {
		t.Fatal("activation under another name succeeded")
	}
	if _, err := verify.MakeCredential(rand.Reader, ek, n.AKName, make([]byte, 33)); !errors.Is(err, verify.ErrCredentialInput) {
		t.Fatalf("oversized secret: err = %v", err)
	}
}

func TestVerifyQuote(t *testing.T) {
	n := node(t)
	ak, err := verify.ParseAKPublic(n.AKPublic)
	if err != nil {
		t.Fatal(err)
	}
	nonce := bytes.Repeat([]byte{7}, 32)
	pcrs := []uint32{0, 7}
	n.Extend(7, []byte("secure boot"))
	quoted, sig, values, err := n.Quote(nonce, pcrs)
	if err != nil {
		t.Fatal(err)
	}
	otherKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	forged, _ := verifytest.SignWith(otherKey, quoted)
	tampered := map[uint32][]byte{0: values[0], 7: make([]byte, 32)}
	sigSHA1 := bytes.Clone(sig)
	sigSHA1[3] = byte(tpm2.TPMAlgSHA1) // TPMT_SIGNATURE: sigAlg(2) hash(2)

	tests := []struct {
		name    string
		quoted  []byte
		sig     []byte
		nonce   []byte
		pcrs    []uint32
		values  map[uint32][]byte
		wantErr error
	}{
		{"valid", quoted, sig, nonce, pcrs, values, nil},
		{"forged signature", quoted, forged, nonce, pcrs, values, verify.ErrQuoteSignature},
		{"SHA-1 signature", quoted, sigSHA1, nonce, pcrs, values, verify.ErrQuoteSignature},
		{"truncated signature", quoted, sig[:9], nonce, pcrs, values, verify.ErrMalformed},
		{"signature with trailer", quoted, append(bytes.Clone(sig), 0), nonce, pcrs, values, verify.ErrMalformed},
		{"other nonce", quoted, sig, make([]byte, 32), pcrs, values, verify.ErrQuoteNonce},
		{"other selection", quoted, sig, nonce, []uint32{0, 1, 7}, values, verify.ErrQuoteSelection},
		{"tampered PCR values", quoted, sig, nonce, pcrs, tampered, verify.ErrPCRDigest},
		{"huge quote", make([]byte, verify.MaxAttestSize+1), sig, nonce, pcrs, values, verify.ErrTooLarge},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			q, err := verify.VerifyQuote(ak, tc.quoted, tc.sig, tc.nonce, tc.pcrs, tc.values)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			if tc.wantErr == nil && !bytes.Equal(q.PCRs[7], n.PCR(7)) {
				t.Fatalf("PCR 7 = %x", q.PCRs[7])
			}
		})
	}
}

func digestHex(s string) string {
	d := sha256.Sum256([]byte(s))
	return hex.EncodeToString(d[:])
}

func TestPolicy(t *testing.T) {
	zero := strings.Repeat("0", 64)
	good := "version: 2\nclasses:\n  worker:\n    pcrs:\n      0: [\"" + zero + "\"]\n      7: [\"" + digestHex("a") + "\", \"" + zero + "\"]\n"
	tests := []struct {
		name string
		yaml string
		want error
		msg  string // in the error, if set
	}{
		{"valid", good, nil, ""},
		{"second document", good + "---\n" + strings.Replace(good, "version: 2", "version: 3", 1), verify.ErrPolicy, "more than one YAML document"},
		{"trailing separator", good + "---\n", nil, ""},
		{"trailing separator and comment", good + "---\n# end\n---\n", nil, ""},
		{"empty", "", verify.ErrPolicy, "empty file"},
		{"blank", "\n  \n", verify.ErrPolicy, "empty file"},
		{"unknown key", good + "extra: 1\n", verify.ErrPolicy, ""},
		{"version zero", strings.Replace(good, "version: 2", "version: 0", 1), verify.ErrPolicy, ""},
		{"bad digest", strings.Replace(good, zero, "zz", 1), verify.ErrPolicy, ""},
		{"PCR out of range", strings.Replace(good, "      0:", "      24:", 1), verify.ErrPolicy, ""},
		{"bad class name", strings.Replace(good, "worker", "Wörker", 1), verify.ErrPolicy, ""},
		{"not yaml", "{{{", verify.ErrPolicy, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := verify.ParsePolicy([]byte(tc.yaml))
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if err != nil {
				if !strings.Contains(err.Error(), tc.msg) {
					t.Fatalf("err = %v, want it to say %q", err, tc.msg)
				}
				return
			}
			sel, _ := p.Selection("worker")
			if len(sel) != 2 || sel[0] != 0 || sel[1] != 7 {
				t.Fatalf("selection = %v", sel)
			}
			zeroB := make([]byte, 32)
			if err := p.Check("worker", map[uint32][]byte{0: zeroB, 7: zeroB}); err != nil {
				t.Fatalf("golden values refused: %v", err)
			}
			err = p.Check("worker", map[uint32][]byte{0: zeroB, 7: bytes.Repeat([]byte{1}, 32)})
			if !errors.Is(err, verify.ErrPCRMismatch) || !strings.Contains(err.Error(), "PCR 7") {
				t.Fatalf("mismatch err = %v", err)
			}
			if err := p.Check("db", nil); !errors.Is(err, verify.ErrUnknownClass) {
				t.Fatalf("unknown class err = %v", err)
			}
		})
	}
}

func TestNodeID(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("example.org")
	var h [32]byte
	h[0] = 0xab
	id, err := verify.NodeID(td, h)
	if err != nil {
		t.Fatal(err)
	}
	want := "spiffe://example.org/palisade/node/ab" + strings.Repeat("00", 31)
	if id.String() != want {
		t.Fatalf("id = %s, want %s", id, want)
	}
}

func TestPolicyExampleFile(t *testing.T) {
	raw, err := os.ReadFile("testdata/pcrpolicy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	p, err := verify.ParsePolicy(raw)
	if err != nil {
		t.Fatal(err)
	}
	sel, err := p.Selection("gateway")
	if err != nil || len(sel) != 3 || sel[1] != 4 {
		t.Fatalf("gateway selection %v, %v", sel, err)
	}
}
