package attestor_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/palisade-id/palisade/attestor"
	"github.com/palisade-id/palisade/attestor/agent"
	"github.com/palisade-id/palisade/attestor/verify"
	"github.com/palisade-id/palisade/attestor/verify/verifytest"
	"github.com/palisade-id/palisade/test/attestor/attestortest"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// helloFrom sends a hello with n's EK (and cert, if any) and returns the
// refusal's code.
func helloFrom(t *testing.T, e *env, n *verifytest.Node, cert []byte) codes.Code {
	t.Helper()
	tpm := attestortest.SoftTPM{Node: n, Cert: cert}
	_, err := attestortest.NewDriver(t, e.client).Send(attestortest.Hello(tpm, n.AKPublic, attestortest.CSR(t, td, tpm)))
	if err == nil {
		t.Fatal("hello accepted")
	}
	return status.Code(err)
}

// summary decodes the payload of an AuditAttestRefuseSuppressed record.
type summary struct {
	Count    uint64            `json:"count"`
	Reasons  map[string]uint64 `json:"reasons"`
	First    time.Time         `json:"first"`
	Last     time.Time         `json:"last"`
	EKHashes []string          `json:"ek_hashes_sample"`
	Peers    []string          `json:"peers_sample"`
}

func summaries(t *testing.T, a *attestortest.Auditor) []summary {
	t.Helper()
	var out []summary
	for _, r := range a.Snapshot() {
		if r.Kind != attestor.AuditAttestRefuseSuppressed {
			continue
		}
		raw, err := json.Marshal(r.Data)
		if err != nil {
			t.Fatal(err)
		}
		var s summary
		if err := json.Unmarshal(raw, &s); err != nil {
			t.Fatal(err)
		}
		out = append(out, s)
	}
	return out
}

