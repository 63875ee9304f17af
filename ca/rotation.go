package ca

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/palisade-id/palisade/ca/store"
)

// Rotation thresholds, as fractions of the active intermediate's lifetime
// (SPIRE's schedule): prepare the next generation at half-life so its JWT
// key is in the bundle long before it signs, activate it when a sixth of the
// active one's life remains, so SVIDs (at most a sixth long by Config) are
// rarely clamped.
func prepareAt(s *slot) time.Time {
	life := s.cert.NotAfter.Sub(s.cert.NotBefore)
	return s.cert.NotBefore.Add(life / 2)
}

func activateAt(s *slot) time.Time {
	life := s.cert.NotAfter.Sub(s.cert.NotBefore)
	return s.cert.NotAfter.Add(-life / 6)
}

// ErrRootExpired means the root certificate has expired: no intermediate
// can be made, and only a new ceremony restores the CA.
var ErrRootExpired = errors.New("ca: root certificate expired")

// RotationEvent says what Rotate did.
type RotationEvent struct {
	Prepared  string   // key ID of a newly prepared generation
	Activated string   // key ID that became active
	Expired   []string // key IDs of generations dropped because they expired
}

// Changed reports whether the issuers or the bundle changed.
func (ev RotationEvent) Changed() bool {
	return ev.Prepared != "" || ev.Activated != "" || len(ev.Expired) > 0
}

// Rotate advances the intermediate slots to the current time. It is safe to
// call at any rate; the server calls it every RotationInterval. Expired
// generations leave Issuers and the bundle; one is never activated.
func (c *CA) Rotate(ctx context.Context) (RotationEvent, error) {
	c.rotMu.Lock()
	defer c.rotMu.Unlock()
	var ev RotationEvent
	now := c.now()
	if err := c.dropExpired(ctx, now, &ev); err != nil {
		return ev, err
	}
	c.mu.RLock()
	active, next := c.active, c.next
	c.mu.RUnlock()

	// The appliance may have been off past a whole schedule: a missing
	// active generation (dropExpired removed an expired one) is replaced at
	// once, by the next one if it is live, else by a fresh one.
	needNow := active == nil || !now.Before(active.cert.NotAfter)
	if next == nil && (needNow || !now.Before(prepareAt(active))) {
		if !now.Before(c.root.NotAfter) {
			return ev, fmt.Errorf("%w: %q expired at %s; run a new ceremony", ErrRootExpired,
				c.root.Subject.CommonName, c.root.NotAfter.UTC().Format(time.RFC3339))
		}
		// Keys are checked as the ceremony checks them, and a generation
		// the store never records leaves nothing behind in the HSM. The
		// audit record comes before the store's: a generation the log does
		// not name must not exist.
		gen := trackKeys(c.opts.Keys)
		rec, err := newIntermediate(c.cfg, gen, c.root, c.rootSigner, now)
		if err == nil {
			rec.Slot = store.SlotNext
			if err = c.opts.Audit.Append(ctx, "intermediate.prepared", "system", map[string]any{
				"key_id": rec.KeyID, "key_uri": rec.KeyURI, "not_after": rec.NotAfter,
			}); err != nil {
				err = fmt.Errorf("ca: audit next intermediate: %w", err)
			} else if err = c.opts.Store.PutIntermediate(rec); err != nil {
				err = fmt.Errorf("ca: record next intermediate: %w", err)
				if c.storeHolds(rec.KeyID) {
					// Written despite the error (a failed final fdatasync):
					// the store names the keys, so they stay.
					return ev, errors.Join(err, c.reload(now))
				}
			}
		}
		if err != nil {
			return ev, errors.Join(err, gen.undo())
		}
		if err := c.reload(now); err != nil {
			return ev, err
		}
		ev.Prepared = rec.KeyID
		c.mu.RLock()
		next = c.next
		c.mu.RUnlock()
	}
	if next != nil && (needNow || !now.Before(activateAt(active))) {
		if !now.Before(next.cert.NotAfter) {
			return ev, fmt.Errorf("%w: next intermediate %s expired at %s", ErrNoActiveIssuer, next.rec.KeyID, next.cert.NotAfter)
		}
		// Audited before the store switches slots: a failed switch leaves a
		// record of an attempt, never a switch without a record.
		if err := c.opts.Audit.Append(ctx, "intermediate.activated", "system", map[string]any{
			"key_id": next.rec.KeyID, "previous": keyIDOf(active),
		}); err != nil {
			return ev, fmt.Errorf("ca: audit activation of %s: %w", next.rec.KeyID, err)
		}
		if err := c.opts.Store.ActivateIntermediate(next.rec.KeyID, now); err != nil {
			return ev, fmt.Errorf("ca: activate intermediate %s: %w", next.rec.KeyID, err)
		}
		if err := c.reload(now); err != nil {
			return ev, err
		}
		ev.Activated = next.rec.KeyID
	}
	return ev, nil
}

// dropExpired removes the generations expired at now from the issuers and
// the bundle. One that expired in the next slot, never activated, is
// retired in the store (and audited) so a fresh one can take the slot; an
// expired active one is retired by the next activation.
func (c *CA) dropExpired(ctx context.Context, now time.Time, ev *RotationEvent) error {
	recs, err := c.opts.Store.Intermediates()
	if err != nil {
		return fmt.Errorf("ca: read intermediates: %w", err)
	}
	for _, r := range recs {
		if r.Slot != store.SlotNext || now.Before(r.NotAfter) {
			continue
		}
		// Audited before the store retires it: the expiry is a fact either
		// way, and a record written twice after a failure beats one lost.
		if err := c.opts.Audit.Append(ctx, "intermediate.expired", "system", map[string]any{
			"key_id": r.KeyID, "slot": store.SlotNext, "not_after": r.NotAfter,
		}); err != nil {
			return fmt.Errorf("ca: audit expiry of %s: %w", r.KeyID, err)
		}
		r.Slot = store.SlotRetired
		if err := c.opts.Store.PutIntermediate(r); err != nil {
			return fmt.Errorf("ca: retire expired intermediate %s: %w", r.KeyID, err)
		}
		ev.Expired = append(ev.Expired, r.KeyID)
	}
	c.mu.RLock()
	for _, s := range c.live {
		if !now.Before(s.cert.NotAfter) && !slices.Contains(ev.Expired, s.rec.KeyID) {
			ev.Expired = append(ev.Expired, s.rec.KeyID)
		}
	}
	c.mu.RUnlock()
	if len(ev.Expired) == 0 {
		return nil
	}
	return c.reload(now)
}

func keyIDOf(s *slot) string {
	if s == nil {
		return ""
	}
	return s.rec.KeyID
}

// RunRotation calls Rotate every interval until ctx ends. Failures are
// logged and retried: the active generation stays usable meanwhile.
func (c *CA) RunRotation(ctx context.Context, interval time.Duration, log *slog.Logger, onChange func(RotationEvent)) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		ev, err := c.Rotate(ctx)
		if err != nil {
			log.Error("intermediate rotation failed", "err", err)
		}
		// A failed rotation may still have changed something first.
		if ev.Changed() {
			log.Info("intermediate rotation", "prepared", ev.Prepared, "activated", ev.Activated, "expired", ev.Expired)
			if onChange != nil {
				onChange(ev)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// storeHolds reports whether the store reads back a generation keyID.
func (c *CA) storeHolds(keyID string) bool {
	recs, err := c.opts.Store.Intermediates()
	if err != nil {
		return false
	}
	for _, r := range recs {
		if r.KeyID == keyID {
			return true
		}
	}
	return false
}
