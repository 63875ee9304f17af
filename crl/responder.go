package crl

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// Pre-signed OCSP.
//
// Every unexpired certificate gets a SHA-1 CertID response signed ahead of
// time (at start, on Issued, after a revocation, and again when half its
// validity has passed), so a request is a map lookup. Signed on demand,
// bounded by Config.SignConcurrency and then cached like the rest: answers
// for serials never seen (unknown), CertIDs using another hash, and
// requests with a nonce (RFC 8954): a nonce needs a fresh signature, so
// those answers are never cached; if no signature slot frees up quickly, or
// the HSM fails, the pre-signed answer is sent without the nonce (the
// client sees "no nonce in response", not an outage).
//
// A revocation deletes the serial's cached answers before Revoke returns,
// so a revoked certificate is never answered "good" from cache. A cached
// answer is never served past its nextUpdate: past that, with the HSM
// down, clients get tryLater.

var oidOCSPNoCheck = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 48, 1, 5}

// Unsigned OCSP error responses (RFC 6960 §4.2.1).
var (
	respMalformed    = []byte{0x30, 0x03, 0x0a, 0x01, 0x01}
	respTryLater     = []byte{0x30, 0x03, 0x0a, 0x01, 0x03}
	respUnauthorized = []byte{0x30, 0x03, 0x0a, 0x01, 0x06}
)

// cached is one signed response and its precomputed HTTP headers.
type cached struct {
	der          []byte
	issuer       string
	hash         crypto.Hash // of the request's certID
	serial       []byte      // content octets
	nextUpdate   time.Time
	signedAt     time.Time // the response's thisUpdate is backdated for clock skew; this is not
	notAfter     time.Time // certificate's
	etag         string    // HTTP header values
	lastModified string
	expires      string
}

// ocspIssuer is one issuer as the responder serves it.
type ocspIssuer struct {
	iss       Issuer
	hashes    map[crypto.Hash]issuerHashes
	rs        atomic.Pointer[responseSigner]
	respCert  atomic.Pointer[x509.Certificate]
	keySigner crypto.Signer
}

type hsmSigner struct {
	s  crypto.Signer
	sp sigParams
}

func (h hsmSigner) Sign(tbs []byte) ([]byte, error) { return h.sp.sign(h.s, tbs) }

type responder struct {
	cfg   Config
	keys  KeyStore
	src   Source
	certs CertRecorder
	audit Auditor
	log   *slog.Logger
	now   func() time.Time
	sem   chan struct{}
	m     *Metrics

	mu      sync.RWMutex
	issuers map[string]*ocspIssuer // by key ID
	byKey   map[string]*ocspIssuer // hash alg byte + issuer key hash
	cache   map[string]*cached     // hash alg byte + serial content octets

	revEpoch atomic.Uint64 // bumped by every invalidate
	queue    chan presignReq
	flightMu sync.Mutex
	flight   map[string]*flightCall
}

type flightCall struct {
	done chan struct{}
	c    *cached
	err  error
}

func newResponder(cfg Config, keys KeyStore, src Source, certs CertRecorder, audit Auditor,
	log *slog.Logger, now func() time.Time, m *Metrics) *responder {
	return &responder{
		cfg: cfg, keys: keys, src: src, certs: certs, audit: audit, log: log, now: now, m: m,
		sem:     make(chan struct{}, cfg.SignConcurrency),
		issuers: map[string]*ocspIssuer{},
		byKey:   map[string]*ocspIssuer{},
		cache:   map[string]*cached{},
		queue:   make(chan presignReq, 1<<16),
		flight:  map[string]*flightCall{},
	}
}

// ResponderKeyLabel is the HSM label of an issuer's delegated OCSP key.
func ResponderKeyLabel(issuerKeyID string) string { return "palisade-ocsp-" + issuerKeyID }

