package agent

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/palisade-id/palisade/test/testca"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// fakeAttester issues node SVIDs from a testca intermediate, counting
// calls; fail makes the next calls fail; otherKey signs for a key the node
// did not send; stall makes calls hang until their ctx ends, like a stream
// whose server went silent, recording the time each was given.
type fakeAttester struct {
	ca  *testca.CA
	ttl time.Duration

	mu       sync.Mutex
	calls    int
	fail     error
	otherKey bool
	stall    bool
	budgets  []time.Duration // of stalled calls; 0 for no deadline
	keys     []crypto.PublicKey
}

func (f *fakeAttester) attest(ctx context.Context, key crypto.Signer) (*Result, error) {
	f.mu.Lock()
	f.calls++
	if f.stall {
		var budget time.Duration
		if d, ok := ctx.Deadline(); ok {
			budget = time.Until(d)
		}
		f.budgets = append(f.budgets, budget)
		f.mu.Unlock()
		<-ctx.Done()
		return nil, fmt.Errorf("fake: %w", ctx.Err())
	}
	defer f.mu.Unlock()
	if f.fail != nil {
		return nil, f.fail
	}
	pub := key.Public()
	if f.otherKey {
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		pub = k.Public()
	}
	f.keys = append(f.keys, pub)
	id := spiffeid.RequireFromString("spiffe://" + f.ca.TrustDomain + "/palisade/node/abc")
	u, _ := url.Parse(id.String())
	now := time.Now()
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: big.NewInt(int64(f.calls)), NotBefore: now.Add(-time.Minute), NotAfter: now.Add(f.ttl),
		URIs: []*url.URL{u}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
	}, f.ca.Intermediate(), pub, f.ca.IssuerSigner())
	if err != nil {
		return nil, err
	}
	leaf, _ := x509.ParseCertificate(der)
	return &Result{ID: id, Chain: []*x509.Certificate{leaf, f.ca.Intermediate()}}, nil
}

func (f *fakeAttester) set(fn func(*fakeAttester)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

func (f *fakeAttester) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

func TestNewSource(t *testing.T) {
	ca := testca.New(t, "example.org")
	refused := errors.New("refused")
	tests := []struct {
		name     string
		ttl      time.Duration
		fail     error
		otherKey bool
		wantErr  error
	}{
		{"attests", time.Hour, nil, false, nil},
		{"refused", time.Hour, refused, false, refused},
		{"SVID for another key", time.Hour, nil, true, ErrProtocol},
		{"already expired", -time.Second, nil, false, ErrProtocol},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeAttester{ca: ca, ttl: tc.ttl, fail: tc.fail, otherKey: tc.otherKey}
			var rotated []*x509svid.SVID
			s, err := NewSource(context.Background(), f.attest, SourceOptions{OnRotate: func(v *x509svid.SVID) { rotated = append(rotated, v) }})
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("NewSource err = %v, want %v", err, tc.wantErr)
			}
			if err != nil {
				if len(rotated) != 0 {
					t.Fatal("OnRotate called for a refused attestation")
				}
				return
			}
			svid, err := s.GetX509SVID()
			if err != nil {
				t.Fatal(err)
			}
			if len(rotated) != 1 || rotated[0] != svid {
				t.Fatalf("OnRotate saw %d SVIDs", len(rotated))
			}
			if !svid.PrivateKey.Public().(*ecdsa.PublicKey).Equal(svid.Certificates[0].PublicKey) {
				t.Fatal("SVID key does not match its certificate")
			}
			if _, _, err := x509svid.Verify(svid.Certificates, bundleOf(ca)); err != nil {
				t.Fatalf("SVID does not verify: %v", err)
			}
			// Half of the remaining hour, give or take the test's runtime.
			if d := time.Until(s.RenewAt()); d < 29*time.Minute || d > 30*time.Minute {
				t.Fatalf("renewal in %v, want about 30m", d)
			}
		})
	}
}

