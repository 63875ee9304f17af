package agent

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// ErrSVIDExpired is returned by Source.GetX509SVID once the node SVID has
// expired without a successful renewal: callers fail closed.
var ErrSVIDExpired = errors.New("agent: node SVID expired")

// AttestFunc obtains a node SVID for key; Config.AttestOnce is one.
type AttestFunc func(ctx context.Context, key crypto.Signer) (*Result, error)

// SourceOptions tune a Source. Zero values take defaults.
type SourceOptions struct {
	Logger *slog.Logger
	// OnRotate is called with each new SVID (the first one included),
	// e.g. to publish the certificate for operators. It must not block.
	OnRotate func(*x509svid.SVID)
	// RetryMin and RetryMax bound the backoff after a failed renewal
	// (defaults 1s and 30s).
	RetryMin, RetryMax time.Duration
	// AttemptMin and AttemptMax bound how long one attestation may take
	// (defaults 10s and 2m). Within them an attempt gets a quarter of the
	// SVID's remaining life, so a stalled stream (appliance rebooted,
	// network partitioned) is abandoned and retried well before expiry.
	AttemptMin, AttemptMax time.Duration
	// Now defaults to time.Now.
	Now func() time.Time
}

// Source is an x509svid.Source holding the node SVID. Each renewal is a
// fresh attestation (new quote) for a fresh key, at half of the remaining
// lifetime; keys exist only in memory.
type Source struct {
	attest AttestFunc
	o      SourceOptions
	now    chan struct{} // RenewNow's request to Run

	mu      sync.RWMutex
	svid    *x509svid.SVID
	renewAt time.Time
}

// NewSource attests once and returns the Source holding the result.
func NewSource(ctx context.Context, attest AttestFunc, o SourceOptions) (*Source, error) {
	s := &Source{attest: attest, o: o.withDefaults(), now: make(chan struct{}, 1)}
	if err := s.Renew(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

func (o SourceOptions) withDefaults() SourceOptions {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.RetryMin <= 0 {
		o.RetryMin = time.Second
	}
	if o.RetryMax < o.RetryMin {
		o.RetryMax = max(30*time.Second, o.RetryMin)
	}
	if o.AttemptMax <= 0 {
		o.AttemptMax = 2 * time.Minute
	}
	if o.AttemptMin <= 0 {
		o.AttemptMin = 10 * time.Second
	}
	o.AttemptMin = min(o.AttemptMin, o.AttemptMax)
	if o.Now == nil {
		o.Now = time.Now
	}
	return o
}

// GetX509SVID implements x509svid.Source.
func (s *Source) GetX509SVID() (*x509svid.SVID, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if !s.o.Now().Before(s.svid.Certificates[0].NotAfter) {
		return nil, fmt.Errorf("%w at %s", ErrSVIDExpired, s.svid.Certificates[0].NotAfter.Format(time.RFC3339))
	}
	return s.svid, nil
}

// RenewAt is when Run will next attest.
func (s *Source) RenewAt() time.Time {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.renewAt
}

// attemptTimeout bounds the next attestation: a quarter of the current
// SVID's remaining life within [AttemptMin, AttemptMax]. Without a valid
// SVID there is no expiry to race, so a slow appliance gets AttemptMax.
func (s *Source) attemptTimeout() time.Duration {
	s.mu.RLock()
	svid := s.svid
	s.mu.RUnlock()
	if svid == nil {
		return s.o.AttemptMax
	}
	left := svid.Certificates[0].NotAfter.Sub(s.o.Now())
	if left <= 0 {
		return s.o.AttemptMax
	}
	return min(max(left/4, s.o.AttemptMin), s.o.AttemptMax)
}

// Renew attests now and, on success, replaces the SVID. The attempt is
// bounded (see SourceOptions.AttemptMax) even if ctx has no deadline: the
// stream's only other liveness check would be TCP keepalive, hours away.
func (s *Source) Renew(ctx context.Context) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("agent: node key: %w", err)
	}
	timeout := s.attemptTimeout()
	actx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	res, err := s.attest(actx, key)
	if err != nil {
		if ctx.Err() == nil && actx.Err() != nil {
			return fmt.Errorf("agent: attestation abandoned after %v: %w", timeout, err)
		}
		return err
	}
	leaf := res.Chain[0]
	pub, ok := leaf.PublicKey.(*ecdsa.PublicKey)
	if !ok || !pub.Equal(&key.PublicKey) {
		return fmt.Errorf("%w: SVID is not for the key the node sent", ErrProtocol)
	}
	svid := &x509svid.SVID{ID: res.ID, Certificates: res.Chain, PrivateKey: key}
	now := s.o.Now()
	if !now.Before(leaf.NotAfter) {
		return fmt.Errorf("%w: SVID already expired at %s", ErrProtocol, leaf.NotAfter.Format(time.RFC3339))
	}
	// Half of what is left, measured from receipt: immune to a backdated
	// NotBefore and to clock skew with the appliance.
	renewAt := now.Add(leaf.NotAfter.Sub(now) / 2)
	s.mu.Lock()
	s.svid, s.renewAt = svid, renewAt
	s.mu.Unlock()
	s.o.Logger.Info("node SVID", "spiffe_id", res.ID.String(), "serial", leaf.SerialNumber.Text(16),
		"not_after", leaf.NotAfter, "renew_at", renewAt)
	if s.o.OnRotate != nil {
		s.o.OnRotate(svid)
	}
	return nil
}

// RenewNow makes Run attest at once instead of at half-life: the agent
// calls it when it learns that its own node SVID was revoked.
func (s *Source) RenewNow() {
	select {
	case s.now <- struct{}{}:
	default:
	}
}

// Run renews the SVID at half-life until ctx ends, retrying failures with
// backoff. Once the SVID has expired GetX509SVID returns ErrSVIDExpired
// until an attestation succeeds again.
func (s *Source) Run(ctx context.Context) {
	backoff := s.o.RetryMin
	next := s.RenewAt()
	for {
		t := time.NewTimer(max(next.Sub(s.o.Now()), 0))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		case <-s.now:
			t.Stop()
		}
		if err := s.Renew(ctx); err != nil {
			if ctx.Err() != nil {
				return
			}
			s.mu.RLock()
			notAfter := s.svid.Certificates[0].NotAfter
			s.mu.RUnlock()
			s.o.Logger.Error("node SVID renewal failed", "err", err, "retry_in", backoff, "not_after", notAfter)
			next = s.o.Now().Add(backoff)
			backoff = min(backoff*2, s.o.RetryMax)
			continue
		}
		backoff = s.o.RetryMin
		next = s.RenewAt()
	}
}