// Over the budget, refusals of EKs not in the manifest are only counted,
// and one summary per minute says what was not audited, written by Run
// even though no further refusal arrives.
func TestUnknownEKAuditBudget(t *testing.T) {
	const budget, attempts = 3, 10
	e := newEnv(t, attestor.Config{NonceTTL: 30 * time.Second, UnknownEKAuditPerMinute: budget})
	attestor.SetSummaryTick(e.svc, 5*time.Millisecond)
	strangers := []*verifytest.Node{softNode(t, 1), softNode(t, 2)}
	for i := range attempts {
		// Even: no manifest entry; odd: an unreadable EK certificate.
		cert, want := []byte(nil), codes.PermissionDenied
		if i%2 == 1 {
			cert, want = []byte("not a certificate"), codes.InvalidArgument
		}
		if got := helloFrom(t, e, strangers[i%2], cert); got != want {
			t.Fatalf("attempt %d: code %v, want %v", i, got, want)
		}
	}
	if n := e.aud.Count(attestor.AuditAttestRefuse); n != budget {
		t.Fatalf("%d refusals audited one by one, want the budget of %d", n, budget)
	}
	u := &e.svc.Refusals().UnknownEK
	if u.Unaudited.Load() != attempts-budget || u.NoEntry.Load() != attempts/2 || u.CertMalformed.Load() != attempts/2 {
		t.Fatalf("counted unaudited %d, no entry %d, malformed %d; want %d, %d, %d", u.Unaudited.Load(),
			u.NoEntry.Load(), u.CertMalformed.Load(), attempts-budget, attempts/2, attempts/2)
	}

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { e.svc.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	time.Sleep(50 * time.Millisecond) // many ticks, less than a minute on the clock
	if s := summaries(t, e.aud); len(s) != 0 {
		t.Fatalf("summary before the minute was out: %+v", s)
	}
	e.clock.Advance(time.Minute)
	deadline := time.Now().Add(5 * time.Second)
	for len(summaries(t, e.aud)) == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	got := summaries(t, e.aud)
	if len(got) != 1 {
		t.Fatalf("%d summaries after the minute, want 1", len(got))
	}
	s := got[0]
	// Attempts 0-2 were audited; of 3-9, the odd ones had bad certificates.
	if s.Count != attempts-budget || len(s.Reasons) != 2 || s.Reasons["no_entry"] != 3 || s.Reasons["cert_malformed"] != 4 {
		t.Fatalf("summary count %d, reasons %v; want %d, {no_entry: 3, cert_malformed: 4}", s.Count, s.Reasons, attempts-budget)
	}
	if s.First.IsZero() || s.Last.Before(s.First) || len(s.EKHashes) != len(strangers) || len(s.Peers) != 1 {
		t.Fatalf("summary first %v, last %v, EK sample %v, peers %v", s.First, s.Last, s.EKHashes, s.Peers)
	}
	for _, n := range strangers {
		if !strings.Contains(strings.Join(s.EKHashes, " "), ekHash(t, n)) {
			t.Fatalf("EK sample %v lacks %s", s.EKHashes, ekHash(t, n))
		}
	}
	// A minute on, the bucket is full again.
	helloFrom(t, e, strangers[0], nil)
	if e.aud.Count(attestor.AuditAttestRefuse) != budget+1 {
		t.Fatal("refusal after the bucket refilled not audited")
	}
}

// selfSigned returns a certificate for a key that is not the EK.
func selfSigned(t *testing.T) []byte {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// ekCA is a manufacturer CA issuing EK certificates.
type ekCA struct {
	key  *ecdsa.PrivateKey
	cert *x509.Certificate
}

func newEKCA(t *testing.T) ekCA {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "TPM manufacturer"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return ekCA{k, c}
}

// issue returns an EK certificate for n's (RSA) EK.
func (ca ekCA) issue(t *testing.T, n *verifytest.Node) []byte {
	t.Helper()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageKeyEncipherment}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &n.EKKey.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// Refusals after the peer proved it holds the EK's TPM (credential
// activation) are audited one by one, whatever the budgets have left.
func TestKnownEKRefusalsAlwaysAudited(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, attestor.Config{NonceTTL: 30 * time.Second, UnknownEKAuditPerMinute: 1})
	manufacturer, rogue := newEKCA(t), newEKCA(t)
	entry, err := attestor.ParseManifestInput(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: manufacturer.cert.Raw}), "worker", "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.AddManifestEntry(ctx, "operator", entry); err != nil {
		t.Fatal(err)
	}
	// Spend both budgets: EKs not in the manifest, and manifest EKs whose
	// TPM is not proven.
	stranger := softNode(t, 1)
	helloFrom(t, e, stranger, nil)
	// A certificate from a CA not in the manifest admits nothing.
	if code := helloFrom(t, e, stranger, rogue.issue(t, stranger)); code != codes.PermissionDenied {
		t.Fatalf("EK certificate from a rogue CA: %v", code)
	}
	for range 2 { // refused before the manifest lookup, but the EK hash is listed
		if code := helloFrom(t, e, e.node, selfSigned(t)); code != codes.PermissionDenied {
			t.Fatalf("certificate for another key: %v", code)
		}
	}
	r := e.svc.Refusals()
	if r.UnknownEK.Unaudited.Load() != 1 || r.UnknownEK.CertUntrusted.Load() != 1 || r.UnprovenEK.Unaudited.Load() != 1 {
		t.Fatalf("budgets not spent: unaudited unknown %d, untrusted certificates %d, unaudited unproven %d",
			r.UnknownEK.Unaudited.Load(), r.UnknownEK.CertUntrusted.Load(), r.UnprovenEK.Unaudited.Load())
	}
	if n := e.aud.Count(attestor.AuditAttestRefuse); n != 2 {
		t.Fatalf("%d refusals audited, want one per budget", n)
	}
	id := "spiffe://" + td + "/palisade/node/" + ekHash(t, e.node)
	audited := func(want int, reason error) {
		t.Helper()
		if n := e.aud.Count(attestor.AuditAttestRefuse); n != want {
			t.Fatalf("%d refusals audited, want %d", n, want)
		}
		if r, _ := e.aud.Last(attestor.AuditAttestRefuse); !strings.Contains(e.aud.Reason(), reason.Error()) {
			t.Fatalf("last refusal %+v does not name %q", r, reason)
		}
	}
	e.node.Extend(7, []byte("unsigned bootloader"))
	for i := range 3 {
		if _, err := agent.Attest(ctx, e.client, e.tpm(), attestortest.CSR(t, td, e.tpm())); status.Code(err) != codes.PermissionDenied {
			t.Fatalf("policy failure: %v", err)
		}
		audited(3+i, verify.ErrPCRMismatch)
		if r, _ := e.aud.Last(attestor.AuditAttestRefuse); r.Actor != id {
			t.Fatalf("refusal audited as %q, want %s", r.Actor, id)
		}
	}
	// Admitted by the manufacturer CA, failing the policy.
	byCA := attestortest.SoftTPM{Node: softNode(t, 2), Cert: manufacturer.issue(t, softNode(t, 2))}
	byCA.Node.Extend(7, []byte("unsigned bootloader"))
	for i := range 2 {
		if _, err := agent.Attest(ctx, e.client, byCA, attestortest.CSR(t, td, byCA)); status.Code(err) != codes.PermissionDenied {
			t.Fatalf("CA-admitted node failing the policy: %v", err)
		}
		audited(6+i, verify.ErrPCRMismatch)
	}
	if r.UnknownEK.Unaudited.Load() != 1 || r.UnknownEK.NoEntry.Load() != 1 || r.UnprovenEK.Unaudited.Load() != 1 || r.UnprovenEK.BadMessage.Load() != 2 {
		t.Fatalf("counted: unaudited unknown %d, no entry %d, unaudited unproven %d, bad message %d", r.UnknownEK.Unaudited.Load(),
			r.UnknownEK.NoEntry.Load(), r.UnprovenEK.Unaudited.Load(), r.UnprovenEK.BadMessage.Load())
	}
}

