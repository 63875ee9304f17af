//go:build integration

package attestor_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/palisade-id/palisade/attestor"
	"github.com/palisade-id/palisade/attestor/agent"
	"github.com/palisade-id/palisade/attestor/attestorpb"
	"github.com/palisade-id/palisade/attestor/device"
	"github.com/palisade-id/palisade/attestor/store"
	"github.com/palisade-id/palisade/attestor/verify"
	"github.com/palisade-id/palisade/attestor/verify/verifytest"
	"github.com/palisade-id/palisade/test/attestor/attestortest"
	"github.com/palisade-id/palisade/test/attestor/swtpm"
	"github.com/palisade-id/palisade/test/testca"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

const td = "palisade.test"

var pcrs = []uint32{0, 1, 2, 3, 4, 5, 6, 7}

type env struct {
	tpm    *device.TPM
	swtpm  *swtpm.Instance
	dbPath string
	db     *store.DB
	svc    *attestor.Service
	client attestorpb.AttestorClient
	ca     *testca.CA
	iss    *attestortest.Issuer
	aud    *attestortest.Auditor
	rev    *attestortest.Revoker
	clock  *attestortest.Clock
	ekHash string
}

// manifestBy selects how the node's EK enters the manifest.
type manifestBy int

const (
	byEKCA manifestBy = iota // the swtpm manufacturer root (EK certificate chain)
	byHash                   // the EK public key hash
	none
)

func newEnv(t *testing.T, in *swtpm.Instance, by manifestBy) *env {
	t.Helper()
	e := &env{swtpm: in, tpm: in.Open(t), dbPath: filepath.Join(t.TempDir(), "attestor.db"), ca: testca.New(t, td),
		aud: &attestortest.Auditor{}, rev: &attestortest.Revoker{}, clock: attestortest.NewClock()}
	e.iss = &attestortest.Issuer{CA: e.ca, TTL: 15 * time.Minute}
	ek, err := verify.ParseEKPublic(e.tpm.EKPublic())
	if err != nil {
		t.Fatal(err)
	}
	e.ekHash = ek.HashHex()
	e.start(t)
	ctx := context.Background()
	switch by {
	case byEKCA:
		entry, err := attestor.ParseManifestInput(in.CAPEM(t, "root"), "worker", "swtpm localca root")
		if err != nil {
			t.Fatal(err)
		}
		if entry.Kind != attestor.KindEKCA {
			t.Fatalf("root certificate became a %s entry", entry.Kind)
		}
		if _, err := e.svc.AddManifestEntry(ctx, "operator", entry); err != nil {
			t.Fatal(err)
		}
	case byHash:
		entry, err := attestor.ParseManifestInput([]byte(e.ekHash), "worker", "")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.svc.AddManifestEntry(ctx, "operator", entry); err != nil {
			t.Fatal(err)
		}
	}
	// Golden values: this TPM's PCRs as they are now.
	vals, err := e.tpm.ReadPCRs(pcrs)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.SetPCRPolicy(ctx, "operator", attestortest.PCRPolicy(1, vals)); err != nil {
		t.Fatal(err)
	}
	return e
}

// start opens the store and serves the service (again, after stop).
func (e *env) start(t *testing.T) {
	t.Helper()
	db, err := store.Open(e.dbPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	e.db = db
	e.svc, err = attestor.New(context.Background(), spiffeid.RequireTrustDomainFromString(td), attestor.Config{},
		attestor.Deps{Store: db, Issuer: e.iss, Auditor: e.aud, Revoker: e.rev, Now: e.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	e.client = attestortest.Serve(t, e.svc, e.ca)
}

// ekIssuer is the swtpm issuer certificate, the EK chain's intermediate.
func (e *env) ekIssuer(t *testing.T) []byte {
	t.Helper()
	_, issuer := e.swtpm.CACerts(t)
	return issuer.Raw
}

// attest runs the honest protocol, sending ekIssuer with the EK certificate.
func (e *env) attest(t *testing.T) (*agent.Result, error) {
	t.Helper()
	return agent.Attest(context.Background(), e.client, e.tpm, attestortest.CSR(t, td, e.tpm), e.ekIssuer(t))
}

func TestNodeAttestsAndGetsSVID(t *testing.T) {
	in := swtpm.New(t)
	for _, tc := range []struct {
		name string
		by   manifestBy
	}{{"EK certificate chains to manufacturer root", byEKCA}, {"EK hash allowlisted", byHash}} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, in, tc.by)
			res, err := e.attest(t)
			if err != nil {
				t.Fatalf("attestation refused: %v (audit: %s)", err, e.aud.Reason())
			}
			want := "spiffe://" + td + "/palisade/node/" + e.ekHash
			if res.ID.String() != want || len(res.Chain[0].URIs) != 1 || res.Chain[0].URIs[0].String() != want {
				t.Fatalf("SVID %s / %v, want %s", res.ID, res.Chain[0].URIs, want)
			}
			inter := x509.NewCertPool()
			inter.AddCert(res.Chain[1])
			if _, err := res.Chain[0].Verify(x509.VerifyOptions{Roots: e.ca.Pool(), Intermediates: inter,
				KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
				t.Fatalf("SVID does not verify: %v", err)
			}
			if r, ok := e.aud.Last(attestor.AuditAttestAccept); !ok || r.Actor != want {
				t.Fatalf("accept not audited for %s: %+v", want, r)
			}
			// Renewal needs a fresh quote: a second attestation works and counts.
			if _, err := e.attest(t); err != nil {
				t.Fatal(err)
			}
			rec, err := e.svc.Node(context.Background(), e.ekHash)
			if err != nil || rec.Attestations != 2 || rec.Class != "worker" {
				t.Fatalf("record %+v, %v", rec, err)
			}
		})
	}
}

