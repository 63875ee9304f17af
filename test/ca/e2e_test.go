//go:build integration

package ca

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"io"
	"io/fs"
	"math/big"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/palisade-id/palisade/ca/admin"
	"github.com/palisade-id/palisade/ca/nodeapi"
	"github.com/palisade-id/palisade/ca/nodeapi/nodev1"
	"github.com/palisade-id/palisade/ca/store"
	"github.com/palisade-id/palisade/test/harness"
	"github.com/palisade-id/palisade/test/testca"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func writeCSR(t *testing.T, dir, name string, uris ...string) (csrPath string, key *ecdsa.PrivateKey) {
	t.Helper()
	der, key := testca.CSR(t, uris...)
	csrPath = filepath.Join(dir, name)
	if err := os.WriteFile(csrPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return csrPath, key
}

func stats(t *testing.T, a *harness.Appliance) admin.HealthResponse {
	t.Helper()
	var h admin.HealthResponse
	out := a.MustCLI("healthcheck", "-verbose")
	if err := json.Unmarshal([]byte(out[:strings.LastIndex(out, "}")+1]), &h); err != nil {
		t.Fatalf("healthcheck output: %v", err)
	}
	return h
}

func TestApplianceEndToEnd(t *testing.T) {
	a := harness.New(t, harness.Options{})
	td := a.TrustDomain
	a.Ceremony()

	t.Run("ceremony-rerun-refused", func(t *testing.T) {
		before, _ := os.ReadFile(filepath.Join(a.DataDir(), "audit.log"))
		r := a.CLI("ceremony", "init", "-config", a.ConfigPath)
		if r.Err == nil || !strings.Contains(r.Stderr, "already initialised") {
			t.Fatalf("second ceremony: err=%v stderr=%s", r.Err, r.Stderr)
		}
		after, _ := os.ReadFile(filepath.Join(a.DataDir(), "audit.log"))
		if string(before) != string(after) {
			t.Fatal("refused ceremony changed the audit log")
		}
	})

	a.Start()
	work := t.TempDir()
	nodeID := "spiffe://" + td + "/palisade/node/n1"
	webID := "spiffe://" + td + "/workload/web"
	a.MustCLI("entry", "create", "-spiffeID", webID, "-parentID", nodeID, "-selector", "unix:uid:1000")

	t.Run("x509-mint-from-csr-verifies-with-openssl-and-go-spiffe", func(t *testing.T) {
		csr, key := writeCSR(t, work, "web.csr", webID)
		out := filepath.Join(work, "web")
		os.MkdirAll(out, 0o700)
		a.MustCLI("x509", "mint", "-csr", csr, "-write", out)
		svid := filepath.Join(out, "svid.pem")
		bundle := filepath.Join(out, "bundle.pem")
		o, err := exec.Command("openssl", "verify", "-CAfile", bundle, "-untrusted", svid, svid).CombinedOutput()
		if err != nil || !strings.Contains(string(o), ": OK") {
			t.Fatalf("openssl verify: %v\n%s", err, o)
		}
		chain := harness.ReadCerts(t, svid)
		if !chain[0].PublicKey.(*ecdsa.PublicKey).Equal(&key.PublicKey) {
			t.Fatal("SVID does not certify the CSR's key")
		}
		b := spiffeBundle(t, a)
		id, _, err := x509svid.Verify(chain, b)
		if err != nil || id.String() != webID {
			t.Fatalf("go-spiffe verify: %s %v", id, err)
		}
	})

	t.Run("healthcheck-covers-every-dependency", func(t *testing.T) {
		h := stats(t, a)
		for _, name := range []string{"hsm", "store", "issuer", "crl", "audit"} {
			if h.Checks[name] != "ok" {
				t.Errorf("check %q = %q, want ok (checks: %v)", name, h.Checks[name], h.Checks)
			}
		}
		if h.Status != "ok" {
			t.Errorf("status %q", h.Status)
		}
	})

	t.Run("bad-input-refused-and-nothing-lost", func(t *testing.T) {
		before := stats(t, a)
		auditBefore, _ := os.ReadFile(filepath.Join(a.DataDir(), "audit.log"))
		two, _ := writeCSR(t, work, "two.csr", webID, "spiffe://"+td+"/other")
		none, _ := writeCSR(t, work, "none.csr")
		foreign, _ := writeCSR(t, work, "foreign.csr", "spiffe://evil.example/web")
		good, _ := writeCSR(t, work, "good.csr", webID)
		garbage := filepath.Join(work, "garbage.csr")
		os.WriteFile(garbage, []byte("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"), 0o600)
		huge := filepath.Join(work, "huge.csr")
		os.WriteFile(huge, make([]byte, 64<<10), 0o600)
		cases := []struct {
			name string
			args []string
			want string
		}{
			{"two-uri-sans", []string{"x509", "mint", "-csr", two}, "exactly one URI SAN"},
			{"zero-uri-sans", []string{"x509", "mint", "-csr", none}, "exactly one URI SAN"},
			{"foreign-trust-domain", []string{"x509", "mint", "-csr", foreign}, "outside this trust domain"},
			{"malformed", []string{"x509", "mint", "-csr", garbage}, "malformed CSR"},
			{"oversized", []string{"x509", "mint", "-csr", huge}, "too large"},
			{"ttl-over-cap", []string{"x509", "mint", "-csr", good, "-ttl", "48h"}, "exceeds the maximum"},
			{"id-mismatch", []string{"x509", "mint", "-csr", good, "-spiffeID", "spiffe://" + td + "/db"}, "differs from the authorised ID"},
			{"entry-foreign-domain", []string{"entry", "create", "-spiffeID", "spiffe://evil.example/x", "-parentID", nodeID}, "outside this trust domain"},
			{"entry-bad-selector", []string{"entry", "create", "-spiffeID", webID, "-parentID", nodeID, "-selector", "nocolon"}, "type:value"},
			{"jwt-no-audience", []string{"jwt", "mint", "-spiffeID", webID}, "required"},
		}
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				r := a.CLI(c.args...)
				if r.Err == nil {
					t.Fatalf("accepted: %s", r.Stdout)
				}
				if !strings.Contains(r.Stderr, c.want) {
					t.Fatalf("stderr %q does not name the problem (%q)", r.Stderr, c.want)
				}
			})
		}
		after := stats(t, a)
		if after.Stats.Certs != before.Stats.Certs || after.Stats.Entries != before.Stats.Entries {
			t.Fatalf("refused requests changed the store: %+v → %+v", before.Stats, after.Stats)
		}
		auditAfter, _ := os.ReadFile(filepath.Join(a.DataDir(), "audit.log"))
		if !strings.HasPrefix(string(auditAfter), string(auditBefore)) {
			t.Fatal("audit log rewritten")
		}
	})

	t.Run("jwt-svid-validates", func(t *testing.T) {
		tok := strings.TrimSpace(a.MustCLI("jwt", "mint", "-spiffeID", webID, "-audience", "db"))
		b := spiffeBundle(t, a)
		jb := jwtbundle.FromJWTAuthorities(b.TrustDomain(), b.JWTAuthorities())
		svid, err := jwtsvid.ParseAndValidate(tok, jb, []string{"db"})
		if err != nil || svid.ID.String() != webID {
			t.Fatalf("jwtsvid.ParseAndValidate: %v", err)
		}
	})

	t.Run("node-api-mtls", func(t *testing.T) {
		nodeDir := filepath.Join(work, "node")
		os.MkdirAll(nodeDir, 0o700)
		a.MustCLI("x509", "mint", "-spiffeID", nodeID, "-write", nodeDir)
		nodeCert, err := tls.LoadX509KeyPair(filepath.Join(nodeDir, "svid.pem"), filepath.Join(nodeDir, "key.pem"))
		if err != nil {
			t.Fatal(err)
		}
		roots := harness.ReadCerts(t, filepath.Join(nodeDir, "bundle.pem"))
		tdom := spiffeid.RequireTrustDomainFromString(td)
		call := func(cert *tls.Certificate, csrURI string) (*nodev1.SignX509SVIDResponse, error) {
			conn, err := nodeapi.Dial(a.NodeAddr, tdom, roots, func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
				if cert == nil {
					return &tls.Certificate{}, nil
				}
				return cert, nil
			})
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			u, _ := url.Parse(csrURI)
			der, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{u}}, key)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			return nodev1.NewNodeClient(conn).SignX509SVID(ctx, &nodev1.SignX509SVIDRequest{Csr: der})
		}
		resp, err := call(&nodeCert, webID)
		if err != nil {
			t.Fatalf("authorised node: %v", err)
		}
		chain := make([]*x509.Certificate, 0, len(resp.CertChain))
		for _, d := range resp.CertChain {
			c, err := x509.ParseCertificate(d)
			if err != nil {
				t.Fatal(err)
			}
			chain = append(chain, c)
		}
		if _, _, err := x509svid.Verify(chain, spiffeBundle(t, a)); err != nil {
			t.Fatalf("node-API SVID: %v", err)
		}
		refusals := []struct {
			name string
			cert *tls.Certificate
			uri  string
			code codes.Code
		}{
			{"unauthorised-id", &nodeCert, "spiffe://" + td + "/workload/db", codes.PermissionDenied},
			{"node-id-via-csr", &nodeCert, nodeID, codes.PermissionDenied},
			{"no-client-svid", nil, webID, codes.Unauthenticated},
		}
		for _, r := range refusals {
			t.Run(r.name, func(t *testing.T) {
				_, err := call(r.cert, r.uri)
				if status.Code(err) != r.code {
					t.Fatalf("got %v, want %s", err, r.code)
				}
			})
		}
		// A foreign client offering only AES-128 must be refused.
		out, err := exec.Command("openssl", "s_client", "-connect", a.NodeAddr, "-tls1_3",
			"-ciphersuites", "TLS_AES_128_GCM_SHA256", "-cert", filepath.Join(nodeDir, "svid.pem"),
			"-key", filepath.Join(nodeDir, "key.pem")).CombinedOutput()
		if err == nil && strings.Contains(string(out), "TLS_AES_128_GCM_SHA256") && !strings.Contains(string(out), "alert") {
			t.Fatalf("AES-128 accepted:\n%s", out)
		}
		out, _ = exec.Command("openssl", "s_client", "-connect", a.NodeAddr, "-tls1_3",
			"-ciphersuites", "TLS_AES_256_GCM_SHA384").CombinedOutput()
		if !strings.Contains(string(out), "TLS_AES_256_GCM_SHA384") {
			t.Fatalf("AES-256 not negotiated:\n%s", out)
		}
	})

	t.Run("revocation-ocsp-and-crl-with-openssl", func(t *testing.T) {
		csr, _ := writeCSR(t, work, "rev.csr", webID)
		out := filepath.Join(work, "rev")
		os.MkdirAll(out, 0o700)
		a.MustCLI("x509", "mint", "-csr", csr, "-write", out)
		svid := filepath.Join(out, "svid.pem")
		chain := harness.ReadCerts(t, svid)
		leaf, inter := chain[0], chain[1]
		interPEM := filepath.Join(out, "inter.pem")
		os.WriteFile(interPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: inter.Raw}), 0o600)
		if len(leaf.OCSPServer) != 1 || len(leaf.CRLDistributionPoints) != 1 {
			t.Fatalf("AIA %v CDP %v", leaf.OCSPServer, leaf.CRLDistributionPoints)
		}
		ocspStatus := func() string {
			o, err := exec.Command("openssl", "ocsp", "-issuer", interPEM, "-cert", svid, "-url", leaf.OCSPServer[0],
				"-CAfile", filepath.Join(out, "bundle.pem"), "-resp_text").CombinedOutput()
			if err != nil {
				t.Fatalf("openssl ocsp: %v\n%s", err, o)
			}
			return string(o)
		}
		waitFor := func(what string, ok func() bool) {
			deadline := time.Now().Add(15 * time.Second)
			for !ok() {
				if time.Now().After(deadline) {
					t.Fatalf("timed out waiting for %s; last OCSP answer:\n%s", what, ocspStatus())
				}
				time.Sleep(100 * time.Millisecond)
			}
		}
		waitFor("OCSP good", func() bool { return strings.Contains(ocspStatus(), svid+": good") })
		serial := leaf.SerialNumber.Text(16)
		a.MustCLI("revoke", "-serial", serial, "-reason", "keyCompromise")
		waitFor("OCSP revoked", func() bool {
			o := ocspStatus()
			return strings.Contains(o, svid+": revoked") && strings.Contains(o, "Reason: keyCompromise")
		})
		fetchCRL := func() []byte {
			resp, err := http.Get(leaf.CRLDistributionPoints[0])
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			return b
		}
		crlDER := filepath.Join(out, "crl.der")
		waitFor("full CRL listing the serial", func() bool {
			os.WriteFile(crlDER, fetchCRL(), 0o600)
			o, err := exec.Command("openssl", "crl", "-inform", "DER", "-in", crlDER, "-text", "-noout").CombinedOutput()
			return err == nil && strings.Contains(strings.ToLower(strings.ReplaceAll(string(o), ":", "")), strings.ToLower(serial))
		})
		crlPEM := filepath.Join(out, "crl.pem")
		if o, err := exec.Command("openssl", "crl", "-inform", "DER", "-in", crlDER, "-out", crlPEM).CombinedOutput(); err != nil {
			t.Fatalf("openssl crl: %v %s", err, o)
		}
		o, err := exec.Command("openssl", "verify", "-crl_check", "-CRLfile", crlPEM, "-CAfile", filepath.Join(out, "bundle.pem"),
			"-untrusted", svid, svid).CombinedOutput()
		if err == nil || !strings.Contains(string(o), "revoked") {
			t.Fatalf("openssl verify -crl_check accepted a revoked SVID: %v\n%s", err, o)
		}
	})

	t.Run("metrics-on-loopback", func(t *testing.T) {
		resp, err := http.Get("http://" + a.MetricsAddr + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if !strings.Contains(string(body), `palisade_certificates_issued_total{kind="x509-svid"}`) || !strings.Contains(string(body), "palisade_hsm_up 1") {
			t.Fatalf("metrics missing:\n%.2000s", body)
		}
	})

	t.Run("kill-9-loses-no-acknowledged-issuance", func(t *testing.T) {
		var mu sync.Mutex
		var acked []*big.Int
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		var wg sync.WaitGroup
		client := admin.NewClient(a.Socket)
		for w := 0; w < 4; w++ {
			wg.Add(1)
			go func(w int) {
				defer wg.Done()
				for i := 0; ctx.Err() == nil; i++ {
					key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
					u, _ := url.Parse(webID)
					der, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{u}}, key)
					var out admin.MintX509Response
					if err := client.Do(ctx, http.MethodPost, "/v1/x509/mint", admin.MintX509Request{CSRPEM: admin.DecodePEMCSR(der)}, &out); err != nil {
						return
					}
					s, ok := new(big.Int).SetString(out.Serial, 16)
					if !ok {
						t.Errorf("bad serial %q", out.Serial)
						return
					}
					mu.Lock()
					acked = append(acked, s)
					mu.Unlock()
				}
			}(w)
		}
		time.Sleep(1500 * time.Millisecond)
		a.Kill9()
		cancel()
		wg.Wait()
		mu.Lock()
		defer mu.Unlock()
		if len(acked) < 10 {
			t.Fatalf("only %d issuances acknowledged before the kill", len(acked))
		}
		st, err := store.Open(filepath.Join(a.DataDir(), "palisade.db"), store.Options{})
		if err != nil {
			t.Fatalf("store after kill -9: %v", err)
		}
		for _, s := range acked {
			if rec, err := st.Cert(s); err != nil || rec.SPIFFEID != webID {
				st.Close()
				t.Fatalf("acknowledged serial %x lost: %v", s, err)
			}
		}
		st.Close()
		r := a.CLI("audit", "verify", "-config", a.ConfigPath)
		if r.Err != nil {
			t.Fatalf("audit after kill -9: %v\n%s%s", r.Err, r.Stdout, r.Stderr)
		}
		auditLog, _ := os.ReadFile(filepath.Join(a.DataDir(), "audit.log"))
		for _, s := range acked {
			if !strings.Contains(string(auditLog), `"`+s.Text(16)+`"`) {
				t.Fatalf("acknowledged serial %x not in the audit log", s)
			}
		}
		t.Logf("%d acknowledged issuances survived kill -9", len(acked))
		a.Start()
	})

	t.Run("audit-verify-detects-tampering", func(t *testing.T) {
		a.Stop()
		logPath := filepath.Join(a.DataDir(), "audit.log")
		r := a.CLI("audit", "verify", "-config", a.ConfigPath)
		if r.Err != nil {
			t.Fatalf("clean log: %v %s %s", r.Err, r.Stdout, r.Stderr)
		}
		orig, _ := os.ReadFile(logPath)
		lines := strings.Split(strings.TrimRight(string(orig), "\n"), "\n")
		bundle := filepath.Join(a.DataDir(), "bundle.pem")
		tampers := []struct {
			name  string
			lines func([]string) []string
			want  string // the first problem: record and kind
		}{
			{"edited", func(l []string) []string {
				out := append([]string{}, l...)
				out[2] = strings.Replace(out[2], `"actor":"`, `"actor":"x`, 1)
				return out
			}, "line 3 seq 3: edited"},
			{"dropped", func(l []string) []string { return append(append([]string{}, l[:3]...), l[4:]...) }, "line 4 seq 4: dropped"},
			{"reordered", func(l []string) []string {
				out := append([]string{}, l...)
				out[3], out[4] = out[4], out[3]
				return out
			}, "line 4 seq 5: reordered"},
		}
		for _, tt := range tampers {
			t.Run(tt.name, func(t *testing.T) {
				p := filepath.Join(t.TempDir(), "audit.log")
				os.WriteFile(p, []byte(strings.Join(tt.lines(lines), "\n")+"\n"), 0o600)
				for _, args := range [][]string{
					{"audit", "verify", "-log", p, "-bundle", bundle},
					{"audit", "verify", "-log", p, "-config", a.ConfigPath},
				} {
					r := a.CLI(args...)
					if r.Err == nil {
						t.Fatalf("%v: tampered log verified:\n%s", args, r.Stdout)
					}
					if first := firstProblem(r.Stdout); !strings.Contains(first, tt.want) {
						t.Fatalf("%v: first problem %q does not name %q:\n%s%s", args, first, tt.want, r.Stdout, r.Stderr)
					}
				}
			})
		}
	})
}

