package ca_test

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/palisade-id/palisade/ca"
	"github.com/palisade-id/palisade/test/testenv"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

func (f *fixture) parsedBundle(t testing.TB) *spiffebundle.Bundle {
	t.Helper()
	js, err := f.ca.BundleJSON()
	if err != nil {
		t.Fatal(err)
	}
	b, err := spiffebundle.Parse(spiffeid.RequireTrustDomainFromString(td), js)
	if err != nil {
		t.Fatalf("bundle does not parse as a SPIFFE bundle: %v\n%s", err, js)
	}
	return b
}

func TestX509SVIDVerifiesWithGoSPIFFEAndOpenSSL(t *testing.T) {
	f := newFixture(t, nil)
	svid, err := f.issue(t, "spiffe://example.org/web", 0)
	if err != nil {
		t.Fatal(err)
	}
	b := f.parsedBundle(t)
	id, _, err := x509svid.Verify(svid.Certificates, b)
	if err != nil {
		t.Fatalf("go-spiffe x509svid.Verify: %v", err)
	}
	if id.String() != "spiffe://example.org/web" {
		t.Fatalf("verified ID %s", id)
	}

	testenv.Require(t, "openssl")
	dir := t.TempDir()
	bundle := filepath.Join(dir, "bundle.pem")
	chain := filepath.Join(dir, "svid.pem")
	os.WriteFile(bundle, f.ca.BundlePEM(), 0o600)
	os.WriteFile(chain, svid.ChainPEM(), 0o600)
	out, err := exec.Command("openssl", "verify", "-CAfile", bundle, "-untrusted", chain, chain).CombinedOutput()
	if err != nil || !strings.Contains(string(out), ": OK") {
		t.Fatalf("openssl verify: %v\n%s", err, out)
	}
	// A certificate from another CA's chain must not verify against ours.
	other := newFixture(t, nil)
	bundle2 := filepath.Join(dir, "other.pem")
	os.WriteFile(bundle2, other.ca.BundlePEM(), 0o600)
	if out, err := exec.Command("openssl", "verify", "-CAfile", bundle2, "-untrusted", chain, chain).CombinedOutput(); err == nil {
		t.Fatalf("openssl verified against a foreign root:\n%s", out)
	}
}