// setIssuers brings the issuer set up to date, creating or renewing
// delegated responder certificates. It returns the first failure.
func (r *responder) setIssuers(ctx context.Context, list []Issuer) error {
	var firstErr error
	seen := map[string]bool{}
	for _, iss := range list {
		seen[iss.KeyID] = true
		r.mu.RLock()
		oi := r.issuers[iss.KeyID]
		r.mu.RUnlock()
		if oi == nil {
			oi = &ocspIssuer{iss: iss, hashes: map[crypto.Hash]issuerHashes{}}
			for _, h := range hashOIDs {
				ih, err := hashesFor(iss.Cert, h.hash)
				if err != nil {
					return err
				}
				oi.hashes[h.hash] = ih
			}
		}
		if err := r.ensureResponderCert(ctx, oi); err != nil {
			r.m.RefreshFailures.Add(1)
			r.log.Error("OCSP responder certificate unavailable", "issuer", iss.KeyID, "err", err)
			if firstErr == nil {
				firstErr = err
			}
			// Still registered: its requests get tryLater, not
			// unauthorized, until the HSM is back.
		}
		r.mu.Lock()
		if r.issuers[iss.KeyID] == nil {
			r.issuers[iss.KeyID] = oi
			for h, ih := range oi.hashes {
				r.byKey[hashKey(h, ih.key)] = oi
			}
		}
		r.mu.Unlock()
	}
	r.mu.Lock()
	for id, oi := range r.issuers {
		if !seen[id] {
			delete(r.issuers, id)
			for h, ih := range oi.hashes {
				delete(r.byKey, hashKey(h, ih.key))
			}
		}
	}
	r.mu.Unlock()
	return firstErr
}

// maxSerialAttempts bounds retries on a serial collision, which with 128
// random bits only a broken RNG can cause.
const maxSerialAttempts = 3

// newSerial returns a serial of 128 random bits. A leading 0x01 keeps all
// of them and a positive, fixed-length (17-byte) DER integer, as the CA's.
func newSerial() (*big.Int, error) {
	b := make([]byte, 17)
	if _, err := rand.Read(b[1:]); err != nil {
		return nil, fmt.Errorf("crl: serial: %w", err)
	}
	b[0] = 0x01
	return new(big.Int).SetBytes(b), nil
}

// ensureResponderCert issues (or renews at two thirds of its life) the
// delegated OCSP signing certificate, its key kept in the HSM. Like
// everything the CA's keys sign, it is used only once its serial is
// recorded (which refuses a serial seen before) and its issuance audited.
func (r *responder) ensureResponderCert(ctx context.Context, oi *ocspIssuer) error {
	now := r.now()
	if c := oi.respCert.Load(); c != nil {
		life := c.NotAfter.Sub(c.NotBefore)
		if now.Before(c.NotBefore.Add(life * 2 / 3)) {
			return nil
		}
	}
	label := ResponderKeyLabel(oi.iss.KeyID)
	if oi.keySigner == nil {
		s, err := r.keys.Signer(label)
		if err != nil || s == nil {
			s, err = r.keys.GenerateSigner(label)
			if err != nil {
				return fmt.Errorf("crl: OCSP responder key %s: %w", label, err)
			}
		}
		oi.keySigner = s
	}
	sp, err := signatureParams(oi.keySigner.Public())
	if err != nil {
		return err
	}
	spki, err := x509.MarshalPKIXPublicKey(oi.keySigner.Public())
	if err != nil {
		return err
	}
	var pk struct {
		Alg asn1.RawValue
		Key asn1.BitString
	}
	if _, err := asn1.Unmarshal(spki, &pk); err != nil {
		return err
	}
	keyHash := sha1.Sum(pk.Key.RightAlign())
	ski := sha256.Sum256(spki)
	notAfter := now.Add(r.cfg.ResponderCertValidity)
	if oi.iss.Cert.NotAfter.Before(notAfter) {
		notAfter = oi.iss.Cert.NotAfter
	}
	tmpl := &x509.Certificate{
		Subject: pkix.Name{
			Organization: oi.iss.Cert.Subject.Organization,
			CommonName:   "Palisade OCSP responder " + oi.iss.KeyID[:min(16, len(oi.iss.KeyID))],
		},
		NotBefore:       now.Add(-time.Minute),
		NotAfter:        notAfter,
		KeyUsage:        x509.KeyUsageDigitalSignature,
		ExtKeyUsage:     []x509.ExtKeyUsage{x509.ExtKeyUsageOCSPSigning},
		SubjectKeyId:    ski[:20],
		ExtraExtensions: []pkix.Extension{{Id: oidOCSPNoCheck, Value: []byte{0x05, 0x00}}},
	}
	var der []byte
	var cert *x509.Certificate
	for attempt := 0; ; attempt++ {
		if tmpl.SerialNumber, err = newSerial(); err != nil {
			return err
		}
		der, err = x509.CreateCertificate(rand.Reader, tmpl, oi.iss.Cert, oi.keySigner.Public(), oi.iss.Signer)
		if err != nil {
			return fmt.Errorf("crl: sign OCSP responder certificate for %s: %w", oi.iss.KeyID, err)
		}
		if cert, err = x509.ParseCertificate(der); err != nil {
			return err
		}
		err = r.certs.RecordResponderCert(ResponderCert{
			Serial: cert.SerialNumber, IssuerKeyID: oi.iss.KeyID, NotBefore: cert.NotBefore, NotAfter: cert.NotAfter,
		})
		if errors.Is(err, ErrSerialExists) && attempt+1 < maxSerialAttempts {
			continue
		}
		if err != nil {
			return fmt.Errorf("crl: record OCSP responder certificate %x for %s: %w", cert.SerialNumber, oi.iss.KeyID, err)
		}
		break
	}
	if err := r.audit.Append(ctx, "ocsp-signer.issued", "system", map[string]any{
		"serial":         cert.SerialNumber.Text(16),
		"issuer":         oi.iss.KeyID,
		"not_after":      cert.NotAfter,
		"key_label":      label,
		"subject_key_id": hex.EncodeToString(cert.SubjectKeyId),
	}); err != nil {
		return fmt.Errorf("crl: audit OCSP responder certificate %x for %s: %w", cert.SerialNumber, oi.iss.KeyID, err)
	}
	oi.respCert.Store(cert)
	oi.rs.Store(&responseSigner{
		signer:      hsmSigner{oi.keySigner, sp},
		algID:       sp.algID,
		responderID: tlv(nil, 0xa2, tlv(nil, tagOctetString, keyHash[:])),
		certs:       tlv(nil, 0xa0, tlv(nil, tagSequence, der)),
	})
	r.log.Info("OCSP responder certificate issued", "issuer", oi.iss.KeyID, "serial", cert.SerialNumber.Text(16), "not_after", cert.NotAfter)
	return nil
}

