package attestor_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/palisade-id/palisade/attestor"
	"github.com/palisade-id/palisade/attestor/agent"
	"github.com/palisade-id/palisade/attestor/attestorpb"
	"github.com/palisade-id/palisade/attestor/store"
	"github.com/palisade-id/palisade/attestor/verify"
	"github.com/palisade-id/palisade/attestor/verify/verifytest"
	"github.com/palisade-id/palisade/ca"
	"github.com/palisade-id/palisade/test/attestor/attestortest"
	"github.com/palisade-id/palisade/test/testca"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

const td = "example.org"

// softNode returns the i-th shared software node, booted securely.
func softNode(t testing.TB, i int) *verifytest.Node {
	t.Helper()
	n := attestortest.SoftNode(t, i)
	n.Extend(7, []byte("secure boot on"))
	return n
}

type env struct {
	svc    *attestor.Service
	db     *store.DB
	iss    *attestortest.Issuer
	aud    *attestortest.Auditor
	rev    *attestortest.Revoker
	clock  *attestortest.Clock
	client attestorpb.AttestorClient
	ca     *testca.CA
	node   *verifytest.Node
}

// policyFor pins PCRs 0 and 7, the ones the tests measure into.
func policyFor(version int, n *verifytest.Node) []byte {
	return attestortest.PCRPolicy(version, map[uint32][]byte{0: n.PCR(0), 7: n.PCR(7)})
}

