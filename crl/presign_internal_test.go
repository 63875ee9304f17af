package crl

import (
	"context"
	"crypto"
	"io"
	"log/slog"
	"testing"
	"time"
)

// The pre-sign worker must not hold a signature slot while it waits for
// another's signing flight: the flight's owner may be waiting for that slot
// (with one slot, a request would get tryLater while nothing signs).
func TestPresignWaitsForFlightWithoutSlot(t *testing.T) {
	r := newResponder(Config{SignConcurrency: 1}, nil, nil, nil, nil,
		slog.New(slog.NewTextHandler(io.Discard, nil)), time.Now, &Metrics{})
	oi := &ocspIssuer{iss: Issuer{KeyID: "k"}}
	r.issuers["k"] = oi
	serial := []byte{0x01, 0x02}
	key := hashKey(crypto.SHA1, serial)
	f, own := r.flightFor(key) // an on-demand request owns the flight
	if !own {
		t.Fatal("flight already taken")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	go func() { r.presign(ctx, presignReq{serial: serial, issuer: "k"}); close(done) }()

	// The owner gets the only slot although the worker is waiting. (Give
	// the worker time to get there; if it has not, this passes anyway.)
	time.Sleep(100 * time.Millisecond)
	if !r.acquire(ctx, 5*time.Second) {
		t.Fatal("the pre-sign worker held the only slot while waiting for the flight")
	}
	now := time.Now()
	c := &cached{issuer: "k", nextUpdate: now.Add(time.Hour), signedAt: now}
	r.mu.Lock()
	r.cache[key] = c
	r.mu.Unlock()
	f.c = c
	r.release()
	r.land(key, f)
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the pre-sign worker did not finish after the flight landed")
	}
	if n := r.m.Signatures.Load(); n != 0 {
		t.Fatalf("worker signed %d answers; the flight's answer was current", n)
	}
}
