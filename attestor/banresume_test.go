package attestor_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/palisade-id/palisade/attestor"
	attcawire "github.com/palisade-id/palisade/attestor/cawire"
	"github.com/palisade-id/palisade/crl"
	"github.com/palisade-id/palisade/test/attestor/attestortest"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// revokeCall is one RevokeNode call and its result.
type revokeCall struct {
	node string
	n    int
	err  error
}

// watchedRevoker reports every RevokeNode call once it has returned.
type watchedRevoker struct {
	attestor.Revoker
	calls chan revokeCall
}

func (w watchedRevoker) RevokeNode(ctx context.Context, nodeID string, reason int) (int, error) {
	n, err := w.Revoker.RevokeNode(ctx, nodeID, reason)
	w.calls <- revokeCall{nodeID, n, err}
	return n, err
}

// nextCall returns the next RevokeNode call, failing after a while.
func (w watchedRevoker) nextCall(t *testing.T) revokeCall {
	t.Helper()
	select {
	case c := <-w.calls:
		return c
	case <-time.After(10 * time.Second):
		t.Fatal("no RevokeNode call")
		return revokeCall{}
	}
}

// TestRunCompletesInterruptedBan: a node banned in the attestor store
// whose certificate is still valid (the server died between the ban's
// flag and its revocation) has it revoked, with the ban's CRL reason, once
// the service runs; a restart then revokes and records nothing more.
func TestRunCompletesInterruptedBan(t *testing.T) {
	errAuditDown := errors.New("audit log down")
	tests := []struct {
		name       string
		banReason  int // BanCRLReason as stored
		wantReason int // on the revocation
		auditDown  bool
	}{
		{name: "keyCompromise", banReason: crl.ReasonKeyCompromise, wantReason: crl.ReasonKeyCompromise},
		{name: "privilegeWithdrawn", banReason: crl.ReasonPrivilegeWithdrawn, wantReason: crl.ReasonPrivilegeWithdrawn},
		{name: "stored reason unusable", banReason: crl.ReasonCertificateHold, wantReason: crl.ReasonUnspecified},
		{name: "audit log down at start, retried", banReason: crl.ReasonKeyCompromise, wantReason: crl.ReasonKeyCompromise, auditDown: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			aud := &attestortest.Auditor{}
			caf, svc, db := realDeps(t, aud)
			iss := attcawire.NodeIssuer{CA: caf.CA}

			// Two nodes hold an SVID; the first is banned, its revocation
			// never ran.
			var ids [2]string
			for i := range ids {
				tpm := attestortest.SoftTPM{Node: softNode(t, i)}
				ids[i] = "spiffe://" + td + "/palisade/node/" + ekHash(t, tpm.Node)
				if _, err := iss.IssueNodeSVID(ctx, spiffeid.RequireFromString(ids[i]), attestortest.CSR(t, td, tpm)); err != nil {
					t.Fatal(err)
				}
				err := db.UpdateNode(ctx, ids[i], func(rec *attestor.NodeRecord, _ bool) error {
					rec.ID, rec.EKHash = ids[i], ekHash(t, tpm.Node)
					if i == 0 {
						rec.Banned, rec.BannedAt, rec.BannedBy, rec.BanReason, rec.BanCRLReason = true, time.Now(), "op", "stolen", tc.banReason
					}
					return nil
				})
				if err != nil {
					t.Fatal(err)
				}
			}
			banned, bystander := ids[0], ids[1]

			rev := watchedRevoker{attcawire.Revoker{Svc: svc}, make(chan revokeCall, 8)}
			start := func() {
				t.Helper()
				s, err := attestor.New(ctx, spiffeid.RequireTrustDomainFromString(td), attestor.Config{},
					attestor.Deps{Store: db, Issuer: iss, Auditor: aud, Revoker: rev})
				if err != nil {
					t.Fatal(err)
				}
				attestor.SetSummaryTick(s, 20*time.Millisecond)
				runCtx, cancel := context.WithCancel(ctx)
				done := make(chan struct{})
				go func() { s.Run(runCtx); close(done) }()
				t.Cleanup(func() { cancel(); <-done })
			}

			if tc.auditDown {
				aud.Fail(errAuditDown)
			}
			start()
			if tc.auditDown {
				if c := rev.nextCall(t); c.node != banned || !errors.Is(c.err, errAuditDown) {
					t.Fatalf("first call %+v, want %s failing with the audit log", c, banned)
				}
				if valid, _ := nodeCerts(t, caf.Store, banned); len(valid) != 1 {
					t.Fatalf("%d valid certificates with the audit log down, want 1", len(valid))
				}
				aud.Fail(nil)
			}
			c := rev.nextCall(t)
			for tc.auditDown && errors.Is(c.err, errAuditDown) { // retries before the log came back
				c = rev.nextCall(t)
			}
			if c.node != banned || c.n != 1 || c.err != nil {
				t.Fatalf("RevokeNode call %+v, want %s revoking 1", c, banned)
			}
			valid, revoked := nodeCerts(t, caf.Store, banned)
			if len(valid) != 0 || len(revoked) != 1 {
				t.Fatalf("banned node holds %d valid and %d revoked certificates, want 0 and 1", len(valid), len(revoked))
			}
			if got := revoked[0].Reason; got != tc.wantReason {
				t.Errorf("revoked with CRL reason %d, want %d", got, tc.wantReason)
			}
			if valid, _ := nodeCerts(t, caf.Store, bystander); len(valid) != 1 {
				t.Fatalf("node not banned holds %d valid certificates, want 1", len(valid))
			}
			recs := aud.OfKind("node.revoked")
			if len(recs) != 1 || !strings.Contains(fmt.Sprint(recs[0].Data), fmt.Sprintf("%x", revoked[0].Serial)) {
				t.Fatalf("node.revoked records %+v, want one naming %x", recs, revoked[0].Serial)
			}

			// A restart finds nothing left: no revocation, no record.
			start()
			if c := rev.nextCall(t); c.node != banned || c.n != 0 || c.err != nil {
				t.Fatalf("RevokeNode call after restart %+v, want %s revoking 0", c, banned)
			}
			if n := aud.Count("node.revoked"); n != 1 {
				t.Fatalf("%d node.revoked records after restart, want 1", n)
			}
		})
	}
}

