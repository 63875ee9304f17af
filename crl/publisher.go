package crl

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"log/slog"
	"math/big"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// A delta CRL lists revocations from BaseCutoff on; the margin covers a
// revocation whose time was taken just before a full CRL's scan began but
// whose write committed after it.
const cutoffMargin = time.Minute

// crlDoc is one signed CRL as served.
type crlDoc struct {
	der        []byte
	number     uint64
	thisUpdate time.Time
	nextUpdate time.Time
	etag       string
}

// crlIssuer builds the CRLs of one issuer. One goroutine per issuer runs
// build; triggers coalesce into the next build.
type crlIssuer struct {
	iss     atomic.Pointer[Issuer]
	trigger chan struct{}
	stop    chan struct{} // closed when the issuer leaves the live set
	full    atomic.Pointer[crlDoc]
	delta   atomic.Pointer[crlDoc]
	size    int // entries in the last full CRL

	mu       sync.Mutex
	pending  []Event // published to the feed once a delta holding them is out
	dirty    bool    // revocations since the last full CRL
	lastFull time.Time
}

type publisher struct {
	cfg     Config
	src     Source
	state   *stateFile
	feed    *feed
	log     *slog.Logger
	now     func() time.Time
	baseURL string
	m       *Metrics

	wg sync.WaitGroup // builders, so Run returns only after the last state write

	mu      sync.RWMutex
	issuers map[string]*crlIssuer
	active  string
}

func newCRLDoc(der []byte, n uint64, this, next time.Time) *crlDoc {
	return &crlDoc{der: der, number: n, thisUpdate: this, nextUpdate: next, etag: etagOf(der)}
}

// etagOf is the strong ETag of a served DER document (CRL or OCSP answer).
func etagOf(der []byte) string {
	sum := sha256.Sum256(der)
	return `"` + hex.EncodeToString(sum[:16]) + `"`
}

// setIssuers starts builders for new issuers and stops tracking gone ones.
func (p *publisher) setIssuers(ctx context.Context, list []Issuer) {
	p.mu.Lock()
	defer p.mu.Unlock()
	seen := map[string]bool{}
	for _, iss := range list {
		iss := iss
		seen[iss.KeyID] = true
		if iss.Active {
			p.active = iss.KeyID
		}
		if ci := p.issuers[iss.KeyID]; ci != nil {
			ci.iss.Store(&iss)
			continue
		}
		ci := &crlIssuer{trigger: make(chan struct{}, 1), stop: make(chan struct{})}
		ci.iss.Store(&iss)
		p.issuers[iss.KeyID] = ci
		p.wg.Go(func() { p.loop(ctx, ci) })
	}
	for id, ci := range p.issuers {
		if !seen[id] {
			delete(p.issuers, id)
			close(ci.stop)
		}
	}
}

func (p *publisher) get(keyID string) *crlIssuer {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return p.issuers[keyID]
}

// revoked records a revocation for issuer keyID and wakes its builder.
func (p *publisher) revoked(ev Event) {
	ci := p.get(ev.Issuer)
	if ci == nil {
		// An issuer no longer live: its certificates have expired.
		p.feed.publish([]Event{ev})
		return
	}
	ci.mu.Lock()
	ci.pending = append(ci.pending, ev)
	ci.dirty = true
	ci.mu.Unlock()
	select {
	case ci.trigger <- struct{}{}:
	default:
	}
}

