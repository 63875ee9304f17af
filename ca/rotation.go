package ca

import (
	"context"
	"fmt"
	"log/slog"
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

// RotationEvent says what Rotate did.
type RotationEvent struct {
	Prepared  string // key ID of a newly prepared generation
	Activated string // key ID that became active
}

// Rotate advances the intermediate slots to the current time. It is safe to
// call at any rate; the server calls it every RotationInterval.
func (c *CA) Rotate(ctx context.Context) (RotationEvent, error) {
	var ev RotationEvent
	now := c.now()
	c.mu.RLock()
	active, next := c.active, c.next
	c.mu.RUnlock()

	// The appliance may have been off past a whole schedule: an expired or
	// missing active generation is replaced at once.
	needNow := active == nil || !now.Before(active.cert.NotAfter)
	if next == nil && (needNow || !now.Before(prepareAt(active))) {
		rec, err := newIntermediate(c.cfg, c.opts.Keys, c.root, c.rootSigner, now)
		if err != nil {
			return ev, err
		}
		rec.Slot = store.SlotNext
		if err := c.opts.Store.PutIntermediate(rec); err != nil {
			return ev, fmt.Errorf("ca: record next intermediate: %w", err)
		}
		if err := c.opts.Audit.Append(ctx, "intermediate.prepared", "system", map[string]any{
			"key_id": rec.KeyID, "key_uri": rec.KeyURI, "not_after": rec.NotAfter,
		}); err != nil {
			return ev, fmt.Errorf("ca: audit next intermediate: %w", err)
		}
		if err := c.reload(); err != nil {
			return ev, err
		}
		ev.Prepared = rec.KeyID
		c.mu.RLock()
		next = c.next
		c.mu.RUnlock()
	}
	if next != nil && (needNow || !now.Before(activateAt(active))) {
		if err := c.opts.Store.ActivateIntermediate(next.rec.KeyID, now); err != nil {
			return ev, fmt.Errorf("ca: activate intermediate %s: %w", next.rec.KeyID, err)
		}
		if err := c.opts.Audit.Append(ctx, "intermediate.activated", "system", map[string]any{
			"key_id": next.rec.KeyID, "previous": keyIDOf(active),
		}); err != nil {
			return ev, fmt.Errorf("ca: audit activation: %w", err)
		}
		if err := c.reload(); err != nil {
			return ev, err
		}
		ev.Activated = next.rec.KeyID
	}
	return ev, nil
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
		switch {
		case err != nil:
			log.Error("intermediate rotation failed", "err", err)
		case ev.Prepared != "" || ev.Activated != "":
			log.Info("intermediate rotation", "prepared", ev.Prepared, "activated", ev.Activated)
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
