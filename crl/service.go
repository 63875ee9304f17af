package crl

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/big"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"
)

// Options are the Service's collaborators.
type Options struct {
	Store   Store    // durable certificate records (the CA's store)
	Audit   Auditor  // every revocation and responder certificate is audited
	Keys    KeyStore // HSM holding the delegated OCSP keys
	Issuers Issuers  // live intermediates
	// BaseURL is the appliance's HTTP base, used for the Freshest CRL
	// extension of full CRLs; optional.
	BaseURL string
	Logger  *slog.Logger
	Now     func() time.Time // default time.Now
	// IssuerPoll is how often Run re-reads Issuers. Default 10s; call
	// IssuersChanged after a rotation to apply it at once.
	IssuerPoll time.Duration
}

// Service revokes, builds CRLs, answers OCSP and serves the feed.
type Service struct {
	cfg     Config
	opts    Options
	log     *slog.Logger
	now     func() time.Time
	pub     *publisher
	ocsp    *responder
	feed    *feed
	metrics *Metrics
	poke    chan struct{}
	mux     *http.ServeMux
	// revoking holds one token while a revocation runs (lockRevocations).
	revoking chan struct{}
}

// New checks cfg, opens the CRL state in cfg.DataDir and returns a Service;
// call Run to start it.
func New(cfg Config, opts Options) (*Service, error) {
	cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if opts.Store == nil || opts.Audit == nil || opts.Keys == nil || opts.Issuers == nil {
		return nil, errors.New("crl: Store, Audit, Keys and Issuers are required")
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.IssuerPoll <= 0 {
		opts.IssuerPoll = 10 * time.Second
	}
	st, err := openState(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	m := &Metrics{}
	s := &Service{cfg: cfg, opts: opts, log: opts.Logger, now: opts.Now, metrics: m, poke: make(chan struct{}, 1),
		revoking: make(chan struct{}, 1)}
	s.feed = newFeed(cfg.LongPollTimeout)
	s.pub = &publisher{cfg: cfg, src: opts.Store, state: st, feed: s.feed, log: opts.Logger, now: opts.Now,
		baseURL: opts.BaseURL, m: m, issuers: map[string]*crlIssuer{}}
	s.ocsp = newResponder(cfg, opts.Keys, opts.Store, opts.Store, opts.Audit, opts.Logger, opts.Now, m)
	s.mux = http.NewServeMux()
	s.mux.Handle("/crl/", s.pub)
	s.mux.Handle("/revocations", s.feed)
	return s, nil
}

// Run builds the CRLs, pre-signs OCSP answers and keeps both fresh until
// ctx ends. Failures (an unavailable HSM) are logged and retried; answers
// already signed keep being served until their nextUpdate.
func (s *Service) Run(ctx context.Context) error {
	// Every goroutine started here has ended when Run returns, so the caller
	// may remove DataDir or close the store right after.
	var wg sync.WaitGroup
	defer wg.Wait()
	defer s.pub.wg.Wait()
	s.syncIssuers(ctx)
	for i := 0; i < max(1, s.cfg.SignConcurrency/2); i++ {
		wg.Go(func() { s.ocsp.presignWorker(ctx) })
	}
	wg.Go(func() {
		if err := s.ocsp.prefill(ctx); err != nil && ctx.Err() == nil {
			s.log.Error("OCSP pre-sign: listing certificates failed", "err", err)
		}
	})
	refresh := time.NewTicker(min(s.cfg.OCSPValidity/8, time.Minute))
	defer refresh.Stop()
	poll := time.NewTicker(s.opts.IssuerPoll)
	defer poll.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-refresh.C:
			s.ocsp.refresh(ctx)
		case <-poll.C:
			s.syncIssuers(ctx)
		case <-s.poke:
			s.syncIssuers(ctx)
		}
	}
}

func (s *Service) syncIssuers(ctx context.Context) {
	list := s.opts.Issuers.Issuers()
	s.pub.setIssuers(ctx, list)
	if err := s.ocsp.setIssuers(ctx, list); err != nil {
		s.log.Error("OCSP issuer setup incomplete", "err", err)
	}
}

// IssuersChanged makes Run re-read the issuers now (after a rotation).
func (s *Service) IssuersChanged() {
	select {
	case s.poke <- struct{}{}:
	default:
	}
}

// Handler serves /crl/<ski>.crl, /crl/<ski>-delta.crl, /crl/current.crl,
// /ocsp (POST), /ocsp/<base64> (GET) and /revocations. Mount it at the
// root, or dispatch every path with those prefixes to it before an
// http.ServeMux: ServeMux would redirect OCSP GET paths whose base64
// contains "//".
func (s *Service) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if p := r.URL.Path; p == "/ocsp" || strings.HasPrefix(p, "/ocsp/") {
			s.ocsp.ServeHTTP(w, r)
			return
		}
		s.mux.ServeHTTP(w, r)
	})
}