func newEnv(t *testing.T, cfgs ...attestor.Config) *env {
	t.Helper()
	cfg := attestor.Config{NonceTTL: 30 * time.Second}
	if len(cfgs) > 0 {
		cfg = cfgs[0]
	}
	db, err := store.Open(filepath.Join(t.TempDir(), "attestor.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	ca := testca.New(t, td)
	e := &env{db: db, ca: ca, iss: &attestortest.Issuer{CA: ca, TTL: time.Hour},
		aud: &attestortest.Auditor{}, rev: &attestortest.Revoker{}, clock: attestortest.NewClock(), node: softNode(t, 0)}
	e.svc, err = attestor.New(context.Background(), spiffeid.RequireTrustDomainFromString(td), cfg,
		attestor.Deps{Store: db, Issuer: e.iss, Auditor: e.aud, Revoker: e.rev, Now: e.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	entry, err := attestor.ParseManifestInput([]byte(ekHash(t, e.node)), "worker", "rack 1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.AddManifestEntry(ctx, "operator", entry); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.SetPCRPolicy(ctx, "operator", policyFor(1, e.node)); err != nil {
		t.Fatal(err)
	}
	e.client = attestortest.Serve(t, e.svc, ca)
	return e
}

// tpm is the env's node as the agent sees it.
func (e *env) tpm() attestortest.SoftTPM { return attestortest.SoftTPM{Node: e.node} }

func ekHash(t testing.TB, n *verifytest.Node) string {
	h, err := verify.HashPublicKey(&n.EKKey.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h[:])
}

func TestAttestAccepted(t *testing.T) {
	e := newEnv(t)
	res, err := agent.Attest(context.Background(), e.client, e.tpm(), attestortest.CSR(t, td, e.tpm()))
	if err != nil {
		t.Fatal(err)
	}
	want := "spiffe://" + td + "/palisade/node/" + ekHash(t, e.node)
	if res.ID.String() != want || res.Chain[0].URIs[0].String() != want {
		t.Fatalf("SVID for %s (cert %v), want %s", res.ID, res.Chain[0].URIs, want)
	}
	if _, err := res.Chain[0].Verify(x509Opts(e.ca, res)); err != nil {
		t.Fatalf("SVID does not chain to the CA: %v", err)
	}
	rec, err := e.svc.Node(context.Background(), want)
	if err != nil || rec.Attestations != 1 || rec.Class != "worker" || rec.PolicyVersion != 1 {
		t.Fatalf("record %+v, %v", rec, err)
	}
	if r, ok := e.aud.Last(attestor.AuditAttestAccept); !ok || r.Actor != want {
		t.Fatalf("accept not audited: %+v", r)
	}
	// Renewal is a fresh attestation.
	if _, err := agent.Attest(context.Background(), e.client, e.tpm(), attestortest.CSR(t, td, e.tpm())); err != nil {
		t.Fatal(err)
	}
	if rec, _ := e.svc.Node(context.Background(), want); rec.Attestations != 2 {
		t.Fatalf("attestations = %d after renewal", rec.Attestations)
	}
}

func TestAttestRefused(t *testing.T) {
	tests := []struct {
		name     string
		attack   func(t *testing.T, e *env) error
		code     codes.Code
		reason   error
		recorded bool // a node record exists afterwards
	}{
		{"EK not in manifest", func(t *testing.T, e *env) error {
			n := softNode(t, 1)
			_, err := agent.Attest(context.Background(), e.client, attestortest.SoftTPM{Node: n}, attestortest.CSR(t, td, attestortest.SoftTPM{Node: n}))
			return err
		}, codes.PermissionDenied, attestor.ErrNotInManifest, false},
		{"AK not bound to EK", func(t *testing.T, e *env) error {
			d := attestortest.NewDriver(t, e.client)
			foreign := softNode(t, 1) // an AK that lives in another TPM
			m, err := d.Send(attestortest.Hello(e.tpm(), foreign.AKPublic, attestortest.CSR(t, td, e.tpm())))
			if err != nil {
				return err
			}
			// The EK's TPM only activates for its own AK's name.
			if _, err := e.node.Activate(e.node.AKName, m.GetChallenge().GetIdObject(), m.GetChallenge().GetEncryptedSecret()); err == nil {
				t.Fatal("credential for a foreign AK activated")
			}
			_, err = d.Send(attestortest.ActivationProof(make([]byte, 32)))
			return err
		}, codes.PermissionDenied, attestor.ErrActivation, false},
		{"replayed nonce", func(t *testing.T, e *env) error {
			d := attestortest.NewDriver(t, e.client)
			qr := d.UpToQuote(td, e.tpm())
			quoted, sig, values, _ := e.node.Quote(qr.GetNonce(), qr.GetPcrs())
			if _, err := d.Send(attestortest.QuoteResponse(quoted, sig, values)); err != nil {
				t.Fatalf("honest session: %v", err)
			}
			d2 := attestortest.NewDriver(t, e.client)
			d2.UpToQuote(td, e.tpm())
			_, err := d2.Send(attestortest.QuoteResponse(quoted, sig, values))
			return err
		}, codes.PermissionDenied, attestor.ErrNonceReplayed, true},
		{"stale nonce", func(t *testing.T, e *env) error {
			d := attestortest.NewDriver(t, e.client)
			qr := d.UpToQuote(td, e.tpm())
			e.clock.Advance(31 * time.Second)
			quoted, sig, values, _ := e.node.Quote(qr.GetNonce(), qr.GetPcrs())
			_, err := d.Send(attestortest.QuoteResponse(quoted, sig, values))
			return err
		}, codes.PermissionDenied, attestor.ErrNonceStale, false},
		{"extended PCR", func(t *testing.T, e *env) error {
			e.node.Extend(7, []byte("unsigned bootloader"))
			_, err := agent.Attest(context.Background(), e.client, e.tpm(), attestortest.CSR(t, td, e.tpm()))
			return err
		}, codes.PermissionDenied, verify.ErrPCRMismatch, false},
		{"event log does not replay", func(t *testing.T, e *env) error {
			// The log claims a measurement into PCR 0 the TPM never saw.
			e.node.Log = []verifytest.LogEvent{{PCR: 0, Type: 8, Data: []byte("trusted firmware")}}
			_, err := agent.Attest(context.Background(), e.client, e.tpm(), attestortest.CSR(t, td, e.tpm()))
			return err
		}, codes.PermissionDenied, verify.ErrEventLog, false},
		{"forged quote signature", func(t *testing.T, e *env) error {
			d := attestortest.NewDriver(t, e.client)
			qr := d.UpToQuote(td, e.tpm())
			quoted, _, values, _ := e.node.Quote(qr.GetNonce(), qr.GetPcrs())
			k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			sig, _ := verifytest.SignWith(k, quoted)
			_, err := d.Send(attestortest.QuoteResponse(quoted, sig, values))
			return err
		}, codes.PermissionDenied, verify.ErrQuoteSignature, false},
		{"lying PCR values", func(t *testing.T, e *env) error {
			d := attestortest.NewDriver(t, e.client)
			qr := d.UpToQuote(td, e.tpm())
			quoted, sig, values, _ := e.node.Quote(qr.GetNonce(), qr.GetPcrs())
			values[0] = bytes.Repeat([]byte{9}, 32)
			_, err := d.Send(attestortest.QuoteResponse(quoted, sig, values))
			return err
		}, codes.PermissionDenied, verify.ErrPCRDigest, false},
		{"banned node", func(t *testing.T, e *env) error {
			n, err := e.svc.BanNode(context.Background(), "operator", ekHash(t, e.node), "stolen", 1)
			if err != nil || n != 2 || len(e.rev.Calls) != 1 {
				t.Fatalf("ban: revoked %d, calls %v, err %v", n, e.rev.Calls, err)
			}
			_, err = agent.Attest(context.Background(), e.client, e.tpm(), attestortest.CSR(t, td, e.tpm()))
			return err
		}, codes.PermissionDenied, attestor.ErrBanned, true},
		{"truncated EK", func(t *testing.T, e *env) error {
			d := attestortest.NewDriver(t, e.client)
			m := attestortest.Hello(e.tpm(), e.node.AKPublic, attestortest.CSR(t, td, e.tpm()))
			m.GetHello().EkPublic = e.node.EKPublic[:40]
			_, err := d.Send(m)
			return err
		}, codes.InvalidArgument, verify.ErrMalformed, false},
		{"EK as AK (wrong algorithm)", func(t *testing.T, e *env) error {
			_, err := attestortest.NewDriver(t, e.client).Send(attestortest.Hello(e.tpm(), e.node.EKPublic, attestortest.CSR(t, td, e.tpm())))
			return err
		}, codes.InvalidArgument, verify.ErrAKAttributes, false},
		{"bad CSR", func(t *testing.T, e *env) error {
			_, err := attestortest.NewDriver(t, e.client).Send(attestortest.Hello(e.tpm(), e.node.AKPublic, []byte("not a CSR")))
			return err
		}, codes.InvalidArgument, attestor.ErrBadMessage, false},
		{"CSR naming another node", func(t *testing.T, e *env) error {
			other := attestortest.SoftTPM{Node: softNode(t, 1)}
			_, err := agent.Attest(context.Background(), e.client, e.tpm(), attestortest.CSR(t, td, other))
			return err
		}, codes.InvalidArgument, attestor.ErrBadMessage, false},
		{"CSR without URI SAN", func(t *testing.T, e *env) error {
			csr, _ := testca.CSR(t)
			_, err := agent.Attest(context.Background(), e.client, e.tpm(), csr)
			return err
		}, codes.InvalidArgument, attestor.ErrBadMessage, false},
		{"CSR with two URI SANs", func(t *testing.T, e *env) error {
			id := "spiffe://" + td + "/palisade/node/" + ekHash(t, e.node)
			csr, _ := testca.CSR(t, id, id)
			_, err := agent.Attest(context.Background(), e.client, e.tpm(), csr)
			return err
		}, codes.InvalidArgument, attestor.ErrBadMessage, false},
		{"quote before hello", func(t *testing.T, e *env) error {
			_, err := attestortest.NewDriver(t, e.client).Send(attestortest.QuoteResponse([]byte{1}, []byte{2}, nil))
			return err
		}, codes.InvalidArgument, attestor.ErrBadMessage, false},
		{"huge payload", func(t *testing.T, e *env) error {
			_, err := attestortest.NewDriver(t, e.client).Send(attestortest.Hello(e.tpm(), e.node.AKPublic, make([]byte, 1<<20)))
			return err
		}, codes.ResourceExhausted, nil, false},
	}
	// Refused before the EK is known: counted, not audited.
	unidentified := map[string]bool{"truncated EK": true, "quote before hello": true}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			manifestBefore, _ := e.db.ManifestEntries(context.Background())
			err := tc.attack(t, e)
			st, _ := status.FromError(err)
			if err == nil || st.Code() != tc.code {
				t.Fatalf("err = %v, want code %v", err, tc.code)
			}
			if tc.reason != nil {
				if !strings.Contains(st.Message(), tc.reason.Error()) {
					t.Fatalf("message %q does not name %q", st.Message(), tc.reason)
				}
				r := e.aud.Reason()
				switch {
				case unidentified[tc.name] && (r != "" || e.svc.Refusals().Other.Load() != 1):
					t.Fatalf("refusal before the EK: audit %q, counted %d, want only counted", r, e.svc.Refusals().Other.Load())
				case !unidentified[tc.name] && !strings.Contains(r, tc.reason.Error()):
					t.Fatalf("audit %q does not name %q", r, tc.reason)
				}
			}
			wantIssued := 0
			if tc.name == "replayed nonce" {
				wantIssued = 1 // the honest first session
			}
			if got := e.iss.Count(); got != wantIssued {
				t.Fatalf("issued %d SVIDs, want %d", got, wantIssued)
			}
			nodes, _ := e.db.Nodes(context.Background())
			if (len(nodes) > 0) != tc.recorded {
				t.Fatalf("node records %+v, want recorded=%v", nodes, tc.recorded)
			}
			manifestAfter, _ := e.db.ManifestEntries(context.Background())
			if len(manifestAfter) != len(manifestBefore) {
				t.Fatal("manifest changed")
			}
		})
	}
}

func TestAttestWithEventLog(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	// Firmware measured into PCR 0 (quoted) and PCR 9 (not quoted): the log
	// must replay for the quoted PCRs it touches; the rest is not checked.
	e.node.Measure(0, 8, []byte("fw"))
	e.node.Measure(9, 13, []byte("kernel cmdline"))
	if _, err := e.svc.SetPCRPolicy(ctx, "op", policyFor(2, e.node)); err != nil {
		t.Fatal(err)
	}
	if _, err := agent.Attest(ctx, e.client, e.tpm(), attestortest.CSR(t, td, e.tpm())); err != nil {
		t.Fatalf("consistent event log refused: %v", err)
	}
}

func TestConcurrentSessionCap(t *testing.T) {
	e := newEnv(t, attestor.Config{MaxSessions: 1})
	d := attestortest.NewDriver(t, e.client)
	if _, err := d.Send(attestortest.Hello(e.tpm(), e.node.AKPublic, attestortest.CSR(t, td, e.tpm()))); err != nil {
		t.Fatal(err)
	}
	// The first session holds the only slot.
	_, err := attestortest.NewDriver(t, e.client).Send(attestortest.Hello(e.tpm(), e.node.AKPublic, attestortest.CSR(t, td, e.tpm())))
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("second session: %v", err)
	}
}

