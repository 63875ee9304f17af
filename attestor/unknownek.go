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
	"google.golang.org/grpc/codes"
)

// Anyone on the network can mint EKs that are not in the manifest, and
// replay the public EK (and EK certificate) of a node in it; each
// individually audited refusal is an fsynced record. Refusals before the
// peer proved it holds the EK's TPM (credential activation) are therefore
// audited within budgets of Config.UnknownEKAuditPerMinute (one for EKs not
// in the manifest, one for manifest EKs) and a per-EK allowance and, beyond
// them, summarised in at most one AuditAttestRefuseSuppressed record a
// minute.

const (
	// summaryInterval spaces the summaries of unaudited refusals.
	summaryInterval = time.Minute
	// defaultSummaryTick is how often Run looks for a summary that is due.
	defaultSummaryTick = 5 * time.Second
	// summarySample bounds each sample list of a summary.
	summarySample = 8
	// perEKAuditPerMinute caps the audited refusals of any one EK (at most
	// the budget), so that one EK's flood cannot spend the others' budget.
	perEKAuditPerMinute = 5
	// maxTrackedEKs bounds the per-EK allowances held in memory.
	maxTrackedEKs = 4096
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

// Reasons for refusing a manifest EK before the peer proved it holds the
// EK's TPM (metric labels and keys of a summary's reasons).
const (
	reasonActivation  = "activation_failed" // wrong credential secret: the AK is not the EK's TPM's
	reasonBanned      = "banned"            // the node is banned
	reasonBadMessage  = "bad_message"       // malformed or unexpected message, EK certificate, AK or CSR refused, stream closed
	reasonStepTimeout = "step_timeout"      // no answer to the credential challenge in time
	reasonOther       = "other"             // anything else (no policy, store failure)
)

// unprovenReason classifies a refusal of a manifest EK before credential
// activation succeeded.
func unprovenReason(err error) string {
	switch {
	case errors.Is(err, ErrBanned):
		return reasonBanned
	case errors.Is(err, ErrActivation):
		return reasonActivation
	case errors.Is(err, ErrStepTimeout):
		return reasonStepTimeout
	case Code(err) == codes.InvalidArgument, errors.Is(err, verify.ErrEKCert), errors.Is(err, verify.ErrEKCertMismatch):
		return reasonBadMessage
	default:
		return reasonOther
	}
}

// UnprovenEKRefusals counts refusals of manifest EKs before the peer proved
// it holds the EK's TPM, by reason. Unaudited counts those over the audit
// budget, which only a summary record covers.
type UnprovenEKRefusals struct {
	ActivationFailed atomic.Uint64
	Banned           atomic.Uint64
	BadMessage       atomic.Uint64
	StepTimeout      atomic.Uint64
	Other            atomic.Uint64
	Unaudited        atomic.Uint64
}

// ByReason returns the per-reason counters keyed by metric label.
func (u *UnprovenEKRefusals) ByReason() map[string]*atomic.Uint64 {
	return map[string]*atomic.Uint64{reasonActivation: &u.ActivationFailed, reasonBanned: &u.Banned,
		reasonBadMessage: &u.BadMessage, reasonStepTimeout: &u.StepTimeout, reasonOther: &u.Other}
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

// tokenBucket holds up to rate tokens and refills at rate a minute.
type tokenBucket struct {
	tokens float64
	at     time.Time // last refill
}

func (b *tokenBucket) refill(now time.Time, rate float64) {
	if el := now.Sub(b.at); !b.at.IsZero() && el > 0 {
		b.tokens = min(rate, b.tokens+el.Minutes()*rate)
	}
	b.at = now
}

// auditBudget holds the audit budgets for refusals before the peer proved
// it holds the EK's TPM, with the pending summary of those over them.
type auditBudget struct {
	mu       sync.Mutex
	perMin   float64                 // rate and burst of each global bucket
	perEK    float64                 // rate and burst of each EK's allowance
	unknown  tokenBucket             // EKs not in the manifest
	unproven tokenBucket             // manifest EKs before credential activation
	eks      map[string]*tokenBucket // allowances by EK hash
	pending  refusalSummary
}

func newAuditBudget(perMinute int) *auditBudget {
	r := float64(perMinute)
	return &auditBudget{perMin: r, perEK: min(perEKAuditPerMinute, r), unknown: tokenBucket{tokens: r},
		unproven: tokenBucket{tokens: r}, eks: map[string]*tokenBucket{}}
}

// allow takes a token from the EK's allowance and from the global bucket
// (of manifest EKs if inManifest) if both have one; otherwise it adds the
// refusal to the pending summary.
func (b *auditBudget) allow(now time.Time, inManifest bool, reason, ekHash, peer string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	global := &b.unknown
	if inManifest {
		global = &b.unproven
	}
	global.refill(now, b.perMin)
	ek := b.allowance(ekHash, now)
	ek.refill(now, b.perEK)
	if global.tokens >= 1 && ek.tokens >= 1 {
		global.tokens--
		ek.tokens--
		return true
	}
	b.pending.add(now, reason, ekHash, peer)
	return false
}

// allowance returns the EK's allowance, a new one full. When maxTrackedEKs
// are tracked, those untouched for a minute (full again) are forgotten, and
// all of them if that frees nothing: the global buckets still bound the
// total.
func (b *auditBudget) allowance(ekHash string, now time.Time) *tokenBucket {
	if e, ok := b.eks[ekHash]; ok {
		return e
	}
	if len(b.eks) >= maxTrackedEKs {
		for h, e := range b.eks {
			if now.Sub(e.at) >= time.Minute {
				delete(b.eks, h)
			}
		}
		if len(b.eks) >= maxTrackedEKs {
			clear(b.eks)
		}
	}
	e := &tokenBucket{tokens: b.perEK}
	b.eks[ekHash] = e
	return e
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
	p, ok := s.auditBudget.take(now, force)
	if !ok {
		return nil
	}
	if err := s.audit(ctx, AuditAttestRefuseSuppressed, "attestor", p); err != nil {
		s.auditBudget.restore(p, now)
		return err
	}
	s.log.Warn("refusals of unproven EKs over the audit budget (summary audited)",
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