// unbanAfterList is a store whose node list is read just before an
// operator lifts a ban (and the node may attest again).
type unbanAfterList struct {
	attestor.Store
	unban func()
}

func (u unbanAfterList) Nodes(ctx context.Context) ([]attestor.NodeRecord, error) {
	recs, err := u.Store.Nodes(ctx)
	u.unban()
	return recs, err
}

// A ban lifted after the list was read is not completed: the node's
// SVIDs, perhaps issued since, are legitimate.
func TestFinishBansSkipsLiftedBan(t *testing.T) {
	ctx := context.Background()
	aud := &attestortest.Auditor{}
	caf, svc, db := realDeps(t, aud)
	tpm := attestortest.SoftTPM{Node: softNode(t, 0)}
	id := "spiffe://" + td + "/palisade/node/" + ekHash(t, tpm.Node)
	if _, err := (attcawire.NodeIssuer{CA: caf.CA}).IssueNodeSVID(ctx, spiffeid.RequireFromString(id), attestortest.CSR(t, td, tpm)); err != nil {
		t.Fatal(err)
	}
	setBan := func(banned bool) {
		err := db.UpdateNode(ctx, id, func(rec *attestor.NodeRecord, _ bool) error {
			rec.ID, rec.EKHash, rec.Banned = id, ekHash(t, tpm.Node), banned
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	setBan(true)
	rev := watchedRevoker{attcawire.Revoker{Svc: svc}, make(chan revokeCall, 8)}
	s, err := attestor.New(ctx, spiffeid.RequireTrustDomainFromString(td), attestor.Config{},
		attestor.Deps{Store: unbanAfterList{db, func() { setBan(false) }}, Issuer: attcawire.NodeIssuer{CA: caf.CA}, Auditor: aud, Revoker: rev})
	if err != nil {
		t.Fatal(err)
	}
	if !attestor.FinishBans(s, ctx) {
		t.Fatal("FinishBans reported a failure")
	}
	select {
	case c := <-rev.calls:
		t.Fatalf("revoked for a lifted ban: %+v", c)
	default:
	}
	if valid, _ := nodeCerts(t, caf.Store, id); len(valid) != 1 {
		t.Fatalf("%d valid certificates after a lifted ban, want 1", len(valid))
	}
}