func TestAdmin(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	if _, err := e.svc.SetPCRPolicy(ctx, "op", policyFor(1, e.node)); !errors.Is(err, attestor.ErrPolicyVersion) {
		t.Fatalf("same version: err = %v", err)
	}
	if _, err := e.svc.SetPCRPolicy(ctx, "op", []byte("version: 9\nclasses: {}\n")); !errors.Is(err, verify.ErrPolicy) {
		t.Fatalf("empty policy: err = %v", err)
	}
	p, err := e.svc.SetPCRPolicy(ctx, "op", policyFor(2, e.node))
	if err != nil || p.Version != 2 {
		t.Fatalf("v2: %v", err)
	}
	if raw, _, err := e.svc.PCRPolicy(ctx); err != nil || !bytes.Equal(raw, policyFor(2, e.node)) {
		t.Fatalf("policy readback: %v", err)
	}
	for _, bad := range []string{"zz", strings.Repeat("a", 63), "-----BEGIN FOO-----\n-----END FOO-----\n"} {
		if _, err := attestor.ParseManifestInput([]byte(bad), "worker", ""); !errors.Is(err, attestor.ErrInvalidManifest) {
			t.Fatalf("input %q: err = %v", bad, err)
		}
	}
	if _, err := attestor.ParseManifestInput([]byte(ekHash(t, e.node)), "Bad Class", ""); !errors.Is(err, attestor.ErrInvalidManifest) {
		t.Fatalf("bad class: err = %v", err)
	}
	id := "ek:" + ekHash(t, e.node)
	if err := e.svc.RemoveManifestEntry(ctx, "op", id); err != nil {
		t.Fatal(err)
	}
	if err := e.svc.RemoveManifestEntry(ctx, "op", id); !errors.Is(err, attestor.ErrNotFound) {
		t.Fatalf("second remove: err = %v", err)
	}
	// Removal takes effect immediately.
	_, err = agent.Attest(ctx, e.client, e.tpm(), attestortest.CSR(t, td, e.tpm()))
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("removed EK attested: %v", err)
	}
	for _, ref := range []string{"spiffe://other.org/palisade/node/" + ekHash(t, e.node), "spiffe://" + td + "/x", "abc"} {
		if _, err := e.svc.BanNode(ctx, "op", ref, "r", 1); !errors.Is(err, attestor.ErrInvalidArgument) {
			t.Fatalf("ban %q: err = %v", ref, err)
		}
	}
	// Only reasons the revocation service accepts: a ban it could not
	// carry out would leave the node's certificates valid.
	for _, reason := range []int{-1, 6, 7, 8, 11} {
		if _, err := e.svc.BanNode(ctx, "op", ekHash(t, e.node), "r", reason); !errors.Is(err, attestor.ErrInvalidArgument) {
			t.Fatalf("ban with CRL reason %d: err = %v", reason, err)
		}
	}
	for _, kind := range []string{attestor.AuditManifestAdd, attestor.AuditManifestRemove, attestor.AuditPolicySet} {
		if _, ok := e.aud.Last(kind); !ok {
			t.Fatalf("%s not audited", kind)
		}
	}
}

