package nodeapi

import (
	"context"
	"errors"
	"math/big"
	"sync/atomic"
	"testing"
	"time"

	"github.com/palisade-id/palisade/ca/nodeapi/nodev1"
	"github.com/palisade-id/palisade/ca/store"
	"github.com/palisade-id/palisade/crl"
	"github.com/palisade-id/palisade/crl/castore"
	"github.com/palisade-id/palisade/crl/cawire"
	"github.com/palisade-id/palisade/test/memca"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestBanRacesIssuance bans a node while an SVID request from it (or from
// one of its workloads) is past the Gate, with the real CA, store and
// revocation service: the node must end with no valid certificate (its own
// or one issued through it) and the request refused, wherever the ban
// lands.
func TestBanRacesIssuance(t *testing.T) {
	tests := []struct {
		name string
		// pauseAt is the Gate call that waits for the ban: 1 after the
		// check before issuance, 2 before the check after the record.
		pauseAt int64
		// workload: the caller is the node's workload, asking for its child.
		workload bool
	}{
		{name: "ban between the check and the issuance", pauseAt: 1},
		{name: "ban between the record and the re-check", pauseAt: 2},
		{name: "no ban"},
		{name: "workload caller, ban between the check and the issuance", pauseAt: 1, workload: true},
		{name: "workload caller, ban between the record and the re-check", pauseAt: 2, workload: true},
		{name: "workload caller, no ban", workload: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			f := memca.New(t, "example.org", memca.Discard{}, nil)
			c, st := f.CA, f.Store
			rev, err := crl.New(crl.Config{DataDir: t.TempDir()}, crl.Options{
				Store: castore.New(st), Audit: memca.Discard{}, Keys: f.Keys, Issuers: cawire.Issuers(c)})
			if err != nil {
				t.Fatal(err)
			}
			nodeID := spiffeid.RequireFromPath(c.TrustDomain(), NodePathPrefix+"n1")
			webID := spiffeid.RequireFromString("spiffe://example.org/web")
			for _, e := range [][2]string{{webID.String(), nodeID.String()}, {"spiffe://example.org/web/child", webID.String()}} {
				if _, err := st.CreateEntry(store.Entry{SPIFFEID: e[0], ParentID: e[1],
					Selectors: []store.Selector{{Type: "unix", Value: "uid:1000"}}, X509TTL: 10 * time.Minute}); err != nil {
					t.Fatal(err)
				}
			}

			// The ban as the attestor does it: flag, then revoke what the
			// store holds for the node.
			var banned atomic.Bool
			ban := func() {
				banned.Store(true)
				if _, err := rev.RevokeNode(ctx, "operator", nodeID.String(), 1); err != nil {
					t.Error(err)
				}
			}
			var calls atomic.Int64
			paused, resume := make(chan struct{}), make(chan struct{})
			gate := func(_ context.Context, node spiffeid.ID) error {
				n := calls.Add(1)
				if n == tt.pauseAt && n == 2 {
					close(paused)
					<-resume
				}
				refused := banned.Load()
				if n == tt.pauseAt && n == 1 {
					close(paused)
					<-resume
				}
				if refused && node == nodeID {
					return errors.New("node banned")
				}
				return nil
			}

			addr := serve(t, Options{CA: c, Entries: st, Certs: st, Gate: gate,
				Revoke: func(ctx context.Context, _ spiffeid.ID, serial *big.Int) error {
					_, err := rev.Revoke(ctx, "nodeapi", serial, 1)
					return err
				}})
			caller, err := IssueLocal(ctx, c, nodeID, store.KindNodeSVID, "test")
			if err != nil {
				t.Fatal(err)
			}
			req := &nodev1.SignX509SVIDRequest{Csr: csr(t, webID.String())}
			want := 2 // the node's SVID and the one issued
			if tt.workload {
				caller = issueUnder(t, c, webID, nodeID)
				req.Csr = csr(t, "spiffe://example.org/web/child")
				want = 3
			}
			client := dial(t, addr, c, caller)

			done := make(chan error, 1)
			go func() {
				_, err := client.SignX509SVID(ctx, req)
				done <- err
			}()
			if tt.pauseAt != 0 {
				select {
				case <-paused:
				case err := <-done:
					t.Fatalf("request ended before the pause: %v", err)
				case <-time.After(10 * time.Second):
					t.Fatal("request never reached the Gate")
				}
				ban()
				close(resume)
			}
			err = <-done

			// Every SVID but the server's own came from the node.
			var valid, revoked int
			if err := st.ForEachCert(func(r store.CertRecord) error {
				if r.Kind == store.KindServerSVID || store.IsCAKind(r.Kind) {
					return nil
				}
				if r.Status == store.CertRevoked {
					revoked++
				} else {
					valid++
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			if tt.pauseAt == 0 {
				if err != nil || valid != want || revoked != 0 {
					t.Fatalf("request: %v; %d valid, %d revoked, want %d valid", err, valid, revoked, want)
				}
				return
			}
			if status.Code(err) != codes.PermissionDenied {
				t.Fatalf("request from the banned node: %v, want PermissionDenied", err)
			}
			if valid != 0 || revoked != want {
				t.Fatalf("banned node: %d valid, %d revoked certificates, want 0 and %d", valid, revoked, want)
			}
		})
	}
}
