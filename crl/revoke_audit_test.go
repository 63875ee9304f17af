package crl_test

import (
	"context"
	"errors"
	"fmt"
	"math/big"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/palisade-id/palisade/crl"
)

var errAuditDown = errors.New("test audit log: disk full")

// TestRevocationAuditedBeforeCommit: with the audit log failing, a
// revocation fails and revokes nothing; once the log is back, a retry
// revokes and writes exactly one record naming every serial it revoked,
// and a further retry, with nothing left, writes none.
func TestRevocationAuditedBeforeCommit(t *testing.T) {
	tests := []struct {
		name    string
		kind    string // the audit record
		counted bool   // the revocation returns how many it revoked
		// setup mints the certificates and returns those the revocation
		// must revoke, those it must leave alone, and the revocation.
		setup func(t *testing.T, e *env) (want, keep []*big.Int, revoke func(context.Context) (int, error))
	}{
		{
			name: "Revoke",
			kind: "cert.revoked",
			setup: func(t *testing.T, e *env) ([]*big.Int, []*big.Int, func(context.Context) (int, error)) {
				leaf, other := e.mint(t, "n"), e.mint(t, "n")
				return []*big.Int{leaf.SerialNumber}, []*big.Int{other.SerialNumber}, func(ctx context.Context) (int, error) {
					info, err := e.svc.Revoke(ctx, "op", leaf.SerialNumber, crl.ReasonKeyCompromise)
					if err == nil && (!info.Revoked || info.Reason != crl.ReasonKeyCompromise) {
						return 0, fmt.Errorf("Revoke returned %+v", info)
					}
					return 0, err
				}
			},
		},
		{
			name:    "RevokeNode",
			kind:    "node.revoked",
			counted: true,
			setup: func(t *testing.T, e *env) ([]*big.Int, []*big.Int, func(context.Context) (int, error)) {
				a1, a2, b := e.mint(t, "node-a"), e.mint(t, "node-a"), e.mint(t, "node-b")
				// Revoked before: neither revoked again nor listed.
				early := e.mint(t, "node-a")
				if _, err := e.svc.Revoke(context.Background(), "op", early.SerialNumber, crl.ReasonSuperseded); err != nil {
					t.Fatal(err)
				}
				want := []*big.Int{a1.SerialNumber, a2.SerialNumber}
				return want, []*big.Int{b.SerialNumber}, func(ctx context.Context) (int, error) {
					return e.svc.RevokeNode(ctx, "op", "node-a", crl.ReasonKeyCompromise)
				}
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, crl.Config{})
			want, keep, revoke := tc.setup(t, e)
			ctx := context.Background()
			status := func(sn *big.Int) crl.CertInfo {
				t.Helper()
				info, found, err := e.store.Status(sn)
				if err != nil || !found {
					t.Fatalf("status %x: %v %v", sn, found, err)
				}
				return info
			}
			_, seq0 := e.svc.FeedSeq()

			e.audit.fail(errAuditDown)
			if n, err := revoke(ctx); !errors.Is(err, errAuditDown) || n != 0 {
				t.Fatalf("revocation with the audit log down: %d, %v, want 0, %v", n, err, errAuditDown)
			}
			for _, sn := range want {
				if status(sn).Revoked {
					t.Fatalf("%x revoked without an audit record", sn)
				}
			}
			if _, seq := e.svc.FeedSeq(); seq != seq0 {
				t.Fatalf("feed moved from %d to %d without a revocation", seq0, seq)
			}

			e.audit.fail(nil)
			if n, err := revoke(ctx); err != nil || tc.counted && n != len(want) {
				t.Fatalf("retry: %d, %v, want %d revoked", n, err, len(want))
			}
			for _, sn := range want {
				if info := status(sn); !info.Revoked || info.Reason != crl.ReasonKeyCompromise {
					t.Fatalf("%x after the retry: %+v", sn, info)
				}
			}
			for _, sn := range keep {
				if status(sn).Revoked {
					t.Fatalf("%x revoked, not the revocation's", sn)
				}
			}
			recs := e.audit.records(tc.kind)
			if len(recs) != 1 {
				t.Fatalf("%d %s records, want 1: %v", len(recs), tc.kind, recs)
			}
			if got, wantHex := recordSerials(t, recs[0]), hexSerials(want); !slices.Equal(got, wantHex) {
				t.Fatalf("%s record names %v, want %v", tc.kind, got, wantHex)
			}

			if n, err := revoke(ctx); err != nil || n != 0 {
				t.Fatalf("revoking again: %d, %v, want 0 revoked", n, err)
			}
			if n := len(e.audit.records(tc.kind)); n != 1 {
				t.Fatalf("revoking again wrote a record: %d %s records", n, tc.kind)
			}
		})
	}
}