// An unbanned node attests again; unbanning is audited and refuses what
// there is nothing to lift.
func TestUnbanNode(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	ref := ekHash(t, e.node)
	attest := func() error {
		_, err := agent.Attest(ctx, e.client, e.tpm(), attestortest.CSR(t, td, e.tpm()))
		return err
	}
	if err := attest(); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.UnbanNode(ctx, "op", ref, "never banned"); !errors.Is(err, attestor.ErrInvalidArgument) {
		t.Fatalf("unban of a node not banned: %v", err)
	}
	if _, err := e.svc.BanNode(ctx, "op", ref, "lost", 1); err != nil {
		t.Fatal(err)
	}
	if err := attest(); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("banned node attested: %v", err)
	}
	tests := []struct {
		name, ref, reason string
		want              error
	}{
		{"no reason", ref, " ", attestor.ErrInvalidArgument},
		{"reason too long", ref, strings.Repeat("r", 513), attestor.ErrInvalidArgument},
		{"foreign trust domain", "spiffe://other.org/palisade/node/" + ref, "r", attestor.ErrInvalidArgument},
		{"unknown node", strings.Repeat("ab", 32), "r", attestor.ErrNotFound},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := e.svc.UnbanNode(ctx, "op", tc.ref, tc.reason); !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if rec, _ := e.svc.Node(ctx, ref); !rec.Banned {
				t.Fatal("a refused unban lifted the ban")
			}
		})
	}
	rec, err := e.svc.UnbanNode(ctx, "op", ref, "found")
	if err != nil || rec.Banned || rec.BanReason != "" {
		t.Fatalf("unban: %+v, %v", rec, err)
	}
	r, ok := e.aud.Last(attestor.AuditNodeUnban)
	if !ok || r.Actor != "op" || !strings.Contains(fmt.Sprint(r.Data), "lost") {
		t.Fatalf("unban audit record: %+v", r)
	}
	if err := attest(); err != nil {
		t.Fatalf("unbanned node refused: %v", err)
	}
}