// A manifest EK's public key is no secret: until the peer proves it holds
// the EK's TPM, its refusals are audited within a per-EK allowance and the
// budget, and beyond them counted and summarised.
func TestUnprovenEKAuditBudget(t *testing.T) {
	// Each attempt presents a manifest EK with an AK the server cannot use:
	// unreadable (even attempts) or another TPM's (odd ones).
	attempt := func(t *testing.T, e *env, n *verifytest.Node, i int) {
		t.Helper()
		tpm := attestortest.SoftTPM{Node: n}
		d := attestortest.NewDriver(t, e.client)
		if i%2 == 0 {
			if _, err := d.Send(attestortest.Hello(tpm, []byte("garbage AK"), attestortest.CSR(t, td, tpm))); status.Code(err) != codes.InvalidArgument {
				t.Fatalf("attempt %d, unreadable AK: %v", i, err)
			}
			return
		}
		if _, err := d.Send(attestortest.Hello(tpm, softNode(t, 3).AKPublic, attestortest.CSR(t, td, tpm))); err != nil {
			t.Fatalf("attempt %d, hello: %v", i, err)
		}
		if _, err := d.Send(attestortest.ActivationProof(make([]byte, 32))); status.Code(err) != codes.PermissionDenied {
			t.Fatalf("attempt %d, activation without the TPM: %v", i, err)
		}
	}
	tests := []struct {
		name     string
		budget   int
		attempts []int // by EK in the manifest, one EK after the other
		audited  []int
	}{
		{"one EK's flood held to its allowance", 60, []int{20, 1}, []int{5, 1}},
		{"budget bounds all EKs", 3, []int{2, 6}, []int{2, 1}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			e := newEnv(t, attestor.Config{NonceTTL: 30 * time.Second, UnknownEKAuditPerMinute: tc.budget})
			nodes := []*verifytest.Node{e.node, softNode(t, 1)}
			entry, err := attestor.ParseManifestInput([]byte(ekHash(t, nodes[1])), "worker", "")
			if err != nil {
				t.Fatal(err)
			}
			if _, err := e.svc.AddManifestEntry(ctx, "operator", entry); err != nil {
				t.Fatal(err)
			}
			var total, audited int
			for k, n := range nodes {
				for i := range tc.attempts[k] {
					attempt(t, e, n, i)
				}
				var got int
				for _, r := range e.aud.OfKind(attestor.AuditAttestRefuse) {
					if strings.Contains(r.Actor, ekHash(t, n)) {
						got++
					}
				}
				if got != tc.audited[k] {
					t.Fatalf("EK %d: %d of %d refusals audited, want %d", k, got, tc.attempts[k], tc.audited[k])
				}
				total, audited = total+tc.attempts[k], audited+got
			}
			u := &e.svc.Refusals().UnprovenEK
			if u.Unaudited.Load() != uint64(total-audited) || u.BadMessage.Load()+u.ActivationFailed.Load() != uint64(total) {
				t.Fatalf("counted %d unaudited, %d bad messages, %d failed activations; want %d unaudited of %d",
					u.Unaudited.Load(), u.BadMessage.Load(), u.ActivationFailed.Load(), total-audited, total)
			}
			if n := e.svc.Refusals().UnknownEK.Unaudited.Load(); n != 0 {
				t.Fatalf("%d manifest EK refusals counted as unknown EKs", n)
			}
			if err := e.svc.Shutdown(ctx); err != nil {
				t.Fatal(err)
			}
			s := summaries(t, e.aud)
			if len(s) != 1 || s[0].Count != uint64(total-audited) ||
				s[0].Reasons["bad_message"]+s[0].Reasons["activation_failed"] != uint64(total-audited) {
				t.Fatalf("summaries %+v, want one of %d refusals", s, total-audited)
			}
		})
	}
}

// Shutdown writes the pending summary before its minute is out, and one
// that could not be audited is kept, not dropped.
func TestUnknownEKSummaryOnShutdown(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, attestor.Config{NonceTTL: 30 * time.Second, UnknownEKAuditPerMinute: 1})
	for range 4 {
		helloFrom(t, e, softNode(t, 1), nil)
	}
	e.aud.Fail(attestortest.ErrInjected)
	if err := e.svc.Shutdown(ctx); !errors.Is(err, attestortest.ErrInjected) {
		t.Fatalf("shutdown with a failing audit log: %v", err)
	}
	e.aud.Fail(nil)
	if err := e.svc.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if s := summaries(t, e.aud); len(s) != 1 || s[0].Count != 3 || s[0].Reasons["no_entry"] != 3 {
		t.Fatalf("summaries on shutdown %+v, want one of 3 no_entry refusals", s)
	}
	if err := e.svc.Shutdown(ctx); err != nil || len(summaries(t, e.aud)) != 1 {
		t.Fatalf("second shutdown: %v, %d summaries", err, len(summaries(t, e.aud)))
	}
}
