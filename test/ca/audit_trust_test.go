//go:build integration

package ca

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/palisade-id/palisade/test/harness"
)

// TestAuditTrustComesFromTheHSM: `palisade audit verify -config` and
// palisade-server trust the audit log through the HSM (its audit key and
// the anchor it holds), never through files in data_dir, which whoever can
// rewrite the log can rewrite too.
func TestAuditTrustComesFromTheHSM(t *testing.T) {
	a := harness.New(t, harness.Options{})
	a.Ceremony()
	// The bundle as the operator carries it away from the ceremony.
	outOfBand := filepath.Join(t.TempDir(), "bundle.pem")
	copyFile(t, filepath.Join(a.DataDir(), "bundle.pem"), outOfBand)
	for i := 0; i < 2; i++ { // each run ends with a checkpoint
		a.Start()
		a.MustCLI("entry", "create", "-spiffeID", fmt.Sprintf("spiffe://%s/w%d", a.TrustDomain, i),
			"-parentID", "spiffe://"+a.TrustDomain+"/palisade/node/n", "-selector", "unix:uid:1000")
		a.Stop()
	}
	logPath := filepath.Join(a.DataDir(), "audit.log")
	bundlePath := filepath.Join(a.DataDir(), "bundle.pem")
	orig, err := os.ReadFile(logPath)
	if err != nil {
		t.Fatal(err)
	}
	origBundle, _ := os.ReadFile(bundlePath)
	cps := checkpointSeqs(t, orig)
	if len(cps) < 3 {
		t.Fatalf("want at least 3 checkpoints, log has %v", cps)
	}
	head := cps[len(cps)-1]
	restore := func() {
		os.WriteFile(logPath, orig, 0o600)
		os.WriteFile(bundlePath, origBundle, 0o644)
	}
	// refused checks that the server does not start on the log in data_dir,
	// saying want, and leaves the log as it was: it must never sign a
	// checkpoint over history it cannot trust.
	refused := func(t *testing.T, want string) {
		t.Helper()
		before, _ := os.ReadFile(logPath)
		err := a.StartErr()
		if err == nil {
			a.Stop()
			t.Fatal("palisade-server started")
		}
		if !strings.Contains(err.Error(), want) {
			t.Fatalf("server refusal does not say %q:\n%v", want, err)
		}
		if after, _ := os.ReadFile(logPath); !bytes.Equal(before, after) {
			t.Fatal("refused start changed the audit log")
		}
	}

	t.Run("untouched-log-verifies", func(t *testing.T) {
		out := a.MustCLIFor(t, "audit", "verify", "-requireCheckpointAtEnd", "-config", a.ConfigPath)
		if !strings.Contains(out, fmt.Sprintf("anchor: checkpoint %d in the HSM", head)) || !strings.Contains(out, "verified") {
			t.Fatalf("output does not show the HSM anchor at checkpoint %d:\n%s", head, out)
		}
		out = a.MustCLIFor(t, "audit", "verify", "-requireCheckpointAtEnd", "-log", logPath, "-bundle", outOfBand)
		if !strings.Contains(out, "verified") || !strings.Contains(out, "anchor was not checked") {
			t.Fatalf("-bundle output:\n%s", out)
		}
	})

	t.Run("forged-log-and-bundle-fail", func(t *testing.T) {
		defer restore()
		forged, forgedRoot := forgeAuditLog(t, orig)
		os.WriteFile(logPath, forged, 0o600)
		os.WriteFile(bundlePath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: forgedRoot.Raw}), 0o644)
		// The forgery is sound: it verifies against the forger's root,
		// as the old verify trusted it from data_dir by default.
		a.MustCLIFor(t, "audit", "verify", "-requireCheckpointAtEnd", "-log", logPath, "-bundle", bundlePath)
		// That bundle.pem is not trusted now, so the first checkpoint is
		// the first bad record.
		first := fmt.Sprintf("seq %d: bad-signature: checkpoint signed by untrusted key", cps[0])
		for _, args := range [][]string{
			{"audit", "verify", "-requireCheckpointAtEnd", "-config", a.ConfigPath},
			{"audit", "verify", "-config", a.ConfigPath, "-bundle", outOfBand},
		} {
			r := a.CLI(args...)
			if r.Err == nil {
				t.Fatalf("%v: forged log verified:\n%s", args, r.Stdout)
			}
			if !strings.Contains(firstProblem(r.Stdout), first) {
				t.Fatalf("%v: first problem does not name record %d:\n%s%s", args, cps[0], r.Stdout, r.Stderr)
			}
		}
		// With the HSM, the anchor also shows the forged chain is not the one it holds.
		r := a.CLI("audit", "verify", "-config", a.ConfigPath)
		if want := fmt.Sprintf("seq %d: edited: record %d is not checkpoint %d anchored in the HSM", head, head, head); !strings.Contains(r.Stdout, want) {
			t.Fatalf("no anchor problem %q:\n%s", want, r.Stdout)
		}
		refused(t, first)
	})

	t.Run("tail-cut-back-to-an-earlier-checkpoint-fails", func(t *testing.T) {
		defer restore()
		cut := cps[len(cps)-2]
		os.WriteFile(logPath, firstRecords(t, orig, cut), 0o600)
		want := fmt.Sprintf("seq %d: truncated: records %d..%d are missing", cut+1, cut+1, head)
		for _, args := range [][]string{
			{"audit", "verify", "-config", a.ConfigPath},
			{"audit", "verify", "-requireCheckpointAtEnd", "-config", a.ConfigPath},
		} {
			r := a.CLI(args...)
			if r.Err == nil {
				t.Fatalf("%v: truncated log verified:\n%s", args, r.Stdout)
			}
			if !strings.Contains(r.Stdout, "PROBLEM audit.log line ") || !strings.Contains(r.Stdout, want) {
				t.Fatalf("%v: output does not name the missing records (%q):\n%s%s", args, want, r.Stdout, r.Stderr)
			}
		}
		refused(t, want)
	})

	t.Run("without-hsm-or-bundle-says-what-to-give", func(t *testing.T) {
		r := a.CLI("audit", "verify", "-log", logPath)
		if r.Err == nil || !strings.Contains(r.Stderr, "-bundle FILE") {
			t.Fatalf("no trust source: err=%v stderr=%s", r.Err, r.Stderr)
		}
		cfg, _ := os.ReadFile(a.ConfigPath)
		noHSM := filepath.Join(t.TempDir(), "server.yaml")
		os.WriteFile(noHSM, []byte(strings.Replace(string(cfg), "token="+a.Token.Label, "token=no-such-token", 1)), 0o600)
		r = a.CLI("audit", "verify", "-config", noHSM)
		if r.Err == nil || !strings.Contains(r.Stderr, "cannot open the HSM") || !strings.Contains(r.Stderr, "-bundle FILE") {
			t.Fatalf("HSM unavailable: err=%v stderr=%s", r.Err, r.Stderr)
		}
	})

	// Restored, the appliance starts and its log verifies.
	a.Start()
	a.Stop()
	a.MustCLI("audit", "verify", "-requireCheckpointAtEnd", "-config", a.ConfigPath)
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// firstProblem returns the first PROBLEM line of verify's output.
func firstProblem(out string) string {
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "PROBLEM ") {
			return l
		}
	}
	return ""
}