func TestSourceRenewsAtHalfLife(t *testing.T) {
	ca := testca.New(t, "example.org")
	f := &fakeAttester{ca: ca, ttl: 2 * time.Second}
	s, err := NewSource(context.Background(), f.attest, SourceOptions{RetryMin: 20 * time.Millisecond, RetryMax: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	first, _ := s.GetX509SVID()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	waitFor(t, 5*time.Second, func() bool { return f.count() >= 3 })
	cur, err := s.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	if cur.Certificates[0].SerialNumber.Cmp(first.Certificates[0].SerialNumber) == 0 {
		t.Fatal("SVID not replaced")
	}
	f.mu.Lock()
	k0, k1 := f.keys[0].(*ecdsa.PublicKey), f.keys[1].(*ecdsa.PublicKey)
	f.mu.Unlock()
	if k0.Equal(k1) {
		t.Fatal("renewal reused the key")
	}

	// Refusals: retried with backoff, and once the SVID has expired the
	// source fails closed.
	f.set(func(f *fakeAttester) { f.fail = errors.New("banned") })
	before := f.count()
	waitFor(t, 5*time.Second, func() bool {
		_, err := s.GetX509SVID()
		return errors.Is(err, ErrSVIDExpired)
	})
	if f.count() < before+2 {
		t.Fatalf("only %d retries before expiry", f.count()-before)
	}
	// Recovery: the next successful attestation serves again.
	f.set(func(f *fakeAttester) { f.fail = nil; f.ttl = time.Hour })
	waitFor(t, 2*time.Second, func() bool { _, err := s.GetX509SVID(); return err == nil })
}

func TestSourceRenewNow(t *testing.T) {
	ca := testca.New(t, "example.org")
	f := &fakeAttester{ca: ca, ttl: time.Hour}
	s, err := NewSource(context.Background(), f.attest, SourceOptions{})
	if err != nil {
		t.Fatal(err)
	}
	first, _ := s.GetX509SVID()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	time.Sleep(50 * time.Millisecond)
	if f.count() != 1 {
		t.Fatalf("attested %d times before half-life of a 1h SVID", f.count())
	}
	s.RenewNow()
	waitFor(t, 2*time.Second, func() bool { return f.count() == 2 })
	cur, _ := s.GetX509SVID()
	if cur.Certificates[0].SerialNumber.Cmp(first.Certificates[0].SerialNumber) == 0 {
		t.Fatal("SVID not replaced")
	}
	if !s.RenewAt().After(time.Now().Add(20 * time.Minute)) {
		t.Fatalf("next renewal %v: want half-life of the new SVID", s.RenewAt())
	}
}

func TestAttemptTimeout(t *testing.T) {
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name     string
		min, max time.Duration
		left     time.Duration // SVID's remaining life; 0 for no SVID yet
		want     time.Duration
	}{
		{"first attestation", 0, 0, 0, 2 * time.Minute},
		{"long life: capped", 0, 0, time.Hour, 2 * time.Minute},
		{"quarter of what is left", 0, 0, 4 * time.Minute, time.Minute},
		{"near expiry: floor", 0, 0, 20 * time.Second, 10 * time.Second},
		{"expired: no expiry to race", 0, 0, -time.Minute, 2 * time.Minute},
		{"options", time.Second, 5 * time.Second, 12 * time.Second, 3 * time.Second},
		{"max below default min", 0, 200 * time.Millisecond, 100 * time.Millisecond, 200 * time.Millisecond},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := &Source{o: SourceOptions{AttemptMin: tc.min, AttemptMax: tc.max, Now: func() time.Time { return now }}.withDefaults()}
			if tc.left != 0 {
				s.svid = &x509svid.SVID{Certificates: []*x509.Certificate{{NotAfter: now.Add(tc.left)}}}
			}
			if got := s.attemptTimeout(); got != tc.want {
				t.Fatalf("attemptTimeout() = %v, want %v", got, tc.want)
			}
		})
	}
}

// A server that goes silent mid-stream must cost one bounded attempt, not
// the SVID: the attempt is abandoned and retried, and RenewNow is not stuck
// behind it.
func TestSourceStalledAttestation(t *testing.T) {
	ca := testca.New(t, "example.org")
	opts := SourceOptions{RetryMin: 10 * time.Millisecond, RetryMax: 20 * time.Millisecond,
		AttemptMin: 50 * time.Millisecond, AttemptMax: 200 * time.Millisecond}
	// Cancelled at cleanup so that, should the bound be missing, stalled
	// calls end and the test fails rather than hangs.
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)

	t.Run("first attestation", func(t *testing.T) {
		f := &fakeAttester{ca: ca, ttl: time.Hour, stall: true}
		errc := make(chan error, 1)
		go func() { _, err := NewSource(ctx, f.attest, opts); errc <- err }()
		select {
		case err := <-errc:
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("NewSource err = %v, want deadline exceeded", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("NewSource still waiting on a silent server")
		}
	})

	t.Run("renewal", func(t *testing.T) {
		f := &fakeAttester{ca: ca, ttl: time.Hour}
		s, err := NewSource(ctx, f.attest, opts)
		if err != nil {
			t.Fatal(err)
		}
		first, _ := s.GetX509SVID()
		runCtx, stop := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { s.Run(runCtx); close(done) }()
		defer func() { stop(); <-done }()

		f.set(func(f *fakeAttester) { f.stall = true })
		s.RenewNow()
		waitFor(t, 5*time.Second, func() bool { return f.count() >= 4 })
		f.mu.Lock()
		budgets := append([]time.Duration(nil), f.budgets...)
		f.mu.Unlock()
		for i, b := range budgets {
			if b <= 0 || b > opts.AttemptMax {
				t.Fatalf("stalled attempt %d had %v, want a deadline within %v", i, b, opts.AttemptMax)
			}
		}
		f.set(func(f *fakeAttester) { f.stall = false })
		waitFor(t, 5*time.Second, func() bool {
			cur, err := s.GetX509SVID()
			return err == nil && cur.Certificates[0].SerialNumber.Cmp(first.Certificates[0].SerialNumber) != 0
		})
	})
}

func waitFor(t *testing.T, d time.Duration, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(d); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v", d)
		}
	}
}

func bundleOf(ca *testca.CA) *x509bundle.Bundle {
	return x509bundle.FromX509Authorities(spiffeid.RequireTrustDomainFromString(ca.TrustDomain), []*x509.Certificate{ca.Root()})
}
