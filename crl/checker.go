package crl

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/asn1"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"
)

// CheckerConfig configures a Checker.
type CheckerConfig struct {
	// BaseURL is the appliance's HTTP base, e.g. "http://10.0.0.1:8080".
	BaseURL string
	// Roots is the trust bundle: the Checker fetches the live
	// intermediates from /crl/issuers.pem and follows the CRLs of those
	// that chain to Roots as CAs.
	Roots *x509.CertPool
	// Issuers, optional, adds intermediates the caller already verified.
	// Only CRLs signed by a followed intermediate are accepted.
	Issuers func() []*x509.Certificate
	// HTTPClient defaults to a client with a 30s timeout (longer than the
	// server's long-poll).
	HTTPClient *http.Client
	// Refresh is the periodic full+delta refetch, a safety net under the
	// feed. Default 5m.
	Refresh time.Duration
	// MaxCRLBytes caps a fetched CRL. Default 256 MiB.
	MaxCRLBytes int64
	// OnUpdate, optional, runs after the feed brought new revocations and
	// the signed CRLs holding them were applied: an enforcer re-checks its
	// admissions then instead of at its next periodic re-check.
	OnUpdate func()
	Logger   *slog.Logger
	Now      func() time.Time
}

// Checker is the client-side revocation check for enforcers: it follows
// full and delta CRLs of every issuer, verifies their signatures, and
// long-polls /revocations so a revocation reaches it within a second (on
// each event it fetches the signed delta CRL: events alone are never
// trusted).
type Checker struct {
	cfg CheckerConfig
	log *slog.Logger

	mu      sync.RWMutex
	states  map[string]*issuerCRLs // by hex SKI
	fetched []*x509.Certificate    // verified intermediates from the appliance
	poke    chan struct{}          // an unknown issuer was asked about
}

// issuers returns the intermediates to follow.
func (c *Checker) issuers() []*x509.Certificate {
	var out []*x509.Certificate
	if c.cfg.Issuers != nil {
		out = append(out, c.cfg.Issuers()...)
	}
	c.mu.RLock()
	out = append(out, c.fetched...)
	c.mu.RUnlock()
	return out
}