// Metrics returns live counters.
func (s *Service) Metrics() *Metrics { return s.metrics }

// Issued tells the responder about a new certificate so its "good" answer
// is pre-signed before anyone asks. It never blocks.
func (s *Service) Issued(serial *big.Int, issuerKeyID string, notAfter time.Time) {
	if serial == nil || serial.Sign() < 0 {
		return
	}
	s.ocsp.enqueue(serialContent(serial), issuerKeyID)
}

// Revoke revokes one certificate: audit record, durable write, cached OCSP
// answers dropped at once, CRLs and feed updated shortly after. Revoking
// a revoked certificate changes nothing and returns its record. The record
// comes first so that no revocation is committed unaudited: if the audit
// append fails nothing is revoked; if the commit fails after it, the
// record describes an attempt and a retry writes another.
func (s *Service) Revoke(ctx context.Context, actor string, serial *big.Int, reason int) (CertInfo, error) {
	if serial == nil || serial.Sign() <= 0 {
		return CertInfo{}, fmt.Errorf("%w: must be positive", ErrBadSerial)
	}
	if !ValidReason(reason) {
		return CertInfo{}, fmt.Errorf("%w: %d", ErrBadReason, reason)
	}
	unlock, err := s.lockRevocations(ctx)
	if err != nil {
		return CertInfo{}, err
	}
	defer unlock()
	at := s.now().UTC().Truncate(time.Second)
	info, found, err := s.opts.Store.Status(serial)
	if err != nil {
		return CertInfo{}, fmt.Errorf("crl: revoke %x: read status: %w", serial, err)
	}
	if !found {
		return s.revokeUnknown(ctx, actor, serial, reason, at)
	}
	if info.Revoked {
		return info, nil // already revoked earlier
	}
	if err := s.auditRevocation(ctx, actor, info, reason, at); err != nil {
		return CertInfo{}, fmt.Errorf("crl: %x not revoked: %w", serial, err)
	}
	return s.commitRevocation(serial, reason, at)
}

// revokeUnknown lets the store name a serial Status did not find, with the
// error callers match (e.g. the CA store's ErrCertNotFound). Should the
// certificate have been recorded between the two calls, the store revokes
// it and, in that case alone, the record follows the commit.
func (s *Service) revokeUnknown(ctx context.Context, actor string, serial *big.Int, reason int, at time.Time) (CertInfo, error) {
	info, changed, err := s.opts.Store.Revoke(serial, reason, at)
	if err != nil {
		return CertInfo{}, fmt.Errorf("crl: revoke %x: %w", serial, err)
	}
	if !info.Revoked {
		return info, fmt.Errorf("crl: store did not revoke %x", serial)
	}
	if !changed {
		return info, nil
	}
	s.revoked(info)
	if err := s.auditRevocation(ctx, actor, info, reason, at); err != nil {
		return info, fmt.Errorf("crl: %x revoked: %w", serial, err)
	}
	return info, nil
}

func (s *Service) auditRevocation(ctx context.Context, actor string, info CertInfo, reason int, at time.Time) error {
	if err := s.opts.Audit.Append(ctx, "cert.revoked", actor, map[string]any{
		"serial": fmt.Sprintf("%x", info.Serial), "reason": reason, "spiffe_id": info.SPIFFEID,
		"node_id": info.NodeID, "issuer": info.IssuerKeyID, "revoked_at": at,
	}); err != nil {
		return fmt.Errorf("audit revocation: %w", err)
	}
	return nil
}

// commitRevocation revokes serial in the store once its record is written.
func (s *Service) commitRevocation(serial *big.Int, reason int, at time.Time) (CertInfo, error) {
	info, changed, err := s.opts.Store.Revoke(serial, reason, at)
	if err != nil {
		return CertInfo{}, fmt.Errorf("crl: revoke %x (audited, not committed): %w", serial, err)
	}
	if !info.Revoked {
		return info, fmt.Errorf("crl: store did not revoke %x", serial)
	}
	if changed { // else revoked by another writer since Status
		s.revoked(info)
	}
	return info, nil
}