// recordSerials returns the serials a cert.revoked or node.revoked record
// names, sorted.
func recordSerials(t *testing.T, rec map[string]any) []string {
	t.Helper()
	var out []string
	switch v := rec["serials"].(type) {
	case []string:
		if rec["count"] != len(v) {
			t.Fatalf("record count %v for %d serials", rec["count"], len(v))
		}
		out = append(out, v...)
	case nil:
		s, ok := rec["serial"].(string)
		if !ok {
			t.Fatalf("record without serials: %v", rec)
		}
		out = append(out, s)
	default:
		t.Fatalf("record serials of type %T", v)
	}
	slices.Sort(out)
	return out
}

func hexSerials(sns []*big.Int) []string {
	out := make([]string, len(sns))
	for i, sn := range sns {
		out[i] = fmt.Sprintf("%x", sn)
	}
	slices.Sort(out)
	return out
}

// A node with nothing left to revoke gets no record, and neither expired
// nor another node's certificates are listed.
func TestRevokeNodeNothingLeft(t *testing.T) {
	e := newEnv(t, crl.Config{})
	now := time.Now().UTC()
	e.store.Add(crl.CertInfo{Serial: big.NewInt(4242), SPIFFEID: "spiffe://example.org/w/x", NodeID: "node-x",
		IssuerKeyID: e.iss.KeyID, NotBefore: now.Add(-2 * time.Hour), NotAfter: now.Add(-time.Hour)})
	e.mint(t, "node-y")
	for _, node := range []string{"node-x", "node-z"} {
		if n, err := e.svc.RevokeNode(context.Background(), "op", node, crl.ReasonKeyCompromise); n != 0 || err != nil {
			t.Fatalf("RevokeNode(%s): %d %v", node, n, err)
		}
	}
	if kinds := e.audit.revocations(); len(kinds) != 0 {
		t.Fatalf("audit records for nothing revoked: %v", kinds)
	}
}

// Concurrent revocations of one certificate write one record and all
// return it revoked.
func TestConcurrentRevokeAuditsOnce(t *testing.T) {
	e := newEnv(t, crl.Config{})
	leaf := e.mint(t, "n")
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Go(func() {
			info, err := e.svc.Revoke(context.Background(), "op", leaf.SerialNumber, crl.ReasonKeyCompromise)
			if err == nil && !info.Revoked {
				err = fmt.Errorf("returned %+v", info)
			}
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := len(e.audit.records("cert.revoked")); n != 1 {
		t.Fatalf("%d cert.revoked records, want 1", n)
	}
}

// A certificate recorded between RevokeNode's listing and its commit is
// revoked with the rest and named in a second record.
func TestRevokeNodeLateCertificate(t *testing.T) {
	e := newEnv(t, crl.Config{})
	first := e.mint(t, "node-a")
	var late *big.Int
	e.audit.before = func(kind string) {
		if kind == "node.revoked" && late == nil {
			late = e.mint(t, "node-a").SerialNumber
		}
	}
	n, err := e.svc.RevokeNode(context.Background(), "op", "node-a", crl.ReasonKeyCompromise)
	if err != nil || n != 2 {
		t.Fatalf("RevokeNode: %d, %v, want 2 revoked", n, err)
	}
	recs := e.audit.records("node.revoked")
	if len(recs) != 2 {
		t.Fatalf("%d node.revoked records, want 2", len(recs))
	}
	for i, want := range [][]*big.Int{{first.SerialNumber}, {late}} {
		if got := recordSerials(t, recs[i]); !slices.Equal(got, hexSerials(want)) {
			t.Fatalf("record %d names %v, want %v", i, got, hexSerials(want))
		}
	}
	if info, _, _ := e.store.Status(late); !info.Revoked {
		t.Fatal("the late certificate was not revoked")
	}
}