func TestHelloTimeout(t *testing.T) {
	e := newEnv(t, attestor.Config{NonceTTL: 30 * time.Second, MaxSessions: 1, HelloTimeout: 500 * time.Millisecond})
	ctx := context.Background()
	idle, err := e.client.Attest(ctx) // holds the only slot, says nothing
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := idle.Recv(); status.Code(err) != codes.DeadlineExceeded || time.Since(start) > 5*time.Second {
		t.Fatalf("idle stream ended after %v with %v, want DeadlineExceeded after the hello timeout", time.Since(start), err)
	}
	if _, err := agent.Attest(ctx, e.client, e.tpm(), attestortest.CSR(t, td, e.tpm())); err != nil {
		t.Fatalf("honest node after the idle stream timed out: %v", err)
	}
	if n := e.svc.Refusals().HelloTimeout.Load(); n != 1 {
		t.Fatalf("%d hello timeouts counted, want 1", n)
	}
	// The hello's deadline does not apply to later steps (step_timeout).
	d := attestortest.NewDriver(t, e.client)
	qr := d.UpToQuote(td, e.tpm())
	time.Sleep(300 * time.Millisecond)
	quoted, sig, values, _ := e.node.Quote(qr.GetNonce(), qr.GetPcrs())
	if _, err := d.Send(attestortest.QuoteResponse(quoted, sig, values)); err != nil {
		t.Fatalf("quote sent after the hello timeout: %v", err)
	}
}