// fetchIssuers refreshes the intermediates from the appliance, keeping
// only CA certificates that chain to Roots.
func (c *Checker) fetchIssuers(ctx context.Context) error {
	if c.cfg.Roots == nil {
		return nil
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, IssuersURL(c.cfg.BaseURL), nil)
	if err != nil {
		return err
	}
	resp, err := c.cfg.HTTPClient.Do(req)
	if err != nil {
		return fmt.Errorf("crl: fetch issuers: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("crl: fetch issuers: HTTP %d", resp.StatusCode)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("crl: fetch issuers: %w", err)
	}
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		blk, body = pem.Decode(body)
		if blk == nil {
			break
		}
		cert, err := x509.ParseCertificate(blk.Bytes)
		if err != nil || !cert.IsCA || len(cert.SubjectKeyId) == 0 {
			continue
		}
		if _, err := cert.Verify(x509.VerifyOptions{Roots: c.cfg.Roots, CurrentTime: c.cfg.Now(),
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
			c.log.Warn("appliance lists an intermediate that does not chain to the trust bundle", "subject", cert.Subject.String(), "err", err)
			continue
		}
		out = append(out, cert)
	}
	c.mu.Lock()
	c.fetched = out
	c.mu.Unlock()
	return nil
}

type issuerCRLs struct {
	issuer     *x509.Certificate
	fullNumber *big.Int
	fullNext   time.Time
	fullETag   string
	full       map[string]struct{}
	deltaNum   *big.Int
	delta      map[string]struct{}
}

// NewChecker returns a Checker; call Sync for a first fetch and Run to
// keep it current.
func NewChecker(cfg CheckerConfig) (*Checker, error) {
	if _, err := url.Parse(cfg.BaseURL); err != nil || cfg.BaseURL == "" {
		return nil, fmt.Errorf("crl: checker base URL %q: invalid", cfg.BaseURL)
	}
	if cfg.Issuers == nil && cfg.Roots == nil {
		return nil, errors.New("crl: checker needs Roots or Issuers")
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = &http.Client{Timeout: 30 * time.Second}
	}
	if cfg.Refresh <= 0 {
		cfg.Refresh = 5 * time.Minute
	}
	if cfg.MaxCRLBytes <= 0 {
		cfg.MaxCRLBytes = 256 << 20
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Checker{cfg: cfg, log: log, states: map[string]*issuerCRLs{}, poke: make(chan struct{}, 1)}, nil
}

// Revoked reports whether serial, issued by the intermediate with Subject
// Key ID issuerSKI, is revoked. With no current verified CRL for that
// issuer it returns ErrNoCRL or ErrStaleCRL: the caller decides whether to
// fail closed.
func (c *Checker) Revoked(serial *big.Int, issuerSKI []byte) (bool, error) {
	c.mu.RLock()
	st := c.states[hex.EncodeToString(issuerSKI)]
	c.mu.RUnlock()
	if st == nil || st.full == nil {
		// An intermediate itself (the enforcer checks every certificate of
		// a chain but the root): the appliance publishes no CRL for its
		// roots, so an intermediate is in good standing while the appliance
		// lists it as live and it chains to Roots. Without this, no chain
		// the appliance issues could ever be admitted.
		if c.liveIssuer(serial, issuerSKI) {
			return false, nil
		}
		// A new intermediate (rotation): have Run look for it now.
		select {
		case c.poke <- struct{}{}:
		default:
		}
		return false, fmt.Errorf("%w: %x", ErrNoCRL, issuerSKI)
	}
	key := serial.Bytes()
	if _, ok := st.full[string(key)]; ok {
		return true, nil
	}
	if _, ok := st.delta[string(key)]; ok {
		return true, nil
	}
	if c.cfg.Now().After(st.fullNext) {
		return false, fmt.Errorf("%w: issuer %x, nextUpdate %s", ErrStaleCRL, issuerSKI, st.fullNext)
	}
	return false, nil
}

// liveIssuer reports whether serial, issued by the CA with Subject Key ID
// issuerSKI, is one of the followed (verified, live) intermediates.
func (c *Checker) liveIssuer(serial *big.Int, issuerSKI []byte) bool {
	for _, iss := range c.issuers() {
		if iss.SerialNumber.Cmp(serial) == 0 && bytes.Equal(iss.AuthorityKeyId, issuerSKI) {
			return true
		}
	}
	return false
}

// Sync fetches the full and delta CRL of every issuer and returns the
// first failure.
func (c *Checker) Sync(ctx context.Context) error {
	first := c.fetchIssuers(ctx)
	for _, iss := range c.issuers() {
		if err := c.syncIssuer(ctx, iss, true); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// syncDeltas fetches only the deltas (after a feed event), and the full
// CRL where the delta needs a newer base.
func (c *Checker) syncDeltas(ctx context.Context) error {
	var first error
	for _, iss := range c.issuers() {
		if err := c.syncIssuer(ctx, iss, false); err != nil && first == nil {
			first = err
		}
	}
	return first
}

func (c *Checker) syncIssuer(ctx context.Context, iss *x509.Certificate, full bool) error {
	id := hex.EncodeToString(iss.SubjectKeyId)
	c.mu.RLock()
	st := c.states[id]
	c.mu.RUnlock()
	if st == nil || st.full == nil || !bytes.Equal(st.issuer.Raw, iss.Raw) {
		st, full = &issuerCRLs{issuer: iss}, true
	} else {
		cp := *st
		st = &cp
	}
	if full {
		if err := c.fetchFull(ctx, st, id); err != nil {
			return err
		}
	}
	rl, err := c.fetch(ctx, DeltaCRLURL(c.cfg.BaseURL, id), iss, "")
	if err != nil {
		return err
	}
	base, err := deltaBase(rl)
	if err != nil {
		return err
	}
	if base == nil {
		return fmt.Errorf("%w: delta CRL of %s lacks a Delta CRL Indicator", ErrBadCRL, id)
	}
	if st.fullNumber.Cmp(base) < 0 && !full {
		if err := c.fetchFull(ctx, st, id); err != nil {
			return err
		}
	}
	if st.fullNumber.Cmp(base) < 0 {
		return fmt.Errorf("%w: delta CRL of %s needs base %v, have %v", ErrBadCRL, id, base, st.fullNumber)
	}
	if st.deltaNum == nil || rl.Number.Cmp(st.deltaNum) >= 0 {
		st.deltaNum, st.delta = rl.Number, serialSet(rl)
	}
	c.mu.Lock()
	c.states[id] = st
	c.mu.Unlock()
	return nil
}

func (c *Checker) fetchFull(ctx context.Context, st *issuerCRLs, id string) error {
	rl, err := c.fetch(ctx, CRLURL(c.cfg.BaseURL, id), st.issuer, st.fullETag)
	if errors.Is(err, errNotModified) {
		return nil
	}
	if err != nil {
		return err
	}
	if b, _ := deltaBase(rl); b != nil {
		return fmt.Errorf("%w: %s serves a delta CRL as the full CRL", ErrBadCRL, id)
	}
	if st.fullNumber != nil && rl.Number.Cmp(st.fullNumber) < 0 {
		return fmt.Errorf("%w: CRL number went back from %v to %v", ErrBadCRL, st.fullNumber, rl.Number)
	}
	st.fullNumber, st.fullNext, st.full = rl.Number, rl.NextUpdate, serialSet(rl)
	return nil
}

var errNotModified = errors.New("not modified")

// fetch downloads and verifies one CRL.
func (c *Checker) fetch(ctx context.Context, u string, issuer *x509.Certificate, etag string) (*x509.RevocationList, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	if etag != "" {
		req.Header.Set("If-None-Match", etag)
	}
	resp, err := c.cfg.HTTPClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("crl: fetch %s: %w", u, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotModified {
		return nil, errNotModified
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("crl: fetch %s: HTTP %d", u, resp.StatusCode)
	}
	der, err := io.ReadAll(io.LimitReader(resp.Body, c.cfg.MaxCRLBytes+1))
	if err != nil {
		return nil, fmt.Errorf("crl: fetch %s: %w", u, err)
	}
	if int64(len(der)) > c.cfg.MaxCRLBytes {
		return nil, fmt.Errorf("%w: %s larger than %d bytes", ErrBadCRL, u, c.cfg.MaxCRLBytes)
	}
	rl, err := x509.ParseRevocationList(der)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrBadCRL, u, err)
	}
	if err := rl.CheckSignatureFrom(issuer); err != nil {
		return nil, fmt.Errorf("%w: %s: signature: %v", ErrBadCRL, u, err)
	}
	if len(rl.AuthorityKeyId) > 0 && !bytes.Equal(rl.AuthorityKeyId, issuer.SubjectKeyId) {
		return nil, fmt.Errorf("%w: %s: authority key ID does not match the issuer", ErrBadCRL, u)
	}
	if rl.Number == nil {
		return nil, fmt.Errorf("%w: %s: no CRL number", ErrBadCRL, u)
	}
	return rl, nil
}

var oidDeltaCRLIndicator = asn1.ObjectIdentifier{2, 5, 29, 27}

func deltaBase(rl *x509.RevocationList) (*big.Int, error) {
	for _, e := range rl.Extensions {
		if e.Id.Equal(oidDeltaCRLIndicator) {
			n := new(big.Int)
			if rest, err := asn1.Unmarshal(e.Value, &n); err != nil || len(rest) > 0 {
				return nil, fmt.Errorf("%w: bad Delta CRL Indicator", ErrBadCRL)
			}
			return n, nil
		}
	}
	return nil, nil
}

func serialSet(rl *x509.RevocationList) map[string]struct{} {
	m := make(map[string]struct{}, len(rl.RevokedCertificateEntries))
	for _, e := range rl.RevokedCertificateEntries {
		m[string(e.SerialNumber.Bytes())] = struct{}{}
	}
	return m
}

// Run long-polls the feed and refreshes the CRLs until ctx ends. A question
// about an issuer it does not follow yet interrupts the poll for a Sync.
func (c *Checker) Run(ctx context.Context) {
	epoch, seq := "", uint64(0)
	lastFull := time.Time{}
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		if time.Since(lastFull) >= c.cfg.Refresh {
			if err := c.Sync(ctx); err != nil {
				c.log.Warn("CRL refresh failed", "err", err)
			} else {
				lastFull = time.Now()
				// A poke from during the Sync asked for what it fetched; a
				// question about an issuer still unknown pokes again.
				select {
				case <-c.poke:
				default:
				}
			}
		}
		pollCtx, cancel := context.WithCancel(ctx)
		poked := make(chan bool, 1)
		go func() {
			select {
			case <-c.poke:
				poked <- true
				cancel()
			case <-pollCtx.Done():
				poked <- false
			}
		}()
		page, err := c.poll(pollCtx, epoch, seq)
		cancel()
		if <-poked {
			lastFull = time.Time{}
			continue
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			c.log.Warn("revocation feed unavailable", "err", err, "retry_in", backoff)
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, 10*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
		switch {
		case page.Reset:
			// A new server process, or this client fell behind the feed.
			// A full CRL already held at or past the current delta's base,
			// plus that delta, is the current state (RFC 5280 §5.2.4):
			// fetch the deltas, and a full CRL only where the base moved,
			// so a fleet does not download full CRLs at every restart.
			epoch, seq = page.Epoch, page.Seq
			first := c.fetchIssuers(ctx)
			if err := c.syncDeltas(ctx); err != nil || first != nil {
				c.log.Warn("CRL refresh after feed reset failed", "err", errors.Join(first, err))
				lastFull = time.Time{}
			} else {
				c.updated()
			}
		case len(page.Events) > 0:
			if err := c.syncDeltas(ctx); err != nil {
				c.log.Warn("delta CRL fetch after revocation event failed", "err", err, "retry_in", backoff)
				select { // keep seq: retry the same events
				case <-ctx.Done():
					return
				case <-time.After(backoff):
				}
				backoff = min(backoff*2, 10*time.Second)
				continue
			}
			seq = page.Seq
			c.updated()
		}
	}
}

func (c *Checker) updated() {
	if c.cfg.OnUpdate != nil {
		c.cfg.OnUpdate()
	}
}

func (c *Checker) poll(ctx context.Context, epoch string, after uint64) (FeedPage, error) {
	var p FeedPage
	u := FeedURL(c.cfg.BaseURL) + "?epoch=" + url.QueryEscape(epoch) + "&after=" + strconv.FormatUint(after, 10)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return p, err
	}
	resp, err := c.cfg.HTTPClient.Do(req)
	if err != nil {
		return p, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return p, fmt.Errorf("crl: feed: HTTP %d", resp.StatusCode)
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<22)).Decode(&p); err != nil {
		return p, fmt.Errorf("crl: feed: %w", err)
	}
	return p, nil
}
