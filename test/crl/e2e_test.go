//go:build integration

package crl

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/palisade-id/palisade/ca/pkcs11"
	"github.com/palisade-id/palisade/ca/store"
	"github.com/palisade-id/palisade/crl"
	"github.com/palisade-id/palisade/test/softhsm"
	"github.com/palisade-id/palisade/test/testenv"
)

const serveEnv = "PALISADE_CRL_TEST_SERVE"

var (
	hsm       *softhsm.Token
	hsmErr    error
	benchDirs []string // removed when the test binary ends
)

func TestMain(m *testing.M) {
	if p := os.Getenv(serveEnv); p != "" {
		if err := serve(p); err != nil {
			fmt.Fprintln(os.Stderr, "server:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	code := func() int {
		defer func() {
			for _, d := range benchDirs {
				os.RemoveAll(d)
			}
		}()
		if softhsm.FindModule() == "" {
			hsmErr = fmt.Errorf("SoftHSM2 module not installed (apt-get install softhsm2)")
			return m.Run()
		}
		dir, err := os.MkdirTemp("", "palisade-crl-e2e-")
		if err != nil {
			hsmErr = err
			return m.Run()
		}
		defer os.RemoveAll(dir)
		hsm, hsmErr = softhsm.Create(dir, "palisade-crl")
		return m.Run()
	}()
	os.Exit(code)
}

// pki is a root and an intermediate whose keys live in SoftHSM2, and leaves
// signed through PKCS#11 with the CDP and AIA the CA writes.
type pki struct {
	dir        string
	tok        *pkcs11.Token
	root       *x509.Certificate
	inter      *x509.Certificate
	interSign  crypto.Signer
	interLabel string
	base       string
}

var runSeq int

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func newPKI(t *testing.T, addr string) *pki {
	t.Helper()
	testenv.Require(t, "softhsm2-util", "openssl")
	if hsmErr != nil {
		testenv.Missing(t, hsmErr.Error())
	}
	u, err := pkcs11.ParseURI(hsm.TokenURI())
	if err != nil {
		t.Fatal(err)
	}
	tok, err := pkcs11.Open(u)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tok.Close() })
	p := &pki{dir: t.TempDir(), tok: tok, base: "http://" + addr}
	runSeq++ // -count=N reuses the process's token: fresh labels per run
	p.interLabel = fmt.Sprintf("e2e-int-%d", runSeq)
	rootKey, err := tok.GenerateSigner(fmt.Sprintf("e2e-root-%d", runSeq))
	if err != nil {
		t.Fatal(err)
	}
	p.interSign, err = tok.GenerateSigner(p.interLabel)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	p.root = p.sign(t, &x509.Certificate{
		Subject:   pkix.Name{Organization: []string{"Palisade e2e"}, CommonName: "root"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(48 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, BasicConstraintsValid: true, IsCA: true,
		URIs: []*url.URL{{Scheme: "spiffe", Host: "example.org"}},
	}, nil, rootKey.Public(), rootKey)
	p.inter = p.sign(t, &x509.Certificate{
		Subject:   pkix.Name{Organization: []string{"Palisade e2e"}, CommonName: "intermediate"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, BasicConstraintsValid: true, IsCA: true,
		MaxPathLenZero: true, URIs: []*url.URL{{Scheme: "spiffe", Host: "example.org"}},
		PermittedURIDomains: []string{"example.org"},
	}, p.root, p.interSign.Public(), rootKey)
	p.writePEM(t, "root.pem", p.root)
	p.writePEM(t, "inter.pem", p.inter)
	if err := os.WriteFile(filepath.Join(p.dir, "inter.der"), p.inter.Raw, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func (p *pki) sign(t *testing.T, tmpl, parent *x509.Certificate, pub crypto.PublicKey, s crypto.Signer) *x509.Certificate {
	t.Helper()
	spki, _ := x509.MarshalPKIXPublicKey(pub)
	ski := sha256.Sum256(spki)
	tmpl.SubjectKeyId = ski[:20]
	b := make([]byte, 16)
	rand.Read(b)
	b[0] = 1
	tmpl.SerialNumber = new(big.Int).SetBytes(b)
	if parent == nil {
		parent = tmpl
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, s)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func (p *pki) writePEM(t *testing.T, name string, c *x509.Certificate) string {
	t.Helper()
	path := filepath.Join(p.dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func (p *pki) keyID() string { return fmt.Sprintf("%x", p.inter.SubjectKeyId) }

// leaf mints an X509-SVID through the HSM intermediate and returns it with
// its PEM path.
func (p *pki) leaf(t *testing.T, name string) (*x509.Certificate, string) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	now := time.Now()
	c := p.sign(t, &x509.Certificate{
		NotBefore: now.Add(-time.Minute), NotAfter: now.Add(2 * time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
		URIs:        []*url.URL{{Scheme: "spiffe", Host: "example.org", Path: "/w/" + name}},
		OCSPServer:  []string{crl.OCSPURL(p.base)}, CRLDistributionPoints: []string{crl.CRLURL(p.base, p.keyID())},
	}, p.inter, &key.PublicKey, p.interSign)
	return c, p.writePEM(t, name+".pem", c)
}

// server is the revocation service in a child process (kill -9 able).
type server struct {
	t    *testing.T
	cfg  string
	base string
	cmd  *exec.Cmd
}

func (s *server) start() {
	t := s.t
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), serveEnv+"="+s.cfg)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s.cmd = cmd
	t.Cleanup(func() {
		if s.cmd == cmd {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get(s.base + "/test/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("server did not become ready")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (s *server) kill9() {
	s.cmd.Process.Signal(os.Kill)
	s.cmd.Wait()
	s.cmd = nil
}

func (s *server) post(path string, form url.Values) string {
	s.t.Helper()
	resp, err := http.PostForm(s.base+path, form)
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		s.t.Fatalf("%s: HTTP %d %s", path, resp.StatusCode, b)
	}
	return string(b)
}

func (s *server) get(path string) []byte {
	s.t.Helper()
	resp, err := http.Get(s.base + path)
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		s.t.Fatalf("%s: HTTP %d %s", path, resp.StatusCode, b)
	}
	return b
}

func run(t *testing.T, name string, args ...string) (string, error) {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	return string(out), err
}

func (p *pki) opensslOCSP(t *testing.T, base, certPath string) string {
	t.Helper()
	out := p.opensslOCSPNoNonceCheck(t, base, certPath)
	if strings.Contains(out, "WARNING") {
		t.Fatalf("openssl warns:\n%s", out)
	}
	return out
}

// opensslOCSPNoNonceCheck tolerates "no nonce in response", which is what
// an HSM outage gives (the pre-signed answer, see crl's responder).
func (p *pki) opensslOCSPNoNonceCheck(t *testing.T, base, certPath string) string {
	t.Helper()
	out, err := run(t, "openssl", "ocsp", "-issuer", filepath.Join(p.dir, "inter.pem"), "-cert", certPath,
		"-url", base+"/ocsp", "-CAfile", filepath.Join(p.dir, "root.pem"), "-resp_text")
	if err != nil {
		t.Fatalf("openssl ocsp: %v\n%s", err, out)
	}
	if !strings.Contains(out, "Response verify OK") {
		t.Fatalf("openssl did not verify the response:\n%s", out)
	}
	return out
}

// fetchCRL downloads a CRL, checks it with `openssl crl`, and returns the
// PEM path and openssl's text.
func (p *pki) fetchCRL(t *testing.T, s *server, path, name string) (string, string) {
	t.Helper()
	der := s.get(path)
	derPath := filepath.Join(p.dir, name+".der")
	pemPath := filepath.Join(p.dir, name+".pem")
	os.WriteFile(derPath, der, 0o600)
	chain := filepath.Join(p.dir, "chain.pem")
	r, _ := os.ReadFile(filepath.Join(p.dir, "root.pem"))
	i, _ := os.ReadFile(filepath.Join(p.dir, "inter.pem"))
	os.WriteFile(chain, append(i, r...), 0o600)
	text, err := run(t, "openssl", "crl", "-inform", "DER", "-in", derPath, "-text", "-noout", "-CAfile", chain)
	if err != nil || !strings.Contains(text, "verify OK") {
		t.Fatalf("openssl crl: %v\n%s", err, text)
	}
	if out, err := run(t, "openssl", "crl", "-inform", "DER", "-in", derPath, "-out", pemPath); err != nil {
		t.Fatalf("openssl crl convert: %v\n%s", err, out)
	}
	return pemPath, text
}

func (p *pki) verify(t *testing.T, crlPEM, certPath string) (string, bool) {
	t.Helper()
	out, err := run(t, "openssl", "verify", "-crl_check", "-CAfile", filepath.Join(p.dir, "root.pem"),
		"-untrusted", filepath.Join(p.dir, "inter.pem"), "-CRLfile", crlPEM, certPath)
	return out, err == nil
}

func serialHex(c *x509.Certificate) string { return fmt.Sprintf("%X", c.SerialNumber.Bytes()) }

func TestRevocationEndToEnd(t *testing.T) {
	addr := freeAddr(t)
	p := newPKI(t, addr)
	good, goodPath := p.leaf(t, "good")
	bad, badPath := p.leaf(t, "bad")
	n1, n1Path := p.leaf(t, "node1-a")
	n2, n2Path := p.leaf(t, "node1-b")
	_, unknownPath := p.leaf(t, "unrecorded")

	storePath := filepath.Join(p.dir, "ca.db")
	st, err := store.Open(storePath, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	node := "spiffe://example.org/node/1"
	for _, c := range []struct {
		cert *x509.Certificate
		node string
	}{{good, ""}, {bad, ""}, {n1, node}, {n2, node}} {
		err := st.RecordIssued(store.CertRecord{Serial: c.cert.SerialNumber, SPIFFEID: c.cert.URIs[0].String(),
			NodeID: c.node, IssuerKeyID: p.keyID(), Kind: store.KindX509SVID, NotBefore: c.cert.NotBefore, NotAfter: c.cert.NotAfter})
		if err != nil {
			t.Fatal(err)
		}
	}
	st.Close()

	sc := serverConfig{Addr: addr, TokenURI: hsm.TokenURI(), InterLabel: p.interLabel, InterCert: filepath.Join(p.dir, "inter.der"),
		StorePath: storePath, DataDir: filepath.Join(p.dir, "crl"), AuditPath: filepath.Join(p.dir, "audit.jsonl"), OCSPValidity: time.Hour}
	b, _ := json.Marshal(sc)
	cfgPath := filepath.Join(p.dir, "server.json")
	os.WriteFile(cfgPath, b, 0o600)
	s := &server{t: t, cfg: cfgPath, base: p.base}
	s.start()

	t.Run("ocsp good and unknown", func(t *testing.T) {
		var before, after map[string]uint64
		json.Unmarshal(s.get("/test/metrics"), &before)
		if out := p.opensslOCSP(t, p.base, goodPath); !strings.Contains(out, goodPath+": good") {
			t.Fatalf("good:\n%s", out)
		}
		if out := p.opensslOCSP(t, p.base, unknownPath); !strings.Contains(out, unknownPath+": unknown") {
			t.Fatalf("unknown:\n%s", out)
		}
		// openssl's requests took the lean path: each would otherwise be a
		// hand-off. The metrics request itself may add one when its
		// client opens a new connection.
		json.Unmarshal(s.get("/test/metrics"), &after)
		if after["requests"] < before["requests"]+2 || after["http_handoffs"] > before["http_handoffs"]+1 {
			t.Fatalf("OCSP requests %d→%d, hand-offs %d→%d", before["requests"], after["requests"], before["http_handoffs"], after["http_handoffs"])
		}
	})
	var numberBefore string
	t.Run("revoke", func(t *testing.T) {
		// The full CRL from before the revocation: with the delta, openssl
		// must see the revocation (-use_deltas).
		basePEM, _ := p.fetchCRL(t, s, "/crl/"+p.keyID()+".crl", "base")
		s.post("/test/revoke", url.Values{"serial": {bad.SerialNumber.Text(16)}, "reason": {"1"}})
		out := p.opensslOCSP(t, p.base, badPath)
		if !strings.Contains(out, badPath+": revoked") || !strings.Contains(out, "Reason: keyCompromise") {
			t.Fatalf("revoked:\n%s", out)
		}
		time.Sleep(300 * time.Millisecond) // full CRL coalescing interval
		crlPEM, text := p.fetchCRL(t, s, "/crl/"+p.keyID()+".crl", "full")
		if !strings.Contains(text, "Serial Number: "+serialHex(bad)) || !strings.Contains(text, "X509v3 CRL Number") {
			t.Fatalf("CRL lacks the revoked serial:\n%s", text)
		}
		if out, ok := p.verify(t, crlPEM, badPath); ok || !strings.Contains(out, "certificate revoked") {
			t.Fatalf("openssl verify accepted a revoked certificate:\n%s", out)
		}
		if out, ok := p.verify(t, crlPEM, goodPath); !ok {
			t.Fatalf("openssl verify refused a good certificate:\n%s", out)
		}
		deltaPEM, dtext := p.fetchCRL(t, s, "/crl/"+p.keyID()+"-delta.crl", "delta")
		if !strings.Contains(dtext, "Delta CRL Indicator") || !strings.Contains(dtext, serialHex(bad)) {
			t.Fatalf("delta CRL:\n%s", dtext)
		}
		both := filepath.Join(p.dir, "base+delta.pem")
		bb, _ := os.ReadFile(basePEM)
		db, _ := os.ReadFile(deltaPEM)
		os.WriteFile(both, append(bb, db...), 0o600)
		if out, ok := p.verify(t, basePEM, badPath); !ok {
			t.Fatalf("old full CRL alone should not know the revocation:\n%s", out)
		}
		out, err := run(t, "openssl", "verify", "-crl_check", "-use_deltas", "-CAfile", filepath.Join(p.dir, "root.pem"),
			"-untrusted", filepath.Join(p.dir, "inter.pem"), "-CRLfile", both, badPath)
		if err == nil || !strings.Contains(out, "certificate revoked") {
			t.Fatalf("openssl -use_deltas with base + delta accepted a revoked certificate:\n%s", out)
		}
		if _, ctext := p.fetchCRL(t, s, "/crl/current.crl", "current"); !strings.Contains(ctext, serialHex(bad)) {
			t.Fatalf("current CRL:\n%s", ctext)
		}
		numberBefore = string(s.get("/test/ready"))
	})
	t.Run("node ban", func(t *testing.T) {
		if n := s.post("/test/ban", url.Values{"node": {node}, "reason": {"9"}}); n != "2" {
			t.Fatalf("revoked %s certificates, want 2", n)
		}
		for _, path := range []string{n1Path, n2Path} {
			if out := p.opensslOCSP(t, p.base, path); !strings.Contains(out, path+": revoked") {
				t.Fatalf("banned node's SVID:\n%s", out)
			}
		}
		if out := p.opensslOCSP(t, p.base, goodPath); !strings.Contains(out, goodPath+": good") {
			t.Fatalf("unrelated SVID:\n%s", out)
		}
	})
	t.Run("kill -9 and restart", func(t *testing.T) {
		s.kill9()
		s.start()
		for _, path := range []string{badPath, n1Path, n2Path} {
			if out := p.opensslOCSP(t, p.base, path); !strings.Contains(out, path+": revoked") {
				t.Fatalf("after restart:\n%s", out)
			}
		}
		if out := p.opensslOCSP(t, p.base, goodPath); !strings.Contains(out, goodPath+": good") {
			t.Fatalf("after restart:\n%s", out)
		}
		after := string(s.get("/test/ready"))
		a, _ := new(big.Int).SetString(after, 10)
		b, _ := new(big.Int).SetString(numberBefore, 10)
		if a == nil || b == nil || a.Cmp(b) <= 0 {
			t.Fatalf("CRL number %s after restart, %s before", after, numberBefore)
		}
		crlPEM, text := p.fetchCRL(t, s, "/crl/"+p.keyID()+".crl", "restarted")
		for _, c := range []*x509.Certificate{bad, n1, n2} {
			if !strings.Contains(text, serialHex(c)) {
				t.Fatalf("restarted CRL lacks %s", serialHex(c))
			}
		}
		if out, ok := p.verify(t, crlPEM, n1Path); ok {
			t.Fatalf("verify after restart:\n%s", out)
		}
	})
	t.Run("hsm outage", func(t *testing.T) {
		// Short-lived answers so a refresh falls due within the test.
		s.kill9()
		sc.OCSPValidity = 4 * time.Second
		b, _ := json.Marshal(sc)
		os.WriteFile(cfgPath, b, 0o600)
		s.start()
		first := p.opensslOCSP(t, p.base, goodPath)
		if !strings.Contains(first, goodPath+": good") {
			t.Fatalf("before outage:\n%s", first)
		}
		// Pull the token out from under the running server.
		outage := time.Now()
		tokens := filepath.Join(hsm.Dir, "tokens")
		if err := os.Rename(tokens, tokens+".gone"); err != nil {
			t.Fatal(err)
		}
		defer os.Rename(tokens+".gone", tokens)
		deadline := time.Now().Add(10 * time.Second)
		for {
			var m map[string]uint64
			json.Unmarshal(s.get("/test/metrics"), &m)
			if m["refresh_failures"] > 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("refresh did not fail with the HSM gone: %v", m)
			}
			time.Sleep(100 * time.Millisecond)
		}
		// Still served: an answer pre-signed before the outage (thisUpdate
		// is backdated a minute from its signing). first cannot be
		// compared: openssl sent a nonce, so it was signed on demand.
		during := p.opensslOCSPNoNonceCheck(t, p.base, goodPath)
		if !strings.Contains(during, "no nonce in response") {
			t.Fatalf("a nonce was signed with the HSM gone:\n%s", during)
		}
		i := strings.Index(during, "This Update:")
		if i < 0 || !strings.Contains(during, goodPath+": good") {
			t.Fatalf("pre-signed answer not served during the outage:\n%s", during)
		}
		line := strings.TrimSpace(strings.TrimPrefix(strings.SplitN(during[i:], "\n", 2)[0], "This Update:"))
		tu, err := time.Parse("Jan _2 15:04:05 2006 MST", line)
		if err != nil {
			t.Fatalf("This Update %q: %v", line, err)
		}
		if signed := tu.Add(time.Minute); signed.After(outage) {
			t.Fatalf("answer signed at %v, after the HSM went at %v:\n%s", signed, outage, during)
		}
		// Past nextUpdate: tryLater, never a stale answer.
		time.Sleep(5 * time.Second)
		out, _ := run(t, "openssl", "ocsp", "-issuer", filepath.Join(p.dir, "inter.pem"), "-cert", goodPath,
			"-url", p.base+"/ocsp", "-CAfile", filepath.Join(p.dir, "root.pem"))
		if !strings.Contains(out, "trylater") {
			t.Fatalf("after nextUpdate with the HSM gone:\n%s", out)
		}
	})
	t.Run("audited", func(t *testing.T) {
		b, _ := os.ReadFile(sc.AuditPath)
		if !bytes.Contains(b, []byte(`"kind":"cert.revoked"`)) || !bytes.Contains(b, []byte(`"kind":"node.revoked"`)) {
			t.Fatalf("audit log:\n%s", b)
		}
	})
	// Each start issued a responder certificate: audited, and recorded in
	// the CA's store (durably: the server is killed, not stopped).
	t.Run("responder certificates recorded", func(t *testing.T) {
		log, err := os.ReadFile(sc.AuditPath)
		if err != nil {
			t.Fatal(err)
		}
		var serials []string
		for _, line := range bytes.Split(log, []byte("\n")) {
			var rec struct {
				Kind string `json:"kind"`
				Data struct {
					Serial string `json:"serial"`
					Issuer string `json:"issuer"`
				} `json:"data"`
			}
			if json.Unmarshal(line, &rec) == nil && rec.Kind == "ocsp-signer.issued" {
				if rec.Data.Issuer != p.keyID() {
					t.Fatalf("responder certificate %s audited for issuer %s, want %s", rec.Data.Serial, rec.Data.Issuer, p.keyID())
				}
				serials = append(serials, rec.Data.Serial)
			}
		}
		if len(serials) < 3 {
			t.Fatalf("%d ocsp-signer.issued records after 3 starts", len(serials))
		}
		s.kill9()
		st, err := store.Open(storePath, store.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		for _, hexSerial := range serials {
			n, _ := new(big.Int).SetString(hexSerial, 16)
			r, err := st.Cert(n)
			if err != nil || r.Kind != store.KindOCSPSigner || r.IssuerKeyID != p.keyID() {
				t.Fatalf("responder certificate %s in the store: %+v %v", hexSerial, r, err)
			}
		}
	})
}