func TestJWTSVID(t *testing.T) {
	f := newFixture(t, nil)
	id := spiffeid.RequireFromString("spiffe://example.org/api")
	tok, err := f.ca.SignJWTSVID(context.Background(), ca.JWTRequest{ID: id, Audience: []string{"db"}, Actor: "test"})
	if err != nil {
		t.Fatal(err)
	}
	hdr, _ := base64.RawURLEncoding.DecodeString(strings.Split(tok.Token, ".")[0])
	var h map[string]string
	if err := json.Unmarshal(hdr, &h); err != nil || h["alg"] != "ES256" || h["kid"] == "" {
		t.Fatalf("header %s", hdr)
	}
	if got := tok.ExpiresAt.Sub(tok.IssuedAt); got != 5*time.Minute {
		t.Fatalf("default TTL %s, want 5m", got)
	}
	b := f.parsedBundle(t)
	jb := jwtbundle.FromJWTAuthorities(b.TrustDomain(), b.JWTAuthorities())
	svid, err := jwtsvid.ParseAndValidate(tok.Token, jb, []string{"db"})
	if err != nil {
		t.Fatalf("go-spiffe jwtsvid.ParseAndValidate: %v", err)
	}
	if svid.ID != id {
		t.Fatalf("subject %s", svid.ID)
	}
	if _, err := jwtsvid.ParseAndValidate(tok.Token, jb, []string{"other"}); err == nil {
		t.Fatal("token accepted for the wrong audience")
	}
	// Flip one signature byte: must fail.
	parts := strings.Split(tok.Token, ".")
	sig, _ := base64.RawURLEncoding.DecodeString(parts[2])
	sig[3] ^= 1
	forged := parts[0] + "." + parts[1] + "." + base64.RawURLEncoding.EncodeToString(sig)
	if _, err := jwtsvid.ParseAndValidate(forged, jb, []string{"db"}); err == nil {
		t.Fatal("forged token accepted")
	}
	refusals := []struct {
		name string
		req  ca.JWTRequest
		want error
	}{
		{"no-audience", ca.JWTRequest{ID: id}, ca.ErrBadAudience},
		{"empty-audience", ca.JWTRequest{ID: id, Audience: []string{""}}, ca.ErrBadAudience},
		{"foreign-domain", ca.JWTRequest{ID: spiffeid.RequireFromString("spiffe://evil.org/x"), Audience: []string{"a"}}, ca.ErrForeignTrustDomain},
		{"ttl-over-cap", ca.JWTRequest{ID: id, Audience: []string{"a"}, TTL: 2 * time.Hour}, ca.ErrTTLTooLong},
		{"zero-id", ca.JWTRequest{Audience: []string{"a"}}, ca.ErrInvalidSPIFFEID},
	}
	for _, tt := range refusals {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := f.ca.SignJWTSVID(context.Background(), tt.req); !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestBundleFormats(t *testing.T) {
	f := newFixture(t, nil)
	b := f.parsedBundle(t)
	auth := b.X509Authorities()
	if len(auth) != 1 || !auth[0].Equal(f.root) {
		t.Fatalf("x509 authorities = %d", len(auth))
	}
	if len(b.JWTAuthorities()) != 1 {
		t.Fatalf("jwt authorities = %d, want 1", len(b.JWTAuthorities()))
	}
	if h, ok := b.RefreshHint(); !ok || h != ca.BundleRefreshHint {
		t.Fatalf("refresh hint %s %v", h, ok)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(f.ca.BundlePEM()) {
		t.Fatal("PEM bundle does not parse")
	}
}

func TestRotation(t *testing.T) {
	f := newFixture(t, func(c *ca.Config) { c.IntermediateTTL = 12 * time.Hour; c.X509SVIDTTL = time.Hour })
	ctx := context.Background()
	first, _ := f.ca.ActiveIssuer()
	life := first.Cert.NotAfter.Sub(first.Cert.NotBefore)
	at := func(frac float64) time.Time { return first.Cert.NotBefore.Add(time.Duration(float64(life) * frac)) }
	seq := func() uint64 { s, _ := f.ca.Bundle().SequenceNumber(); return s }

	f.clock.Set(at(0.4))
	if ev, err := f.ca.Rotate(ctx); err != nil || ev.Prepared != "" || ev.Activated != "" {
		t.Fatalf("before half-life: %+v %v", ev, err)
	}
	seq0 := seq()
	f.clock.Set(at(0.55))
	ev, err := f.ca.Rotate(ctx)
	if err != nil || ev.Prepared == "" || ev.Activated != "" {
		t.Fatalf("after half-life: %+v %v", ev, err)
	}
	// Published before the switch: the next JWT key is in the bundle while
	// the old generation still signs.
	if n := len(f.parsedBundle(t).JWTAuthorities()); n != 2 {
		t.Fatalf("bundle has %d JWT keys after prepare, want 2", n)
	}
	if seq() <= seq0 {
		t.Fatal("bundle sequence did not advance")
	}
	svid, err := f.issue(t, "spiffe://example.org/a", 0)
	if err != nil {
		t.Fatal(err)
	}
	if hexKID(svid.Certificates[1]) != first.KeyID {
		t.Fatal("prepared generation signed before activation")
	}
	f.clock.Set(at(0.8))
	if ev, err := f.ca.Rotate(ctx); err != nil || ev.Activated != "" {
		t.Fatalf("before 5/6: %+v %v", ev, err)
	}
	f.clock.Set(at(0.84))
	ev2, err := f.ca.Rotate(ctx)
	if err != nil || ev2.Activated != ev.Prepared {
		t.Fatalf("at 5/6: %+v %v", ev2, err)
	}
	svid, err = f.issue(t, "spiffe://example.org/b", 0)
	if err != nil {
		t.Fatal(err)
	}
	if hexKID(svid.Certificates[1]) != ev.Prepared {
		t.Fatal("new SVIDs not signed by the activated generation")
	}
	// The old generation stays published until it expires.
	if n := len(f.ca.Issuers()); n != 2 {
		t.Fatalf("%d live issuers after activation, want 2", n)
	}
	// A reloaded CA picks up the same active generation from the store.
	if is, _ := f.load(t).ActiveIssuer(); is.KeyID != ev.Prepared {
		t.Fatalf("reloaded CA active %s, want %s", is.KeyID, ev.Prepared)
	}
	f.clock.Set(first.Cert.NotAfter.Add(time.Minute))
	if _, err := f.ca.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	f2 := f.load(t)
	for _, is := range f2.Issuers() {
		if is.KeyID == first.KeyID {
			t.Fatal("expired generation still live")
		}
	}
	f.verifyAudit(t)
}

func TestRotationAfterDowntime(t *testing.T) {
	f := newFixture(t, func(c *ca.Config) { c.IntermediateTTL = 12 * time.Hour })
	first, _ := f.ca.ActiveIssuer()
	// The appliance was off past the whole life of its intermediate.
	f.clock.Set(first.Cert.NotAfter.Add(time.Hour))
	if _, err := f.issue(t, "spiffe://example.org/x", 0); !errors.Is(err, ca.ErrNoActiveIssuer) {
		t.Fatalf("issued with an expired intermediate: %v", err)
	}
	ev, err := f.ca.Rotate(context.Background())
	if err != nil || ev.Prepared == "" || ev.Activated != ev.Prepared {
		t.Fatalf("rotation after downtime: %+v %v", ev, err)
	}
	if _, err := f.issue(t, "spiffe://example.org/x", 0); err != nil {
		t.Fatalf("issue after recovery: %v", err)
	}
}

func hexKID(c *x509.Certificate) string { return hex.EncodeToString(c.SubjectKeyId) }