func TestStartupFailuresAreClear(t *testing.T) {
	a := harness.New(t, harness.Options{})
	a.Ceremony()
	cases := []struct {
		name   string
		break_ func(t *testing.T)
		want   string
	}{
		{"wrong-pin", func(t *testing.T) {
			os.WriteFile(a.Token.PINFile, []byte("0000\n"), 0o600)
		}, "PIN"},
		{"missing-token", func(t *testing.T) {
			cfg, _ := os.ReadFile(a.ConfigPath)
			os.WriteFile(a.ConfigPath, []byte(strings.Replace(string(cfg), "token="+a.Token.Label, "token=no-such-token", 1)), 0o600)
		}, "token"},
		{"corrupt-store", func(t *testing.T) {
			p := filepath.Join(a.DataDir(), "palisade.db")
			b, _ := os.ReadFile(p)
			for i := 0; i < len(b) && i < 8192; i++ {
				b[i] ^= 0x5a
			}
			os.WriteFile(p, b, 0o600)
		}, "corrupt"},
		{"deleted-audit-log", func(t *testing.T) {
			p := filepath.Join(a.DataDir(), "audit.log")
			aside := filepath.Join(t.TempDir(), "audit.log")
			if err := os.Rename(p, aside); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.Rename(aside, p) })
		}, "missing"},
		{"unknown-config-key", func(t *testing.T) {
			f, _ := os.OpenFile(a.ConfigPath, os.O_APPEND|os.O_WRONLY, 0)
			f.WriteString("bogus_key: 1\n")
			f.Close()
		}, "bogus_key"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfgOrig, _ := os.ReadFile(a.ConfigPath)
			pinOrig, _ := os.ReadFile(a.Token.PINFile)
			dbPath := filepath.Join(a.DataDir(), "palisade.db")
			dbOrig, _ := os.ReadFile(dbPath)
			defer func() {
				os.WriteFile(a.ConfigPath, cfgOrig, 0o600)
				os.WriteFile(a.Token.PINFile, pinOrig, 0o600)
				os.WriteFile(dbPath, dbOrig, 0o600)
			}()
			c.break_(t)
			// What the refused start finds on disk is what it must leave:
			// no repair, truncation or record of its own.
			before := dataFiles(t, a.DataDir())
			err := a.StartErr()
			if err == nil {
				t.Fatal("server started")
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("failure does not name the problem (%q):\n%v", c.want, err)
			}
			after := dataFiles(t, a.DataDir())
			for name, b := range before {
				if !bytes.Equal(after[name], b) {
					t.Errorf("refused start changed %s", name)
				}
			}
			for name := range after {
				if _, ok := before[name]; !ok {
					t.Errorf("refused start created %s", name)
				}
			}
		})
	}
	// Restored: the appliance starts and its audit log is intact.
	a.Start()
	if r := a.CLI("audit", "verify", "-config", a.ConfigPath); r.Err != nil {
		a.Stop()
		t.Fatalf("audit after failed starts: %v %s", r.Err, r.Stdout)
	}
}

func spiffeBundle(t *testing.T, a *harness.Appliance) *spiffebundle.Bundle {
	t.Helper()
	out := a.MustCLI("bundle", "show", "-format", "spiffe")
	b, err := spiffebundle.Parse(spiffeid.RequireTrustDomainFromString(a.TrustDomain), []byte(out))
	if err != nil {
		t.Fatalf("bundle: %v\n%s", err, out)
	}
	return b
}

// dataFiles reads every regular file under dir, by path relative to it.
func dataFiles(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		out[rel] = b
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}