// hashKey keys a map by hash algorithm and bytes (a serial, or an issuer
// key hash).
func hashKey(h crypto.Hash, b []byte) string { return string(rune(h)) + string(b) }

// answerKey keys cached answers and signing flights: the issuer's key ID
// (hex) is part of it, so that a request naming another issuer's serial
// neither replaces nor joins this issuer's answer.
func answerKey(issuer string, h crypto.Hash, serial []byte) string {
	return issuer + "/" + hashKey(h, serial)
}

// serialContent is the DER INTEGER content octets of a non-negative serial.
func serialContent(s *big.Int) []byte { return intContent(s.Bytes()) }

// lookup returns the issuer and cached answer for req.
func (r *responder) lookup(req *Request) (*ocspIssuer, *cached) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	oi := r.byKey[hashKey(req.HashAlg, req.IssuerKeyHash)]
	if oi == nil || !bytes.Equal(oi.hashes[req.HashAlg].name, req.IssuerNameHash) {
		return nil, nil
	}
	return oi, r.cachedLocked(oi, req.HashAlg, req.Serial)
}

// cachedLocked is the answer cached for (h, serial) under oi, if any; r.mu
// is held.
func (r *responder) cachedLocked(oi *ocspIssuer, h crypto.Hash, serial []byte) *cached {
	return r.cache[answerKey(oi.iss.KeyID, h, serial)]
}

// current is the unexpired answer cached for (h, serial) under oi, if any.
func (r *responder) current(oi *ocspIssuer, h crypto.Hash, serial []byte) *cached {
	r.mu.RLock()
	c := r.cachedLocked(oi, h, serial)
	r.mu.RUnlock()
	if c == nil || !r.now().Before(c.nextUpdate) {
		return nil
	}
	return c
}

// answerFor computes the current status of serial for oi from the Source.
func (r *responder) answerFor(oi *ocspIssuer, h crypto.Hash, serial []byte) (singleAnswer, time.Time, error) {
	now := r.now()
	a := singleAnswer{
		certID:     certIDFor(h, oi.hashes[h], serial),
		status:     StatusUnknown,
		thisUpdate: now.Add(-time.Minute).Truncate(time.Second),
		nextUpdate: now.Add(r.cfg.OCSPValidity).Truncate(time.Second),
	}
	if serial[0]&0x80 != 0 { // negative: never issued
		return a, time.Time{}, nil
	}
	info, found, err := r.src.Status(new(big.Int).SetBytes(serial))
	if err != nil {
		return a, time.Time{}, fmt.Errorf("crl: certificate status: %w", err)
	}
	if !found || info.IssuerKeyID != oi.iss.KeyID {
		return a, time.Time{}, nil
	}
	if info.Revoked {
		a.status, a.revokedAt, a.reason = StatusRevoked, info.RevokedAt, info.Reason
	} else {
		a.status = StatusGood
	}
	return a, info.NotAfter, nil
}

