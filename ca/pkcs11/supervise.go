package pkcs11

import (
	"context"
	"errors"
	"time"
)

// Supervise keeps the token usable until ctx ends: every interval, and at
// once when a Signer hits ErrHSMUnavailable, it pings the token and, if the
// token stopped answering, reopens it (Signers handed out before carry on).
// report, if not nil, is called on every change of state: with the error
// when the token becomes unavailable or a reopen attempt fails, with nil
// when it answers again. Run it in its own goroutine.
func (t *Token) Supervise(ctx context.Context, interval time.Duration, report func(error)) {
	if interval <= 0 {
		interval = 5 * time.Second
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	var last error
	healthy := true
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-t.kick:
		}
		err := t.Ping()
		if errors.Is(err, ErrClosed) {
			return
		}
		if errors.Is(err, ErrHSMUnavailable) {
			if rerr := t.Reopen(); rerr != nil {
				err = rerr
			} else {
				err = t.Ping()
			}
		}
		switch {
		case err == nil && !healthy:
			healthy, last = true, nil
			if report != nil {
				report(nil)
			}
		case err != nil && (healthy || err.Error() != last.Error()):
			healthy, last = false, err
			if report != nil {
				report(err)
			}
		}
	}
}

// kickSupervisor asks a running Supervise to check now.
func (t *Token) kickSupervisor() {
	select {
	case t.kick <- struct{}{}:
	default:
	}
}