func TestRefused(t *testing.T) {
	in := swtpm.New(t)
	tests := []struct {
		name     string
		by       manifestBy
		attack   func(t *testing.T, e *env) error
		reason   error
		wantSVID int
	}{
		{"EK not in manifest", none, func(t *testing.T, e *env) error {
			_, err := e.attest(t)
			return err
		}, attestor.ErrNotInManifest, 0},
		{"AK not bound to EK", byEKCA, func(t *testing.T, e *env) error {
			foreign := attestortest.SoftNode(t, 0) // an AK that is not in this TPM
			d := attestortest.NewDriver(t, e.client)
			m, err := d.Send(attestortest.Hello(e.tpm, foreign.AKPublic, attestortest.CSR(t, td, e.tpm), e.ekIssuer(t)))
			if err != nil {
				return err
			}
			if _, err := e.tpm.ActivateCredential(m.GetChallenge().GetIdObject(), m.GetChallenge().GetEncryptedSecret()); err == nil {
				t.Fatal("the TPM activated a credential for a foreign AK")
			}
			_, err = d.Send(attestortest.ActivationProof(make([]byte, 32)))
			return err
		}, attestor.ErrActivation, 0},
		{"replayed nonce", byEKCA, func(t *testing.T, e *env) error {
			d := attestortest.NewDriver(t, e.client)
			qr := d.UpToQuote(td, e.tpm, e.ekIssuer(t))
			quoted, sig, vals, err := e.tpm.Quote(qr.GetNonce(), qr.GetPcrs())
			if err != nil {
				t.Fatal(err)
			}
			if _, err := d.Send(attestortest.QuoteResponse(quoted, sig, vals)); err != nil {
				t.Fatalf("honest session: %v", err)
			}
			d2 := attestortest.NewDriver(t, e.client)
			d2.UpToQuote(td, e.tpm, e.ekIssuer(t))
			_, err = d2.Send(attestortest.QuoteResponse(quoted, sig, vals))
			return err
		}, attestor.ErrNonceReplayed, 1},
		{"stale nonce", byEKCA, func(t *testing.T, e *env) error {
			d := attestortest.NewDriver(t, e.client)
			qr := d.UpToQuote(td, e.tpm, e.ekIssuer(t))
			e.clock.Advance(attestor.DefaultNonceTTL + time.Second)
			quoted, sig, vals, err := e.tpm.Quote(qr.GetNonce(), qr.GetPcrs())
			if err != nil {
				t.Fatal(err)
			}
			_, err = d.Send(attestortest.QuoteResponse(quoted, sig, vals))
			return err
		}, attestor.ErrNonceStale, 0},
		{"forged quote signature", byEKCA, func(t *testing.T, e *env) error {
			d := attestortest.NewDriver(t, e.client)
			qr := d.UpToQuote(td, e.tpm, e.ekIssuer(t))
			quoted, _, vals, err := e.tpm.Quote(qr.GetNonce(), qr.GetPcrs())
			if err != nil {
				t.Fatal(err)
			}
			k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			sig, _ := verifytest.SignWith(k, quoted)
			_, err = d.Send(attestortest.QuoteResponse(quoted, sig, vals))
			return err
		}, verify.ErrQuoteSignature, 0},
		{"banned node", byEKCA, func(t *testing.T, e *env) error {
			if _, err := e.attest(t); err != nil {
				t.Fatalf("before the ban: %v", err)
			}
			n, err := e.svc.BanNode(context.Background(), "operator", e.ekHash, "decommissioned", 1)
			if err != nil || n != 2 || !slices.Contains(e.rev.Calls, "spiffe://"+td+"/palisade/node/"+e.ekHash) {
				t.Fatalf("ban revoked %d (%v), calls %v", n, err, e.rev.Calls)
			}
			_, err = e.attest(t)
			return err
		}, attestor.ErrBanned, 1},
		// Last: it changes the TPM's PCRs for good.
		{"extended PCR (golden mismatch)", byEKCA, func(t *testing.T, e *env) error {
			if err := e.tpm.ExtendPCR(7, []byte("unsigned shim")); err != nil {
				t.Fatal(err)
			}
			_, err := e.attest(t)
			return err
		}, verify.ErrPCRMismatch, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, in, tc.by)
			err := tc.attack(t, e)
			if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), tc.reason.Error()) {
				t.Fatalf("err = %v, want PermissionDenied naming %q", err, tc.reason)
			}
			if r := e.aud.Reason(); !strings.Contains(r, tc.reason.Error()) {
				t.Fatalf("audit record %q does not name %q", r, tc.reason)
			}
			if got := e.iss.Count(); got != tc.wantSVID {
				t.Fatalf("issued %d SVIDs, want %d", got, tc.wantSVID)
			}
		})
	}
}