// signCached signs and caches the answer for (h, serial) under oi.
func (r *responder) signCached(oi *ocspIssuer, h crypto.Hash, serial []byte) (*cached, error) {
	rs := oi.rs.Load()
	if rs == nil {
		return nil, fmt.Errorf("crl: no OCSP responder certificate for issuer %s", oi.iss.KeyID)
	}
	epoch := r.revEpoch.Load()
	a, notAfter, err := r.answerFor(oi, h, serial)
	if err != nil {
		return nil, err
	}
	der, err := encodeResponse(rs, a, nil, r.now())
	if err != nil {
		r.m.SignFailures.Add(1)
		return nil, fmt.Errorf("crl: sign OCSP response: %w", err)
	}
	r.m.Signatures.Add(1)
	c := &cached{
		der: der, issuer: oi.iss.KeyID, hash: h, serial: bytes.Clone(serial),
		nextUpdate: a.nextUpdate, signedAt: r.now(),
		notAfter: notAfter, etag: etagOf(der),
		lastModified: a.thisUpdate.UTC().Format(http.TimeFormat),
		expires:      a.nextUpdate.UTC().Format(http.TimeFormat),
	}
	r.mu.Lock()
	// A revocation that landed while this was signed may have been missed
	// by the status read: never cache a "good" across it. "Unknown" is
	// never cached: anyone can ask about any number of made-up serials,
	// and the cache would grow with each until its nextUpdate.
	if a.status == StatusRevoked || a.status == StatusGood && r.revEpoch.Load() == epoch {
		r.cache[answerKey(oi.iss.KeyID, h, serial)] = c
	}
	r.mu.Unlock()
	return c, nil
}

// acquire takes a signature slot, waiting at most wait.
func (r *responder) acquire(ctx context.Context, wait time.Duration) bool {
	select {
	case r.sem <- struct{}{}:
		return true
	default:
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case r.sem <- struct{}{}:
		return true
	case <-t.C:
	case <-ctx.Done():
	}
	return false
}

func (r *responder) release() { <-r.sem }

// flightFor returns the signature in flight for key (own false), or
// registers one (own true) that the caller ends with land.
func (r *responder) flightFor(key string) (f *flightCall, own bool) {
	r.flightMu.Lock()
	defer r.flightMu.Unlock()
	if f := r.flight[key]; f != nil {
		return f, false
	}
	f = &flightCall{done: make(chan struct{})}
	r.flight[key] = f
	return f, true
}

func (r *responder) land(key string, f *flightCall) {
	r.flightMu.Lock()
	delete(r.flight, key)
	r.flightMu.Unlock()
	close(f.done)
}

// miss signs an answer on demand, one signature per key however many
// requests (and the pre-sign worker) ask at once.
func (r *responder) miss(ctx context.Context, oi *ocspIssuer, h crypto.Hash, serial []byte) (*cached, error) {
	key := answerKey(oi.iss.KeyID, h, serial)
	f, own := r.flightFor(key)
	if !own {
		select {
		case <-f.done:
			return f.c, f.err
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	defer r.land(key, f)
	// A flight may have landed between the caller's lookup and this one.
	if c := r.current(oi, h, serial); c != nil {
		f.c = c
		return c, nil
	}
	if !r.acquire(ctx, 200*time.Millisecond) {
		f.err = errBusy
		return nil, f.err
	}
	defer r.release()
	f.c, f.err = r.signCached(oi, h, serial)
	return f.c, f.err
}

var errBusy = errors.New("crl: OCSP signer busy")

// invalidate drops every cached answer for serial (any issuer, any hash).
func (r *responder) invalidate(serial []byte) {
	r.mu.Lock()
	r.revEpoch.Add(1)
	for id := range r.issuers {
		for _, h := range hashOIDs {
			delete(r.cache, answerKey(id, h.hash, serial))
		}
	}
	r.mu.Unlock()
}

// presignReq asks for the SHA-1 answer of a serial of a known issuer.
type presignReq struct {
	serial []byte
	issuer string // key ID
}

// enqueue asks the pre-sign worker for a SHA-1 answer for serial.
func (r *responder) enqueue(serial []byte, issuerKeyID string) {
	select {
	case r.queue <- presignReq{serial, issuerKeyID}:
	default:
		r.m.PresignDropped.Add(1)
	}
}

// presignWorker signs queued serials until ctx ends.
func (r *responder) presignWorker(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case req := <-r.queue:
			r.presign(ctx, req)
		}
	}
}

