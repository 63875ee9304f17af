package attestor

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/palisade-id/palisade/attestor/attestorpb"
	"github.com/palisade-id/palisade/attestor/verify"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Deps are the collaborators of a Service. Store, Issuer and Auditor are
// required; Revoker may be nil (bans then revoke nothing).
type Deps struct {
	Store   Store
	Issuer  NodeIssuer
	Auditor Auditor
	Revoker Revoker
	Logger  *slog.Logger
	// Now and Rand default to time.Now and crypto/rand.
	Now  func() time.Time
	Rand io.Reader
}

// Service runs node attestation and the operator actions on its state.
type Service struct {
	attestorpb.UnimplementedAttestorServer

	td   spiffeid.TrustDomain
	cfg  Config
	deps Deps
	log  *slog.Logger

	nonces   *nonces
	sessions atomic.Uint64
	slots    chan struct{} // one per concurrent Attest stream

	refusals      Refusals
	refusalLogged atomic.Int64    // unix nanoseconds of the last aggregated warning
	auditBudget   *auditBudget    // refusals before the peer proved its TPM
	openMu        sync.Mutex      // guards open
	open          map[string]bool // EK hashes with a session past its hello
	summaryTick   time.Duration

	mu       sync.Mutex // serialises admin mutations and cache reloads
	manifest atomic.Pointer[manifestIndex]
	policy   atomic.Pointer[verify.Policy]

	ekCache parseCache[*verify.EK]

	// newSecret and newNonce are replaced in benchmarks so that node-side
	// work (decryption, quoting) can be precomputed.
	newSecret, newNonce func() ([]byte, error)
}

// New returns a Service for trust domain td and loads the manifest and PCR
// policy from the store.
func New(ctx context.Context, td spiffeid.TrustDomain, cfg Config, d Deps) (*Service, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if td.IsZero() {
		return nil, fmt.Errorf("%w: empty trust domain", ErrInvalidArgument)
	}
	if d.Store == nil || d.Issuer == nil || d.Auditor == nil {
		return nil, fmt.Errorf("%w: Store, Issuer and Auditor are required", ErrInvalidArgument)
	}
	if d.Now == nil {
		d.Now = time.Now
	}
	if d.Rand == nil {
		d.Rand = rand.Reader
	}
	if d.Logger == nil {
		d.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Service{td: td, cfg: cfg, deps: d, log: d.Logger, nonces: newNonces(cfg.NonceTTL, cfg.MaxPendingNonces),
		slots: make(chan struct{}, cfg.MaxSessions), auditBudget: newAuditBudget(cfg.UnknownEKAuditPerMinute),
		open: map[string]bool{}, summaryTick: defaultSummaryTick}
	s.newSecret = func() ([]byte, error) {
		b := make([]byte, 32)
		_, err := io.ReadFull(s.deps.Rand, b)
		return b, err
	}
	s.newNonce = func() ([]byte, error) {
		b := make([]byte, verify.NonceSize)
		_, err := io.ReadFull(s.deps.Rand, b)
		return b, err
	}
	if err := s.reload(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

// reload refreshes the cached manifest and policy from the store.
func (s *Service) reload(ctx context.Context) error { return s.reloadWith(ctx, nil) }

// reloadWith is reload, except that a non-nil p is taken as the policy just
// stored (parsed from the stored bytes) instead of reading and parsing the
// stored policy again.
func (s *Service) reloadWith(ctx context.Context, p *verify.Policy) error {
	entries, err := s.deps.Store.ManifestEntries(ctx)
	if err != nil {
		return fmt.Errorf("attestor: load manifest: %w", err)
	}
	ix, err := buildIndex(entries)
	if err != nil {
		return err
	}
	if p == nil {
		raw, err := s.deps.Store.Policy(ctx)
		if err != nil {
			return fmt.Errorf("attestor: load PCR policy: %w", err)
		}
		if raw != nil {
			if p, err = verify.ParsePolicy(raw); err != nil {
				return fmt.Errorf("attestor: stored PCR policy: %w", err)
			}
		}
	}
	s.manifest.Store(ix)
	s.policy.Store(p)
	return nil
}

// audit appends a record; a failing audit log fails the operation, since
// an unaudited decision must not take effect.
func (s *Service) audit(ctx context.Context, kind, actor string, data any) error {
	if err := s.deps.Auditor.Append(ctx, kind, actor, data); err != nil {
		s.log.Error("audit append failed", "kind", kind, "actor", actor, "err", err)
		return fmt.Errorf("attestor: audit: %w", err)
	}
	return nil
}

// isRefusal reports whether err is a decision about the node rather than an
// internal failure.
func isRefusal(err error) bool {
	for _, e := range []error{ErrBadMessage, ErrNotInManifest, ErrBanned, ErrNoPolicy, ErrActivation,
		ErrNonceUnknown, ErrNonceReplayed, ErrNonceStale, ErrNonceSession,
		verify.ErrMalformed, verify.ErrTooLarge, verify.ErrEKAttributes, verify.ErrEKAlgorithm,
		verify.ErrEKCert, verify.ErrEKCertMismatch, verify.ErrAKAttributes, verify.ErrAKAlgorithm,
		verify.ErrQuoteSignature, verify.ErrQuoteType, verify.ErrQuoteNonce, verify.ErrQuoteSelection,
		verify.ErrPCRDigest, verify.ErrPCRMismatch, verify.ErrEventLog, verify.ErrUnknownClass, verify.ErrPolicy} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// parseCache memoises a pure parse of untrusted bytes: nodes renew with the
// same EK bytes every time. Bounded; cleared wholesale when full.
type parseCache[T any] struct {
	mu       sync.Mutex
	m        map[[32]byte]T
	disabled bool // benchmarks of first-contact attestations
}

const parseCacheSize = 4096

func (c *parseCache[T]) get(raw []byte, parse func([]byte) (T, error)) (T, error) {
	if c.disabled {
		return parse(raw)
	}
	k := sha256.Sum256(raw)
	c.mu.Lock()
	v, ok := c.m[k]
	c.mu.Unlock()
	if ok {
		return v, nil
	}
	v, err := parse(raw)
	if err != nil {
		return v, err
	}
	c.mu.Lock()
	if c.m == nil || len(c.m) >= parseCacheSize {
		c.m = make(map[[32]byte]T)
	}
	c.m[k] = v
	c.mu.Unlock()
	return v, nil
}
