package attestor

import (
	"context"
	"errors"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/palisade-id/palisade/attestor/verify"
)

// Anyone on the network can mint EKs that are not in the manifest, and each
// individually audited refusal is an fsynced record: those refusals are
// audited within a budget (Config.UnknownEKAuditPerMinute) and, beyond it,
// summarised in at most one AuditAttestRefuseSuppressed record a minute.

const (
	// summaryInterval spaces the summaries of unaudited refusals.
	summaryInterval = time.Minute
	// defaultSummaryTick is how often Run looks for a summary that is due.
	defaultSummaryTick = 5 * time.Second
	// summarySample bounds each sample list of a summary.
	summarySample = 8
)

// Reasons for refusing an EK not in the manifest (metric labels and keys
// of a summary's reasons).
const (
	reasonNoEntry       = "no_entry"       // no entry for the EK, no manifest CA to chain to
	reasonCertUntrusted = "cert_untrusted" // EK certificate chains to no manifest CA or fails the TCG EK profile
	reasonCertMalformed = "cert_malformed" // EK certificate or intermediates unreadable
	reasonCertMismatch  = "cert_mismatch"  // EK certificate names another key
)

// unknownEKReason classifies a refusal made before the EK was matched to
// the manifest (session.hello up to admit).
func unknownEKReason(err error) string {
	switch {
	case errors.Is(err, verify.ErrEKCertMismatch):
		return reasonCertMismatch
	case errors.Is(err, ErrNotInManifest) && errors.Is(err, verify.ErrEKCert):
		return reasonCertUntrusted
	case errors.Is(err, ErrNotInManifest):
		return reasonNoEntry
	default:
		return reasonCertMalformed
	}
}

// UnknownEKRefusals counts refusals of EKs not in the manifest, by reason.
// Unaudited counts those over the audit budget, which only a summary
// record covers.
type UnknownEKRefusals struct {
	NoEntry       atomic.Uint64
	CertUntrusted atomic.Uint64
	CertMalformed atomic.Uint64
	CertMismatch  atomic.Uint64
	Unaudited     atomic.Uint64
}

// ByReason returns the per-reason counters keyed by metric label.
func (u *UnknownEKRefusals) ByReason() map[string]*atomic.Uint64 {
	return map[string]*atomic.Uint64{reasonNoEntry: &u.NoEntry, reasonCertUntrusted: &u.CertUntrusted,
		reasonCertMalformed: &u.CertMalformed, reasonCertMismatch: &u.CertMismatch}
}

// refusalSummary is the payload of an AuditAttestRefuseSuppressed record.
type refusalSummary struct {
	Count    uint64            `json:"count"`
	Reasons  map[string]uint64 `json:"reasons"`
	First    time.Time         `json:"first"`
	Last     time.Time         `json:"last"`
	EKHashes []string          `json:"ek_hashes_sample"` // first distinct ones seen
	Peers    []string          `json:"peers_sample"`     // hosts, first distinct ones seen

	start time.Time // when the summary falls due, less summaryInterval
}

func (r *refusalSummary) add(at time.Time, reason, ekHash, peer string) {
	if r.Count == 0 {
		r.First, r.start = at, at
	}
	r.Count++
	if r.Reasons == nil {
		r.Reasons = map[string]uint64{}
	}
	r.Reasons[reason]++
	r.Last = at
	r.EKHashes = sample(r.EKHashes, ekHash)
	if host, _, err := net.SplitHostPort(peer); err == nil {
		peer = host
	}
	r.Peers = sample(r.Peers, peer)
}

// merge folds o (a summary that could not be written) back into r, due
// again one interval after now.
func (r *refusalSummary) merge(o refusalSummary, now time.Time) {
	if r.Count == 0 || o.First.Before(r.First) {
		r.First = o.First
	}
	if o.Last.After(r.Last) {
		r.Last = o.Last
	}
	r.Count += o.Count
	if r.Reasons == nil {
		r.Reasons = map[string]uint64{}
	}
	for k, v := range o.Reasons {
		r.Reasons[k] += v
	}
	for _, h := range o.EKHashes {
		r.EKHashes = sample(r.EKHashes, h)
	}
	for _, p := range o.Peers {
		r.Peers = sample(r.Peers, p)
	}
	r.start = now
}

func sample(s []string, v string) []string {
	if v == "" || len(s) >= summarySample || slices.Contains(s, v) {
		return s
	}
	return append(s, v)
}

// auditBudget is a token bucket of audit records for refusals of unknown
// EKs, with the pending summary of those over it.
type auditBudget struct {
	mu       sync.Mutex
	perMin   float64 // refill rate and burst
	tokens   float64
	refilled time.Time
	pending  refusalSummary
}

func newAuditBudget(perMinute int) *auditBudget {
	return &auditBudget{perMin: float64(perMinute), tokens: float64(perMinute)}
}

// allow takes a token if there is one; otherwise it adds the refusal to
// the pending summary.
func (b *auditBudget) allow(now time.Time, reason, ekHash, peer string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if el := now.Sub(b.refilled); !b.refilled.IsZero() && el > 0 {
		b.tokens = min(b.perMin, b.tokens+el.Minutes()*b.perMin)
	}
	b.refilled = now
	if b.tokens >= 1 {
		b.tokens--
		return true
	}
	b.pending.add(now, reason, ekHash, peer)
	return false
}

// take removes the pending summary if it is due (or force and not empty).
func (b *auditBudget) take(now time.Time, force bool) (refusalSummary, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	p := b.pending
	if p.Count == 0 || !force && now.Sub(p.start) < summaryInterval {
		return refusalSummary{}, false
	}
	b.pending = refusalSummary{}
	return p, true
}

func (b *auditBudget) restore(p refusalSummary, now time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.pending.merge(p, now)
}

// summarise audits the pending summary of unaudited refusals if it is due,
// or now if force. A summary that cannot be audited is kept and retried
// one interval later.
func (s *Service) summarise(ctx context.Context, force bool) error {
	now := s.deps.Now()
	p, ok := s.unknownEKs.take(now, force)
	if !ok {
		return nil
	}
	if err := s.audit(ctx, AuditAttestRefuseSuppressed, "attestor", p); err != nil {
		s.unknownEKs.restore(p, now)
		return err
	}
	s.log.Warn("refusals of EKs not in the manifest over the audit budget (summary audited)",
		"count", p.Count, "reasons", p.Reasons, "first", p.First, "last", p.Last, "peers", p.Peers)
	return nil
}

// Run first completes the revocations of banned nodes that a crash may
// have interrupted (retried each tick until done), then audits the
// summaries of refusals over the audit budget as they fall due, also when
// no further refusal arrives, until ctx is done. Shutdown writes the last
// one.
func (s *Service) Run(ctx context.Context) {
	bansDone := s.finishBans(ctx)
	t := time.NewTicker(s.summaryTick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			_ = s.summarise(actx, false) // logged by audit; retried
			cancel()
			if !bansDone {
				bansDone = s.finishBans(ctx)
			}
		}
	}
}

// Shutdown audits the summary of refusals not yet summarised, due or not,
// so that none goes unrecorded. Call it once the Attest server has stopped.
func (s *Service) Shutdown(ctx context.Context) error {
	return s.summarise(ctx, true)
}