// auditLine mirrors the log's canonical line: the fields in this order,
// HTML characters unescaped.
type auditLine struct {
	Seq   uint64          `json:"seq"`
	Time  string          `json:"time"`
	Kind  string          `json:"kind"`
	Actor string          `json:"actor"`
	Data  json.RawMessage `json:"data,omitempty"`
	Prev  string          `json:"prev"`
	Hash  string          `json:"hash"`
	Sig   []byte          `json:"sig,omitempty"`
	Cert  []byte          `json:"cert,omitempty"`
}

func parseAuditLog(t *testing.T, b []byte) []auditLine {
	t.Helper()
	var out []auditLine
	for _, l := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
		var r auditLine
		if err := json.Unmarshal([]byte(l), &r); err != nil {
			t.Fatalf("audit line %q: %v", l, err)
		}
		out = append(out, r)
	}
	return out
}

func checkpointSeqs(t *testing.T, b []byte) []uint64 {
	t.Helper()
	var out []uint64
	for _, r := range parseAuditLog(t, b) {
		if r.Kind == "checkpoint" {
			out = append(out, r.Seq)
		}
	}
	return out
}

// firstRecords returns the log's lines up to and including record seq.
func firstRecords(t *testing.T, b []byte, seq uint64) []byte {
	t.Helper()
	lines := strings.SplitAfter(string(b), "\n")
	if uint64(len(lines)) < seq {
		t.Fatalf("log has %d lines, not %d", len(lines), seq)
	}
	return []byte(strings.Join(lines[:seq], ""))
}