// After the hello, each wait for the node has step_timeout: a stream that
// goes silent ends with DeadlineExceeded and frees its slot and its EK.
func TestStepTimeout(t *testing.T) {
	tests := []struct {
		name     string
		activate bool // answer the challenge, then go silent
		counted  uint64
	}{
		{"silent after the challenge", false, 1},
		{"silent after the quote request", true, 0}, // TPM proven: audited, not counted
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, attestor.Config{NonceTTL: 30 * time.Second, MaxSessions: 1, SessionTimeout: 30 * time.Second,
				StepTimeout: 300 * time.Millisecond})
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			s, err := e.client.Attest(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Send(attestortest.Hello(e.tpm(), e.node.AKPublic, attestortest.CSR(t, td, e.tpm()))); err != nil {
				t.Fatal(err)
			}
			m, err := s.Recv()
			if err != nil {
				t.Fatal(err)
			}
			if tc.activate {
				secret, err := e.tpm().ActivateCredential(m.GetChallenge().GetIdObject(), m.GetChallenge().GetEncryptedSecret())
				if err != nil {
					t.Fatal(err)
				}
				if err := s.Send(attestortest.ActivationProof(secret)); err != nil {
					t.Fatal(err)
				}
				if m, err := s.Recv(); err != nil || m.GetQuoteRequest() == nil {
					t.Fatalf("activation: %v, %v", m, err)
				}
			}
			start := time.Now()
			_, err = s.Recv()
			if st, _ := status.FromError(err); st.Code() != codes.DeadlineExceeded || !strings.Contains(st.Message(), attestor.ErrStepTimeout.Error()) ||
				time.Since(start) > 5*time.Second {
				t.Fatalf("silent stream ended after %v with %v, want DeadlineExceeded naming the step timeout", time.Since(start), err)
			}
			if !strings.Contains(e.aud.Reason(), attestor.ErrStepTimeout.Error()) {
				t.Fatalf("audit %q does not name the step timeout", e.aud.Reason())
			}
			if n := e.svc.Refusals().UnprovenEK.StepTimeout.Load(); n != tc.counted {
				t.Fatalf("%d unproven step timeouts counted, want %d", n, tc.counted)
			}
			// The slot and the EK are free again.
			if _, err := agent.Attest(context.Background(), e.client, e.tpm(), attestortest.CSR(t, td, e.tpm())); err != nil {
				t.Fatalf("honest node after the silent stream: %v", err)
			}
		})
	}
}

// One EK has at most one session open: a second hello is refused and
// counted, not audited, and the first session goes on.
func TestOneSessionPerEK(t *testing.T) {
	e := newEnv(t)
	first := attestortest.NewDriver(t, e.client)
	m, err := first.Send(attestortest.Hello(e.tpm(), e.node.AKPublic, attestortest.CSR(t, td, e.tpm())))
	if err != nil {
		t.Fatal(err)
	}
	_, err = attestortest.NewDriver(t, e.client).Send(attestortest.Hello(e.tpm(), e.node.AKPublic, attestortest.CSR(t, td, e.tpm())))
	if st, _ := status.FromError(err); st.Code() != codes.ResourceExhausted || !strings.Contains(st.Message(), attestor.ErrSessionOpen.Error()) {
		t.Fatalf("second session of the EK: %v, want ResourceExhausted naming the open session", err)
	}
	if n, a := e.svc.Refusals().SessionOpen.Load(), e.aud.Count(attestor.AuditAttestRefuse); n != 1 || a != 0 {
		t.Fatalf("second session counted %d times, audited %d times; want 1 and 0", n, a)
	}
	secret, err := e.tpm().ActivateCredential(m.GetChallenge().GetIdObject(), m.GetChallenge().GetEncryptedSecret())
	if err != nil {
		t.Fatal(err)
	}
	m, err = first.Send(attestortest.ActivationProof(secret))
	if err != nil {
		t.Fatal(err)
	}
	quoted, sig, values, _ := e.node.Quote(m.GetQuoteRequest().GetNonce(), m.GetQuoteRequest().GetPcrs())
	if m, err := first.Send(attestortest.QuoteResponse(quoted, sig, values)); err != nil || m.GetResult() == nil {
		t.Fatalf("first session: %v, %v", m, err)
	}
	// Released once the first has its SVID.
	if _, err := agent.Attest(context.Background(), e.client, e.tpm(), attestortest.CSR(t, td, e.tpm())); err != nil {
		t.Fatalf("attestation after the first session: %v", err)
	}
}