// RevokeNode revokes every unexpired certificate whose NodeID or SPIFFE ID
// is nodeID and returns how many it revoked. Refusing the node's future
// requests is the CA's part (a node ban).
//
// It lists the node's unrevoked certificates and appends one "node.revoked"
// record naming their serials before the store revokes them, in one
// transaction: no listed revocation is committed without a record, and a
// retry after any failure lists, records and revokes what is left. A
// certificate recorded between the listing and the commit is revoked too,
// and named in a second record after the commit, in that case alone.
// Nothing left to revoke writes no record.
func (s *Service) RevokeNode(ctx context.Context, actor, nodeID string, reason int) (int, error) {
	if strings.TrimSpace(nodeID) == "" {
		return 0, ErrBadNodeID
	}
	if !ValidReason(reason) {
		return 0, fmt.Errorf("%w: %d", ErrBadReason, reason)
	}
	unlock, err := s.lockRevocations(ctx)
	if err != nil {
		return 0, err
	}
	defer unlock()
	at := s.now().UTC().Truncate(time.Second)
	listed := map[string]bool{}
	err = s.opts.Store.ForEachOfNode(nodeID, at, func(c CertInfo) error {
		if !c.Revoked {
			listed[fmt.Sprintf("%x", c.Serial)] = true
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("crl: revoke node %s: list certificates: %w", nodeID, err)
	}
	if len(listed) == 0 {
		return 0, nil
	}
	record := func(serials []string) error {
		slices.Sort(serials)
		return s.opts.Audit.Append(ctx, "node.revoked", actor, map[string]any{
			"node_id": nodeID, "reason": reason, "count": len(serials), "serials": serials, "revoked_at": at,
		})
	}
	if err := record(slices.Collect(maps.Keys(listed))); err != nil {
		return 0, fmt.Errorf("crl: audit node revocation of %s, nothing revoked: %w", nodeID, err)
	}
	infos, err := s.opts.Store.RevokeNode(nodeID, reason, at)
	if err != nil {
		return 0, fmt.Errorf("crl: revoke node %s (audited, not committed): %w", nodeID, err)
	}
	var late []string
	for _, info := range infos {
		s.revoked(info)
		if sn := fmt.Sprintf("%x", info.Serial); !listed[sn] {
			late = append(late, sn)
		}
	}
	if len(late) > 0 {
		if err := record(late); err != nil {
			return len(infos), fmt.Errorf("crl: audit node revocation of %s (revoked): %w", nodeID, err)
		}
	}
	return len(infos), nil
}

// lockRevocations serialises revocations, so that reading a status,
// writing the record and committing act as one step: concurrent
// revocations of one certificate write one record. A waiting caller's ctx
// still ends the wait.
func (s *Service) lockRevocations(ctx context.Context) (unlock func(), err error) {
	select {
	case s.revoking <- struct{}{}:
		return func() { <-s.revoking }, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("crl: waiting to revoke: %w", ctx.Err())
	}
}

func (s *Service) revoked(info CertInfo) {
	sc := serialContent(info.Serial)
	s.ocsp.invalidate(sc)
	s.ocsp.enqueue(sc, info.IssuerKeyID)
	s.pub.revoked(Event{Serial: fmt.Sprintf("%x", info.Serial), Issuer: info.IssuerKeyID, Reason: info.Reason, RevokedAt: info.RevokedAt})
}

// CRL returns the current full (or delta) CRL of an issuer and its number.
func (s *Service) CRL(issuerKeyID string, delta bool) ([]byte, uint64, error) {
	ci := s.pub.get(issuerKeyID)
	if ci == nil {
		return nil, 0, fmt.Errorf("%w: %s", ErrUnknownIssuer, issuerKeyID)
	}
	doc := ci.full.Load()
	if delta {
		doc = ci.delta.Load()
	}
	if doc == nil {
		return nil, 0, ErrNotReady
	}
	return doc.der, doc.number, nil
}

// FeedSeq returns the feed's epoch and latest sequence.
func (s *Service) FeedSeq() (string, uint64) {
	p, _ := s.feed.page("", 0)
	return p.Epoch, p.Seq
}

// Ready reports whether every live issuer has its CRLs built and its OCSP
// responder certificate issued (a readiness probe).
func (s *Service) Ready() error {
	for _, iss := range s.opts.Issuers.Issuers() {
		if _, _, err := s.CRL(iss.KeyID, true); err != nil {
			return fmt.Errorf("crl: issuer %s: %w", iss.KeyID, err)
		}
		s.ocsp.mu.RLock()
		oi := s.ocsp.issuers[iss.KeyID]
		s.ocsp.mu.RUnlock()
		if oi == nil || oi.rs.Load() == nil {
			return fmt.Errorf("crl: issuer %s: OCSP responder: %w", iss.KeyID, ErrNotReady)
		}
	}
	return nil
}