// loop rebuilds ci's CRLs on triggers, before nextUpdate, and after failures.
func (p *publisher) loop(ctx context.Context, ci *crlIssuer) {
	timer := time.NewTimer(0)
	defer timer.Stop()
	backoff := time.Second
	for {
		select {
		case <-ctx.Done():
			return
		case <-ci.stop:
			return
		case <-ci.trigger:
		case <-timer.C:
		}
		wait, err := p.build(ci)
		if err != nil {
			p.m.CRLBuildErrors.Add(1)
			p.m.RefreshFailures.Add(1)
			p.log.Error("CRL build failed; serving the previous CRLs", "issuer", ci.iss.Load().KeyID, "err", err, "retry_in", backoff)
			wait = backoff
			backoff = min(backoff*2, 30*time.Second)
		} else {
			backoff = time.Second
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(wait)
	}
}

// build brings ci's delta (and, when due, full) CRL up to date and returns
// how long until the next build is due.
func (p *publisher) build(ci *crlIssuer) (time.Duration, error) {
	iss := ci.iss.Load()
	real := p.now()
	now := real.Truncate(time.Second) // CRL times have second precision
	half := p.cfg.CRLValidity / 2

	ci.mu.Lock()
	pending := ci.pending
	ci.pending = nil
	dirty := ci.dirty
	lastFull := ci.lastFull
	ci.mu.Unlock()
	requeue := func() {
		ci.mu.Lock()
		ci.pending = append(pending, ci.pending...)
		ci.dirty = ci.dirty || dirty
		ci.mu.Unlock()
	}

	full := ci.full.Load()
	fullDue := full == nil || !now.Before(full.thisUpdate.Add(half)) ||
		(dirty && !real.Before(lastFull.Add(p.cfg.FullCRLMinInterval)))
	st := p.state.get(iss.KeyID)
	if fullDue {
		scanStart := p.now()
		st.Number++
		newBase := st.BaseNumber == 0 || !scanStart.Before(st.BaseCutoff.Add(cutoffMargin+p.cfg.DeltaBaseInterval))
		if newBase {
			st.BaseNumber = st.Number
			st.BaseCutoff = scanStart.Add(-cutoffMargin)
		}
		if err := p.state.put(iss.KeyID, st); err != nil {
			requeue()
			return 0, err
		}
		doc, n, err := p.encode(iss, st.Number, now, 0, time.Time{}, ci.size)
		if err != nil {
			requeue()
			return 0, err
		}
		ci.size = n
		ci.full.Store(doc)
		ci.mu.Lock()
		ci.lastFull = real
		ci.dirty = ci.dirty && !dirty // a revocation during the build keeps it dirty
		ci.mu.Unlock()
		full = doc
		p.m.CRLBuilds.Add(1)
	}
	delta := ci.delta.Load()
	if fullDue || len(pending) > 0 || delta == nil || !now.Before(delta.thisUpdate.Add(half)) {
		st.Number++
		if err := p.state.put(iss.KeyID, st); err != nil {
			requeue()
			return 0, err
		}
		doc, _, err := p.encode(iss, st.Number, now, st.BaseNumber, st.BaseCutoff, 0)
		if err != nil {
			requeue()
			return 0, err
		}
		ci.delta.Store(doc)
		delta = doc
		p.m.CRLBuilds.Add(1)
	}
	p.feed.publish(pending)

	next := min(full.thisUpdate.Add(half).Sub(p.now()), delta.thisUpdate.Add(half).Sub(p.now()))
	ci.mu.Lock()
	if ci.dirty {
		next = min(next, ci.lastFull.Add(p.cfg.FullCRLMinInterval).Sub(p.now()))
	}
	ci.mu.Unlock()
	return max(next, 10*time.Millisecond), nil
}

// encode builds one CRL: full when base is 0, else a delta over
// revocations since cutoff.
func (p *publisher) encode(iss *Issuer, number uint64, now time.Time, base uint64, cutoff time.Time, hint int) (*crlDoc, int, error) {
	t := CRLTemplate{
		Issuer: iss.Cert, Signer: iss.Signer, Number: number,
		ThisUpdate: now, NextUpdate: now.Add(p.cfg.CRLValidity), DeltaBase: base,
	}
	if base == 0 && p.baseURL != "" {
		t.FreshestURL = DeltaCRLURL(p.baseURL, iss.KeyID)
	}
	count := 0
	der, err := EncodeCRL(t, hint, func(fn func(*big.Int, time.Time, int) error) error {
		return p.src.ForEachRevoked(iss.KeyID, cutoff, func(ci CertInfo) error {
			// Entries may leave the CRL once the certificate has expired
			// (RFC 5280 §3.3).
			if !ci.NotAfter.IsZero() && ci.NotAfter.Before(now) {
				return nil
			}
			count++
			return fn(ci.Serial, ci.RevokedAt, ci.Reason)
		})
	})
	if err != nil {
		return nil, 0, fmt.Errorf("crl: build CRL %d for issuer %s: %w", number, iss.KeyID, err)
	}
	return newCRLDoc(der, number, now, t.NextUpdate), count, nil
}

// ServeHTTP serves /crl/<ski>.crl, /crl/<ski>-delta.crl and /crl/current.crl.
func (p *publisher) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET")
		http.Error(w, "CRLs are fetched with GET", http.StatusMethodNotAllowed)
		return
	}
	if r.URL.Path == "/crl/issuers.pem" {
		p.serveIssuers(w)
		return
	}
	name, ok := strings.CutPrefix(r.URL.Path, "/crl/")
	if !ok || len(name) < 5 || name[len(name)-4:] != ".crl" {
		http.NotFound(w, r)
		return
	}
	name = name[:len(name)-4]
	wantDelta := false
	if n, ok := strings.CutSuffix(name, "-delta"); ok {
		name, wantDelta = n, true
	}
	if name == "current" {
		p.mu.RLock()
		name = p.active
		p.mu.RUnlock()
	}
	ci := p.get(name)
	if ci == nil {
		http.Error(w, "unknown issuer", http.StatusNotFound)
		return
	}
	doc := ci.full.Load()
	if wantDelta {
		doc = ci.delta.Load()
	}
	if doc == nil {
		w.Header().Set("Retry-After", "1")
		http.Error(w, "CRL not built yet", http.StatusServiceUnavailable)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "application/pkix-crl")
	h.Set("ETag", doc.etag)
	h.Set("Expires", doc.nextUpdate.UTC().Format(http.TimeFormat))
	// Rebuilt on every revocation: caches may keep it but must revalidate.
	h.Set("Cache-Control", "public, no-cache")
	h.Set("X-CRL-Number", strconv.FormatUint(doc.number, 10))
	// No modtime: thisUpdate has one-second resolution and deltas are
	// rebuilt on every revocation, so two in one second would look
	// unmodified to If-Modified-Since; the ETag tells them apart.
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(doc.der))
}

// serveIssuers lists the live intermediates as PEM so clients that only
// hold the trust bundle can find (and verify) the CRL signers.
func (p *publisher) serveIssuers(w http.ResponseWriter) {
	p.mu.RLock()
	var out []byte
	for _, ci := range p.issuers {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ci.iss.Load().Cert.Raw})...)
	}
	p.mu.RUnlock()
	w.Header().Set("Content-Type", "application/x-pem-file")
	w.Header().Set("Cache-Control", "no-cache")
	w.Write(out)
}
