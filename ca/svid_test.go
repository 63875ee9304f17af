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
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/palisade-id/palisade/ca"
	"github.com/palisade-id/palisade/ca/store"
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
		{"trust-domain-id", ca.JWTRequest{ID: spiffeid.RequireFromString("spiffe://" + td), Audience: []string{"a"}, Actor: "test"}, ca.ErrInvalidSPIFFEID},
	}
	seq, _ := f.log.Head()
	for _, tt := range refusals {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := f.ca.SignJWTSVID(context.Background(), tt.req); !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
		})
	}
	if s, _ := f.log.Head(); s != seq {
		t.Fatalf("refused requests were audited: %d → %d", seq, s)
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
	seqBefore := seq()
	f.clock.Set(first.Cert.NotAfter.Add(time.Minute))
	ev3, err := f.ca.Rotate(ctx)
	if err != nil || len(ev3.Expired) != 1 || ev3.Expired[0] != first.KeyID || !ev3.Changed() {
		t.Fatalf("after expiry: %+v %v", ev3, err)
	}
	// The running CA drops the expired generation at once, not on reload.
	for name, c := range map[string]*ca.CA{"running": f.ca, "reloaded": f.load(t)} {
		for _, is := range c.Issuers() {
			if is.KeyID == first.KeyID {
				t.Fatalf("%s CA: expired generation still an issuer", name)
			}
		}
		if n := len(c.Issuers()); n != 1 {
			t.Fatalf("%s CA: %d issuers, want 1", name, n)
		}
		b := c.Bundle()
		if _, ok := b.FindJWTAuthority(first.KeyID); ok || len(b.JWTAuthorities()) != 1 {
			t.Fatalf("%s CA: bundle still has the expired JWT key (%d keys)", name, len(b.JWTAuthorities()))
		}
		if s, _ := b.SequenceNumber(); s <= seqBefore {
			t.Fatalf("%s CA: bundle sequence %d after dropping a key, was %d", name, s, seqBefore)
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
	jwtReq := ca.JWTRequest{ID: spiffeid.RequireFromString("spiffe://example.org/x"), Audience: []string{"a"}, Actor: "test"}
	if _, err := f.ca.SignJWTSVID(context.Background(), jwtReq); !errors.Is(err, ca.ErrNoActiveIssuer) {
		t.Fatalf("JWT-SVID with an expired intermediate: %v", err)
	}
	ev, err := f.ca.Rotate(context.Background())
	if err != nil || ev.Prepared == "" || ev.Activated != ev.Prepared {
		t.Fatalf("rotation after downtime: %+v %v", ev, err)
	}
	if _, err := f.issue(t, "spiffe://example.org/x", 0); err != nil {
		t.Fatalf("issue after recovery: %v", err)
	}
	if _, err := f.ca.SignJWTSVID(context.Background(), jwtReq); err != nil {
		t.Fatalf("JWT-SVID after recovery: %v", err)
	}
}

// assertIssues checks c has a live active generation, chained to the root,
// that signs X509- and JWT-SVIDs, and that no expired one is listed.
func (f *fixture) assertIssues(t *testing.T, c *ca.CA) ca.Issuer {
	t.Helper()
	now := f.clock.Now()
	is, err := c.ActiveIssuer()
	if err != nil {
		t.Fatalf("no active issuer: %v", err)
	}
	if !now.Before(is.Cert.NotAfter) || now.Before(is.Cert.NotBefore) {
		t.Fatalf("active issuer %s not valid now (%s – %s, now %s)", is.KeyID, is.Cert.NotBefore, is.Cert.NotAfter, now)
	}
	if err := is.Cert.CheckSignatureFrom(f.root); err != nil {
		t.Fatalf("active issuer not signed by the root: %v", err)
	}
	for _, i := range c.Issuers() {
		if !now.Before(i.Cert.NotAfter) {
			t.Fatalf("expired generation %s listed", i.KeyID)
		}
	}
	f.ca = c
	svid, err := f.issue(t, "spiffe://example.org/after-downtime", 0)
	if err != nil {
		t.Fatalf("issue: %v", err)
	}
	if _, _, err := x509svid.Verify(svid.Certificates, f.parsedBundle(t), x509svid.WithTime(now)); err != nil {
		t.Fatalf("issued SVID does not verify: %v", err)
	}
	if _, err := c.SignJWTSVID(context.Background(), ca.JWTRequest{ID: spiffeid.RequireFromString("spiffe://example.org/j"), Audience: []string{"a"}, Actor: "test"}); err != nil {
		t.Fatalf("JWT-SVID: %v", err)
	}
	return is
}

// auditKinds returns the kinds of the audit records, in order.
func (f *fixture) auditKinds(t *testing.T) []string {
	t.Helper()
	f.verifyAudit(t)
	raw, err := os.ReadFile(f.auditPath)
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for _, line := range strings.Split(string(raw), "\n") {
		var r struct {
			Kind string `json:"kind"`
		}
		if json.Unmarshal([]byte(line), &r) == nil && r.Kind != "" {
			kinds = append(kinds, r.Kind)
		}
	}
	return kinds
}

func TestLoadAfterDowntime(t *testing.T) {
	cfg := func(c *ca.Config) { c.IntermediateTTL = 12 * time.Hour }
	t.Run("active expired", func(t *testing.T) {
		f := newFixture(t, cfg)
		first, _ := f.ca.ActiveIssuer()
		f.clock.Set(first.Cert.NotAfter.Add(time.Hour))
		c, err := ca.Load(f.cfg, ca.Options{Keys: f.keys, Store: f.st, Audit: sink{f.log}, Now: f.clock.Now})
		if err != nil {
			t.Fatalf("Load after downtime: %v", err)
		}
		is := f.assertIssues(t, c)
		if is.KeyID == first.KeyID {
			t.Fatal("expired generation still active")
		}
		kinds := f.auditKinds(t)
		if !slices.Contains(kinds, "intermediate.prepared") || !slices.Contains(kinds, "intermediate.activated") {
			t.Fatalf("recovery not audited: %v", kinds)
		}
		recs, _ := f.st.Intermediates()
		for _, r := range recs {
			if r.KeyID == first.KeyID && r.Slot != store.SlotRetired {
				t.Fatalf("expired generation left in slot %s", r.Slot)
			}
		}
	})
	t.Run("next still live", func(t *testing.T) {
		f := newFixture(t, cfg)
		first, ev := f.prepareNext(t)
		f.clock.Set(first.Cert.NotAfter.Add(time.Hour))
		is := f.assertIssues(t, f.load(t))
		if is.KeyID != ev.Prepared {
			t.Fatalf("active %s, want the live next generation %s", is.KeyID, ev.Prepared)
		}
		if n := len(f.ca.Issuers()); n != 1 {
			t.Fatalf("%d issuers, want 1", n)
		}
	})
	t.Run("active and next expired", func(t *testing.T) {
		f := newFixture(t, cfg)
		first, ev := f.prepareNext(t)
		f.clock.Set(first.Cert.NotAfter.Add(24 * time.Hour))
		is := f.assertIssues(t, f.load(t))
		if is.KeyID == first.KeyID || is.KeyID == ev.Prepared {
			t.Fatal("an expired generation is active")
		}
		if kinds := f.auditKinds(t); !slices.Contains(kinds, "intermediate.expired") {
			t.Fatalf("retiring the expired next generation not audited: %v", kinds)
		}
	})
	t.Run("root expired", func(t *testing.T) {
		f := newFixture(t, func(c *ca.Config) {
			c.RootTTL = 4 * time.Hour
			c.IntermediateTTL = time.Hour
			c.X509SVIDTTL = 10 * time.Minute
		})
		f.clock.Set(f.root.NotAfter.Add(time.Hour))
		seq, _ := f.log.Head()
		_, err := ca.Load(f.cfg, ca.Options{Keys: f.keys, Store: f.st, Audit: sink{f.log}, Now: f.clock.Now})
		if !errors.Is(err, ca.ErrRootExpired) || !strings.Contains(err.Error(), f.root.Subject.CommonName) {
			t.Fatalf("Load with an expired root: %v, want ErrRootExpired naming %q", err, f.root.Subject.CommonName)
		}
		if s, _ := f.log.Head(); s != seq {
			t.Fatalf("failed recovery audited %d records", s-seq)
		}
	})
}

func TestRotateBothExpired(t *testing.T) {
	f := newFixture(t, func(c *ca.Config) { c.IntermediateTTL = 12 * time.Hour })
	ctx := context.Background()
	first, prep := f.prepareNext(t)
	// Both generations expire while the running CA is suspended.
	f.clock.Set(first.Cert.NotAfter.Add(24 * time.Hour))
	ev, err := f.ca.Rotate(ctx)
	if err != nil {
		t.Fatalf("rotate: %v", err)
	}
	if ev.Activated == "" || ev.Activated == prep.Prepared || ev.Activated != ev.Prepared {
		t.Fatalf("rotate activated %q (expired next %q): %+v", ev.Activated, prep.Prepared, ev)
	}
	if !slices.Contains(ev.Expired, first.KeyID) || !slices.Contains(ev.Expired, prep.Prepared) {
		t.Fatalf("Expired = %v, want both generations", ev.Expired)
	}
	if is := f.assertIssues(t, f.ca); is.KeyID != ev.Activated {
		t.Fatalf("active %s, want %s", is.KeyID, ev.Activated)
	}
	f.assertIssues(t, f.load(t))
	if kinds := f.auditKinds(t); !slices.Contains(kinds, "intermediate.expired") {
		t.Fatalf("retiring the expired next generation not audited: %v", kinds)
	}
	recs, _ := f.st.Intermediates()
	for _, r := range recs {
		if r.KeyID == prep.Prepared && (r.Slot != store.SlotRetired || !r.ActivatedAt.IsZero()) {
			t.Fatalf("expired next generation: slot %s, activated %s", r.Slot, r.ActivatedAt)
		}
	}
}

func TestBundleSequencePersists(t *testing.T) {
	f := newFixture(t, func(c *ca.Config) { c.IntermediateTTL = 12 * time.Hour; c.X509SVIDTTL = time.Hour })
	ctx := context.Background()
	first, _ := f.ca.ActiveIssuer()
	life := first.Cert.NotAfter.Sub(first.Cert.NotBefore)
	at := func(frac float64) time.Time { return first.Cert.NotBefore.Add(time.Duration(float64(life) * frac)) }
	type view struct {
		seq  uint64
		keys int
	}
	look := func(c *ca.CA) view {
		b := c.Bundle()
		s, ok := b.SequenceNumber()
		if !ok || s == 0 {
			t.Fatal("bundle has no sequence number")
		}
		return view{s, len(b.JWTAuthorities())}
	}
	// A restart with unchanged contents keeps the number.
	v0 := look(f.ca)
	if got := look(f.load(t)); got != v0 {
		t.Fatalf("after restart %+v, before %+v", got, v0)
	}
	f.clock.Set(at(0.55))
	if _, err := f.ca.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	v1 := look(f.ca)
	if v1.keys != 2 || v1.seq <= v0.seq {
		t.Fatalf("after prepare %+v, before %+v", v1, v0)
	}
	if got := look(f.load(t)); got != v1 {
		t.Fatalf("after prepare and restart %+v, want %+v", got, v1)
	}
	// Activation publishes no new key: same contents, same number.
	f.clock.Set(at(0.84))
	if ev, err := f.ca.Rotate(ctx); err != nil || ev.Activated == "" {
		t.Fatalf("activate: %+v %v", ev, err)
	}
	if got := look(f.ca); got != v1 {
		t.Fatalf("after activation %+v, want %+v", got, v1)
	}
	// Expiry drops a key, also for a CA loaded after the expiry.
	f.clock.Set(first.Cert.NotAfter.Add(time.Minute))
	v2 := look(f.load(t))
	if v2.keys != 1 || v2.seq <= v1.seq {
		t.Fatalf("after expiry %+v, before %+v", v2, v1)
	}
	if _, err := f.ca.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	if got := look(f.ca); got != v2 {
		t.Fatalf("running CA after expiry %+v, want %+v", got, v2)
	}
	if got := look(f.load(t)); got != v2 {
		t.Fatalf("after expiry and restart %+v, want %+v", got, v2)
	}
}

func hexKID(c *x509.Certificate) string { return hex.EncodeToString(c.SubjectKeyId) }
