package attestor

import (
	"fmt"
	"sync"
	"time"

	"github.com/palisade-id/palisade/attestor/verify"
)

// nonces tracks server-issued quote nonces: each is bound to one session,
// usable once, and only until it expires. Used nonces are remembered until
// they expire so that a replay is reported as such. A restart forgets all
// nonces, which only fails outstanding sessions closed.
type nonces struct {
	mu      sync.Mutex
	ttl     time.Duration
	max     int
	entries map[[verify.NonceSize]byte]*nonceEntry
	lastGC  time.Time
}

type nonceEntry struct {
	session uint64
	expires time.Time
	used    bool
}

func newNonces(ttl time.Duration, max int) *nonces {
	return &nonces{ttl: ttl, max: max, entries: map[[verify.NonceSize]byte]*nonceEntry{}}
}

// issue records nonce as issued to session, valid until now plus the TTL.
func (n *nonces) issue(nonce []byte, session uint64, now time.Time) error {
	if len(nonce) != verify.NonceSize {
		return fmt.Errorf("attestor: nonce of %d bytes", len(nonce))
	}
	k := [verify.NonceSize]byte(nonce)
	n.mu.Lock()
	defer n.mu.Unlock()
	n.gcLocked(now)
	if len(n.entries) >= n.max {
		return ErrTooManyNonces
	}
	if _, dup := n.entries[k]; dup {
		return fmt.Errorf("attestor: nonce collision")
	}
	n.entries[k] = &nonceEntry{session: session, expires: now.Add(n.ttl)}
	return nil
}

// consume marks nonce used if it is valid for session at now.
func (n *nonces) consume(nonce []byte, session uint64, now time.Time) error {
	if len(nonce) != verify.NonceSize {
		return ErrNonceUnknown
	}
	k := [verify.NonceSize]byte(nonce)
	n.mu.Lock()
	defer n.mu.Unlock()
	e, ok := n.entries[k]
	switch {
	case !ok:
		return ErrNonceUnknown
	case e.used:
		return ErrNonceReplayed
	case e.session != session:
		return ErrNonceSession
	case !now.Before(e.expires):
		e.used = true
		return ErrNonceStale
	}
	e.used = true
	return nil
}

func (n *nonces) gcLocked(now time.Time) {
	if now.Sub(n.lastGC) < time.Second && len(n.entries) < n.max {
		return
	}
	n.lastGC = now
	for k, e := range n.entries {
		if now.After(e.expires) {
			delete(n.entries, k)
		}
	}
}