// forgeAuditLog rewrites the log as the review's proof of concept did,
// without the HSM: record 1's actor changed, every hash recomputed, every
// checkpoint re-signed with a software key certified by a made-up root.
// The hash and signature formats are rebuilt here from ca/audit's
// documentation, as an attacker would.
func forgeAuditLog(t *testing.T, orig []byte) ([]byte, *x509.Certificate) {
	t.Helper()
	rootKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	from, to := time.Now().Add(-24*time.Hour), time.Now().Add(24*time.Hour)
	rootTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "forged root"},
		NotBefore: from, NotAfter: to, IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	rootDER, _ := x509.CreateCertificate(rand.Reader, rootTmpl, rootTmpl, rootKey.Public(), rootKey)
	root, _ := x509.ParseCertificate(rootDER)
	leafTmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "forged audit"},
		NotBefore: from, NotAfter: to, KeyUsage: x509.KeyUsageDigitalSignature}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, root, key.Public(), rootKey)
	if err != nil {
		t.Fatal(err)
	}
	spki, _ := x509.MarshalPKIXPublicKey(key.Public())
	kid := sha256.Sum256(spki)
	cpData, _ := json.Marshal(map[string]string{"alg": "ecdsa-sha256", "key_id": hex.EncodeToString(kid[:])})

	var out bytes.Buffer
	enc := json.NewEncoder(&out)
	enc.SetEscapeHTML(false)
	prev := strings.Repeat("0", 64)
	for i, r := range parseAuditLog(t, orig) {
		if i == 0 {
			r.Actor = "operator:uid=4242"
		}
		r.Prev = prev
		if r.Kind == "checkpoint" {
			r.Data, r.Cert = cpData, leafDER
		}
		r.Hash = forgedHash(r)
		if r.Kind == "checkpoint" {
			raw, _ := hex.DecodeString(r.Hash)
			h := sha256.New()
			h.Write([]byte("palisade-audit-checkpoint-v1\x00"))
			binary.Write(h, binary.BigEndian, r.Seq)
			h.Write(raw)
			if r.Sig, err = ecdsa.SignASN1(rand.Reader, key, h.Sum(nil)); err != nil {
				t.Fatal(err)
			}
		}
		if err := enc.Encode(r); err != nil {
			t.Fatal(err)
		}
		prev = r.Hash
	}
	return out.Bytes(), root
}

func forgedHash(r auditLine) string {
	h := sha256.New()
	h.Write([]byte("palisade-audit-record-v1\x00"))
	binary.Write(h, binary.BigEndian, r.Seq)
	for _, f := range [][]byte{[]byte(r.Time), []byte(r.Kind), []byte(r.Actor), r.Data, []byte(r.Prev)} {
		binary.Write(h, binary.BigEndian, uint32(len(f)))
		h.Write(f)
	}
	return hex.EncodeToString(h.Sum(nil))
}