// TestStatePersists restarts the service on the same database: manifest,
// policy, node records and bans survive.
func TestStatePersists(t *testing.T) {
	in := swtpm.New(t)
	e := newEnv(t, in, byHash)
	if _, err := e.attest(t); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.BanNode(context.Background(), "operator", e.ekHash, "lost", 1); err != nil {
		t.Fatal(err)
	}
	e.db.Close()
	e.start(t)
	rec, err := e.svc.Node(context.Background(), e.ekHash)
	if err != nil || !rec.Banned || rec.BanReason != "lost" || rec.Attestations != 1 {
		t.Fatalf("after restart: %+v, %v", rec, err)
	}
	if _, p, err := e.svc.PCRPolicy(context.Background()); err != nil || p.Version != 1 {
		t.Fatalf("policy after restart: %v", err)
	}
	if _, err := e.attest(t); status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), attestor.ErrBanned.Error()) {
		t.Fatalf("banned node after restart: %v", err)
	}
}

// BenchmarkRoundTripSwtpm is one full attestation over loopback TLS gRPC
// with swtpm doing ActivateCredential and Quote.
func BenchmarkRoundTripSwtpm(b *testing.B) {
	in := swtpm.New(b)
	tpm := in.Open(b)
	ca := testca.New(b, td)
	db, err := store.Open(filepath.Join(b.TempDir(), "a.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	svc, err := attestor.New(context.Background(), spiffeid.RequireTrustDomainFromString(td), attestor.Config{},
		attestor.Deps{Store: db, Issuer: &attestortest.Issuer{CA: ca, TTL: time.Hour}, Auditor: &attestortest.Auditor{}})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	ek, _ := verify.ParseEKPublic(tpm.EKPublic())
	entry, _ := attestor.ParseManifestInput([]byte(ek.HashHex()), "worker", "")
	if _, err := svc.AddManifestEntry(ctx, "op", entry); err != nil {
		b.Fatal(err)
	}
	vals, _ := tpm.ReadPCRs(pcrs)
	if _, err := svc.SetPCRPolicy(ctx, "op", attestortest.PCRPolicy(1, vals)); err != nil {
		b.Fatal(err)
	}
	client := attestortest.Serve(b, svc, ca)
	csr := attestortest.CSR(b, td, tpm)
	b.ResetTimer()
	for b.Loop() {
		if _, err := agent.Attest(ctx, client, tpm, csr); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "attestations/s")
}

// TestAgentConfigAttests attests the way palisade-agent does: from its
// configuration (swtpm socket, trust bundle file, EK intermediate file).
func TestAgentConfigAttests(t *testing.T) {
	in := swtpm.New(t)
	dir := t.TempDir()
	bundle, issuerPEM := filepath.Join(dir, "bundle.pem"), filepath.Join(dir, "ek-issuer.pem")
	e := &env{ca: testca.New(t, td)}
	if err := os.WriteFile(bundle, e.ca.BundlePEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(issuerPEM, in.CAPEM(t, "issuer"), 0o600); err != nil {
		t.Fatal(err)
	}
	db, err := store.Open(filepath.Join(dir, "a.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	svc, err := attestor.New(context.Background(), spiffeid.RequireTrustDomainFromString(td), attestor.Config{},
		attestor.Deps{Store: db, Issuer: &attestortest.Issuer{CA: e.ca, TTL: time.Hour}, Auditor: &attestortest.Auditor{}})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	entry, err := attestor.ParseManifestInput(in.CAPEM(t, "root"), "worker", "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := svc.AddManifestEntry(ctx, "op", entry); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.SetPCRPolicy(ctx, "op", attestortest.PCRPolicy(1, map[uint32][]byte{0: make([]byte, 32)})); err != nil {
		t.Fatal(err)
	}
	cfg := agent.Config{Server: attestortest.Listen(t, svc, e.ca), TrustDomain: td,
		TrustBundle: bundle, TPM: "swtpm:unix:" + in.Socket, EKIntermediates: []string{issuerPEM}}
	if cfg.WithDefaults().EventLog != "" {
		t.Fatal("swtpm must not default to the host's event log")
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	res, err := cfg.AttestOnce(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(res.ID.String(), "spiffe://"+td+"/palisade/node/") || !res.Chain[0].PublicKey.(*ecdsa.PublicKey).Equal(&key.PublicKey) {
		t.Fatalf("SVID %s for the wrong key or ID", res.ID)
	}
}