// presign signs and caches req's answer; signCached reads its status. It
// takes the key's flight so that an on-demand signature and its own never
// race: the later would replace the answer a client was just sent, and with
// it the ETag the client revalidates with.
func (r *responder) presign(ctx context.Context, req presignReq) {
	r.mu.RLock()
	oi := r.issuers[req.issuer]
	r.mu.RUnlock()
	if oi == nil {
		return
	}
	// Slot, then flight: a request joining the flight must not wait out
	// the worker's wait for a slot, and the worker holds no slot while it
	// waits for another's flight, whose owner may need one.
	key := answerKey(req.issuer, crypto.SHA1, req.serial)
	var f *flightCall
	for {
		if !r.acquire(ctx, time.Minute) {
			return
		}
		var own bool
		if f, own = r.flightFor(key); own {
			break
		}
		r.release()
		select {
		case <-f.done:
		case <-ctx.Done():
			return
		}
	}
	defer r.release()
	defer r.land(key, f)
	// Revocation drops cached answers, so a cached answer is current
	// ("unknown" is never cached).
	if c := r.current(oi, crypto.SHA1, req.serial); c != nil {
		f.c = c
		return
	}
	if f.c, f.err = r.signCached(oi, crypto.SHA1, req.serial); f.err != nil {
		r.m.RefreshFailures.Add(1)
		r.log.Error("OCSP pre-sign failed", "serial", hex.EncodeToString(req.serial), "err", f.err)
	}
}

// refresh re-signs answers past half their validity and drops expired
// ones. It returns the number of failures.
func (r *responder) refresh(ctx context.Context) int {
	now := r.now()
	type item struct {
		key string
		c   *cached
	}
	// Scan under the read lock (requests keep being answered), then drop
	// the expired under the write lock, each only if not re-signed since.
	var due, expired []item
	r.mu.RLock()
	for k, c := range r.cache {
		// From the signing time: from the backdated thisUpdate, a short
		// validity would be re-signed at every tick.
		half := c.signedAt.Add(c.nextUpdate.Sub(c.signedAt) / 2)
		switch {
		case now.Before(half):
		case c.hash != crypto.SHA1 || (!c.notAfter.IsZero() && now.After(c.notAfter)):
			// Not worth keeping fresh: signed again on demand if asked.
			if !now.Before(c.nextUpdate) {
				expired = append(expired, item{k, c})
			}
		default:
			due = append(due, item{k, c})
		}
	}
	r.mu.RUnlock()
	if len(expired) > 0 {
		r.mu.Lock()
		for _, it := range expired {
			if r.cache[it.key] == it.c {
				delete(r.cache, it.key)
			}
		}
		r.mu.Unlock()
	}
	failures := 0
	var firstErr error
	for _, it := range due {
		if ctx.Err() != nil {
			break
		}
		r.mu.RLock()
		oi := r.issuers[it.c.issuer]
		r.mu.RUnlock()
		if oi == nil {
			continue
		}
		if !r.acquire(ctx, time.Minute) {
			break
		}
		_, err := r.signCached(oi, crypto.SHA1, it.c.serial)
		r.release()
		if err != nil {
			failures++
			if firstErr == nil {
				firstErr = err
			}
		}
	}
	if failures > 0 {
		r.m.RefreshFailures.Add(uint64(failures))
		r.log.Error("OCSP refresh failed; serving pre-signed answers until their nextUpdate",
			"failed", failures, "due", len(due), "err", firstErr)
	}
	return failures
}

// prefill queues every unexpired certificate for pre-signing, waiting for
// queue room rather than dropping (there may be more than the queue holds).
// The serials are collected first: the walk may hold a store transaction.
func (r *responder) prefill(ctx context.Context) error {
	var reqs []presignReq
	issuers := map[string]string{} // one string per issuer, not per certificate
	err := r.src.ForEachUnexpired(r.now(), func(ci CertInfo) error {
		if ci.Serial != nil && ci.Serial.Sign() >= 0 {
			id, ok := issuers[ci.IssuerKeyID]
			if !ok {
				id = ci.IssuerKeyID
				issuers[id] = id
			}
			reqs = append(reqs, presignReq{serialContent(ci.Serial), id})
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, req := range reqs {
		select {
		case r.queue <- req:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// Metrics are counters a server can export (e.g. to Prometheus).
type Metrics struct {
	Requests        atomic.Uint64 // OCSP requests answered
	CacheHits       atomic.Uint64
	Signatures      atomic.Uint64 // OCSP responses signed
	SignFailures    atomic.Uint64
	RefreshFailures atomic.Uint64 // failed pre-sign/refresh/CRL builds
	PresignDropped  atomic.Uint64
	Malformed       atomic.Uint64
	Unauthorized    atomic.Uint64
	TryLater        atomic.Uint64
	CRLBuilds       atomic.Uint64
	CRLBuildErrors  atomic.Uint64
	HTTPHandoffs    atomic.Uint64 // connections HTTPServer gave to net/http
}