// A CSR whose key the CA would refuse is refused at the hello, before any
// TPM round or record; a request the CA refuses anyway is the node's error.
func TestCSRKeyRefused(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name string
		key  func() (crypto.Signer, error)
	}{
		{"ECDSA P-224", func() (crypto.Signer, error) { return ecdsa.GenerateKey(elliptic.P224(), rand.Reader) }},
		{"RSA 1024", func() (crypto.Signer, error) { return rsa.GenerateKey(rand.Reader, 1024) }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			if _, err := agent.Attest(ctx, e.client, e.tpm(), attestortest.CSR(t, td, e.tpm())); err != nil {
				t.Fatal(err)
			}
			id, err := agent.ExpectedNodeID(spiffeid.RequireTrustDomainFromString(td), e.node.EKPublic)
			if err != nil {
				t.Fatal(err)
			}
			key, err := tc.key()
			if err != nil {
				t.Fatal(err)
			}
			csr, err := agent.NewNodeCSR(key, id)
			if err != nil {
				t.Fatal(err)
			}
			_, err = attestortest.NewDriver(t, e.client).Send(attestortest.Hello(e.tpm(), e.node.AKPublic, csr))
			if st, _ := status.FromError(err); st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), ca.ErrCSRKey.Error()) {
				t.Fatalf("hello: %v, want InvalidArgument naming the key", err)
			}
			if rec, err := e.svc.Node(ctx, id.String()); err != nil || rec.Attestations != 1 {
				t.Fatalf("record %+v, %v; want the one attestation", rec, err)
			}
			if n := e.iss.Count(); n != 1 {
				t.Fatalf("%d SVIDs issued, want 1", n)
			}
		})
	}
	t.Run("request refused by the CA", func(t *testing.T) {
		e := newEnv(t)
		e.iss.Fail = fmt.Errorf("%w: refused by the test", ca.ErrCSRKey)
		_, err := agent.Attest(ctx, e.client, e.tpm(), attestortest.CSR(t, td, e.tpm()))
		if status.Code(err) != codes.InvalidArgument {
			t.Fatalf("attestation: %v, want InvalidArgument", err)
		}
	})
}

// TestRefusalsBeforeEKNotAudited floods the endpoint with streams refused
// before they name an EK: none reaches the audit log, all are counted.
// (Refusals of a known EK stay audited: TestAttestRefused.)
func TestRefusalsBeforeEKNotAudited(t *testing.T) {
	e := newEnv(t, attestor.Config{NonceTTL: 30 * time.Second, MaxSessions: 1})
	ctx := context.Background()
	const flood = 50
	for range flood { // empty streams
		s, err := e.client.Attest(ctx)
		if err != nil {
			t.Fatal(err)
		}
		_ = s.CloseSend()
		if _, err := s.Recv(); status.Code(err) != codes.InvalidArgument {
			t.Fatalf("empty stream: %v", err)
		}
	}
	// One session past its hello holds the only slot: the rest are busy.
	if _, err := attestortest.NewDriver(t, e.client).Send(attestortest.Hello(e.tpm(), e.node.AKPublic, attestortest.CSR(t, td, e.tpm()))); err != nil {
		t.Fatal(err)
	}
	for range flood {
		_, err := attestortest.NewDriver(t, e.client).Send(attestortest.Hello(e.tpm(), e.node.AKPublic, attestortest.CSR(t, td, e.tpm())))
		if status.Code(err) != codes.ResourceExhausted {
			t.Fatalf("over the session cap: %v", err)
		}
	}
	if r, ok := e.aud.Last(attestor.AuditAttestRefuse); ok {
		t.Fatalf("refusal before the EK was known audited: %+v", r)
	}
	if got := e.svc.Refusals(); got.Other.Load() != flood || got.Busy.Load() != flood {
		t.Fatalf("counted %d other and %d busy refusals, want %d each", got.Other.Load(), got.Busy.Load(), flood)
	}
}
