package attestor_test

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/palisade-id/palisade/attestor"
	"github.com/palisade-id/palisade/attestor/agent"
	attcawire "github.com/palisade-id/palisade/attestor/cawire"
	"github.com/palisade-id/palisade/attestor/store"
	castore "github.com/palisade-id/palisade/ca/store"
	"github.com/palisade-id/palisade/crl"
	crlstore "github.com/palisade-id/palisade/crl/castore"
	"github.com/palisade-id/palisade/crl/cawire"
	"github.com/palisade-id/palisade/test/attestor/attestortest"
	"github.com/palisade-id/palisade/test/memca"
	"github.com/palisade-id/palisade/test/testca"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// realCAEnv is an attestor wired as palisade-server wires it: the real CA
// issues node SVIDs, the real revocation service revokes them, one audit
// sink records everything.
type realCAEnv struct {
	svc    *attestor.Service
	ca     *memca.Fixture
	iss    *attestortest.CAIssuer
	aud    *attestortest.Auditor
	node   attestortest.SoftTPM
	nodeID string
}

// realDeps returns the real CA (in-memory keys), its revocation service
// and an attestor store, all auditing to aud, as palisade-server wires them.
func realDeps(t *testing.T, aud *attestortest.Auditor) (*memca.Fixture, *crl.Service, *store.DB) {
	t.Helper()
	caf := memca.New(t, td, aud, nil)
	rev, err := crl.New(crl.Config{DataDir: t.TempDir()}, crl.Options{
		Store: crlstore.New(caf.Store), Audit: aud, Keys: caf.Keys, Issuers: cawire.Issuers(caf.CA)})
	if err != nil {
		t.Fatal(err)
	}
	db, err := store.Open(filepath.Join(t.TempDir(), "attestor.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return caf, rev, db
}

// newRealCAEnv returns the env and a function attesting its node with csr.
func newRealCAEnv(t *testing.T) (*realCAEnv, func(csr []byte) (*agent.Result, error)) {
	t.Helper()
	ctx := context.Background()
	e := &realCAEnv{aud: &attestortest.Auditor{}, node: attestortest.SoftTPM{Node: softNode(t, 0)}}
	e.nodeID = "spiffe://" + td + "/palisade/node/" + ekHash(t, e.node.Node)
	caf, rev, db := realDeps(t, e.aud)
	e.ca = caf
	e.iss = &attestortest.CAIssuer{CA: e.ca.CA}
	var err error
	e.svc, err = attestor.New(ctx, spiffeid.RequireTrustDomainFromString(td), attestor.Config{},
		attestor.Deps{Store: db, Issuer: e.iss, Auditor: e.aud, Revoker: attcawire.Revoker{Svc: rev}})
	if err != nil {
		t.Fatal(err)
	}
	entry, err := attestor.ParseManifestInput([]byte(ekHash(t, e.node.Node)), "worker", "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.AddManifestEntry(ctx, "operator", entry); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.SetPCRPolicy(ctx, "operator", policyFor(1, e.node.Node)); err != nil {
		t.Fatal(err)
	}
	client := attestortest.Serve(t, e.svc, testca.New(t, td))
	return e, func(csr []byte) (*agent.Result, error) { return agent.Attest(ctx, client, e.node, csr) }
}

// nodeCerts returns the CA's records of certificates issued to id.
func nodeCerts(t *testing.T, st *castore.Store, id string) (valid, revoked []castore.CertRecord) {
	t.Helper()
	err := st.ForEachCert(func(r castore.CertRecord) error {
		switch {
		case r.NodeID != id:
		case r.Status == castore.CertRevoked:
			revoked = append(revoked, r)
		default:
			valid = append(valid, r)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return valid, revoked
}

// TestBanRacesIssuance bans a node while its attestation is past the ban
// check, with the real CA and revocation service: the node must end with
// no valid certificate and its attestation refused, wherever the ban lands.
func TestBanRacesIssuance(t *testing.T) {
	const (
		noBan       = ""
		beforeIssue = "before the CA records the SVID"
		afterIssue  = "after the CA recorded the SVID"
	)
	for _, at := range []string{beforeIssue, afterIssue, noBan} {
		name := "ban " + at
		if at == noBan {
			name = "no ban"
		}
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			e, attest := newRealCAEnv(t)
			paused, resume := make(chan struct{}), make(chan struct{})
			pause := func() { close(paused); <-resume }
			switch at {
			case beforeIssue:
				e.iss.Before = pause
			case afterIssue:
				e.iss.After = pause
			}
			type result struct {
				res *agent.Result
				err error
			}
			done := make(chan result, 1)
			csr := attestortest.CSR(t, td, e.node)
			go func() {
				res, err := attest(csr)
				done <- result{res, err}
			}()
			if at != noBan {
				select {
				case <-paused:
				case r := <-done:
					t.Fatalf("attestation ended before issuance: %v", r.err)
				case <-time.After(10 * time.Second):
					t.Fatal("issuance never started")
				}
				if _, err := e.svc.BanNode(ctx, "operator", e.nodeID, "stolen", 1); err != nil {
					t.Fatal(err)
				}
				close(resume)
			}
			r := <-done
			valid, revoked := nodeCerts(t, e.ca.Store, e.nodeID)
			if at == noBan {
				if r.err != nil || len(valid) != 1 || len(revoked) != 0 {
					t.Fatalf("attestation: %v; %d valid, %d revoked certificates, want 1 valid", r.err, len(valid), len(revoked))
				}
				return
			}
			if st, _ := status.FromError(r.err); st.Code() != codes.PermissionDenied || !strings.Contains(st.Message(), attestor.ErrBanned.Error()) {
				t.Fatalf("attestation of the banned node: %v, want PermissionDenied naming the ban", r.err)
			}
			if len(valid) != 0 || len(revoked) != 1 {
				t.Fatalf("banned node holds %d valid and %d revoked certificates, want 0 and 1", len(valid), len(revoked))
			}
			if got := revoked[0].Reason; got != 1 {
				t.Errorf("revoked with CRL reason %d, want the ban's 1 (keyCompromise)", got)
			}
			serial := fmt.Sprintf("%x", revoked[0].Serial)
			var audited bool
			for _, rec := range e.aud.Snapshot() {
				if (rec.Kind == "cert.revoked" || rec.Kind == "node.revoked") && strings.Contains(fmt.Sprint(rec.Data), serial) {
					audited = true
				}
			}
			if !audited {
				t.Errorf("revocation of %s not audited", serial)
			}
			if _, ok := e.aud.Last(attestor.AuditAttestAccept); ok {
				t.Error("attestation audited as accepted")
			}
		})
	}
}
