package ca

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/palisade-id/palisade/ca/store"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Key labels in the HSM. Intermediate and JWT keys carry the unix time of
// their creation so successive generations never collide.
const (
	RootKeyLabel  = "palisade-root"
	AuditKeyLabel = "palisade-audit"
	interPrefix   = "palisade-int-"
	jwtPrefix     = "palisade-jwt-"
)

// jwtKeyLabel is the label of the JWT key generated with the intermediate
// key labelled interLabel.
func jwtKeyLabel(interLabel string) string {
	return jwtPrefix + strings.TrimPrefix(interLabel, interPrefix)
}

// KeyStore is the HSM as the CA uses it. Keys never leave it.
type KeyStore interface {
	GenerateSigner(label string) (crypto.Signer, error)
	Signer(label string) (crypto.Signer, error)
	KeyURI(label string) string
}

// Store is the durable state the CA needs.
type Store interface {
	InitCA(store.CAMeta, store.Intermediate) error
	CAMeta() (store.CAMeta, error)
	PutIntermediate(store.Intermediate) error
	Intermediates() ([]store.Intermediate, error)
	ActivateIntermediate(keyID string, at time.Time) error
	RecordIssued(store.CertRecord) error
	RecordCACerts() (int, error)
	BundleSequence(contents []byte, first uint64) (uint64, error)
}

// Auditor appends durable audit records.
type Auditor interface {
	Append(ctx context.Context, kind, actor string, data any) error
}

// Options are the CA's collaborators beyond Config.
type Options struct {
	Keys  KeyStore
	Store Store
	Audit Auditor
	// Now defaults to time.Now; tests drive rotation with it.
	Now func() time.Time
	// CRLURL and OCSPURL, when set, are written into every issued
	// certificate (CDP and AIA).
	CRLURL  func(issuerKeyID string) string
	OCSPURL string
	// OnIssued is called after an issuance is durable, e.g. to pre-sign an
	// OCSP response. It must not block.
	OnIssued func(store.CertRecord)
}

// slot is one intermediate generation: its X.509 CA key and its JWT key.
// The JWT key's kid is the intermediate's key ID (rec.KeyID).
type slot struct {
	rec       store.Intermediate
	cert      *x509.Certificate
	signer    crypto.Signer
	jwtSigner crypto.Signer
}

// CA issues SVIDs for one trust domain.
type CA struct {
	cfg  Config
	td   spiffeid.TrustDomain
	opts Options
	now  func() time.Time

	root       *x509.Certificate
	rootSigner crypto.Signer

	rotMu sync.Mutex // serialises Rotate

	mu       sync.RWMutex
	active   *slot
	next     *slot
	live     []*slot // every non-expired generation, for the JWT bundle
	bundleSq uint64  // the store's number for the bundle of live
}

// Load opens an initialised CA: it reads the metadata and intermediates from
// the store and finds their keys in the HSM. When no live generation holds
// the active slot (the appliance was off longer than an intermediate's
// life), it rotates at once, as Rotate does, so the CA it returns can
// issue; an expired root fails with ErrRootExpired.
func Load(cfg Config, opts Options) (*CA, error) {
	cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if opts.Keys == nil || opts.Store == nil || opts.Audit == nil {
		return nil, errors.New("ca: Keys, Store and Audit are required")
	}
	c := &CA{cfg: cfg, td: spiffeid.RequireTrustDomainFromString(cfg.TrustDomain), opts: opts, now: opts.Now}
	if c.now == nil {
		c.now = time.Now
	}
	meta, err := opts.Store.CAMeta()
	if errors.Is(err, store.ErrNotInitialized) {
		return nil, ErrNotInitialized
	}
	if err != nil {
		return nil, fmt.Errorf("ca: read metadata: %w", err)
	}
	if meta.TrustDomain != cfg.TrustDomain {
		return nil, fmt.Errorf("ca: store belongs to trust domain %q, config says %q", meta.TrustDomain, cfg.TrustDomain)
	}
	if c.root, err = x509.ParseCertificate(meta.RootCertDER); err != nil {
		return nil, fmt.Errorf("ca: stored root certificate: %w", err)
	}
	if c.rootSigner, err = opts.Keys.Signer(RootKeyLabel); err != nil {
		return nil, fmt.Errorf("ca: root key %s: %w", RootKeyLabel, err)
	}
	if !samePublicKey(c.rootSigner.Public(), c.root.PublicKey) {
		return nil, fmt.Errorf("ca: HSM key %s does not match the stored root certificate", RootKeyLabel)
	}
	// Stores from before the CA's own serials were recorded get them now.
	if _, err := opts.Store.RecordCACerts(); err != nil {
		return nil, fmt.Errorf("ca: record CA certificate serials: %w", err)
	}
	if err := c.reload(c.now()); err != nil {
		return nil, err
	}
	if c.active == nil {
		if _, err := c.Rotate(context.Background()); err != nil {
			return nil, fmt.Errorf("ca: no live active intermediate: %w", err)
		}
	}
	if c.active == nil {
		return nil, ErrNoActiveIssuer
	}
	return c, nil
}

// reload rebuilds the in-memory slots from the store, keeping the
// generations live at now, and numbers the resulting bundle.
func (c *CA) reload(now time.Time) error {
	recs, err := c.opts.Store.Intermediates()
	if err != nil {
		return fmt.Errorf("ca: read intermediates: %w", err)
	}
	var active, next *slot
	var live []*slot
	for _, r := range recs {
		if !now.Before(r.NotAfter) {
			continue
		}
		s, err := c.openSlot(r)
		if err != nil {
			return err
		}
		live = append(live, s)
		switch r.Slot {
		case store.SlotActive:
			active = s
		case store.SlotNext:
			next = s
		}
	}
	sort.Slice(live, func(i, j int) bool { return live[i].cert.NotBefore.Before(live[j].cert.NotBefore) })
	digest, err := bundleDigest(c.root, live)
	if err != nil {
		return err
	}
	// Earlier releases counted in memory from 1, at most two per generation
	// made since they started: starting above that keeps the sequence
	// increasing across the upgrade.
	seq, err := c.opts.Store.BundleSequence(digest, 2*uint64(len(recs)))
	if err != nil {
		return fmt.Errorf("ca: bundle sequence number: %w", err)
	}
	c.mu.Lock()
	c.active, c.next, c.live, c.bundleSq = active, next, live, seq
	c.mu.Unlock()
	return nil
}

func (c *CA) openSlot(r store.Intermediate) (*slot, error) {
	cert, err := x509.ParseCertificate(r.CertDER)
	if err != nil {
		return nil, fmt.Errorf("ca: intermediate %s: %w", r.KeyID, err)
	}
	label := r.KeyLabel
	if !strings.HasPrefix(label, interPrefix) {
		return nil, fmt.Errorf("ca: intermediate %s has unexpected key label %q", r.KeyID, label)
	}
	signer, err := c.opts.Keys.Signer(label)
	if err != nil {
		return nil, fmt.Errorf("ca: intermediate key %s: %w", label, err)
	}
	if !samePublicKey(signer.Public(), cert.PublicKey) {
		return nil, fmt.Errorf("ca: HSM key %s does not match intermediate %s", label, r.KeyID)
	}
	jwtLabel := jwtKeyLabel(label)
	jwtSigner, err := c.opts.Keys.Signer(jwtLabel)
	if err != nil {
		return nil, fmt.Errorf("ca: JWT key %s: %w", jwtLabel, err)
	}
	return &slot{rec: r, cert: cert, signer: signer, jwtSigner: jwtSigner}, nil
}

// TrustDomain returns the CA's trust domain.
func (c *CA) TrustDomain() spiffeid.TrustDomain { return c.td }

// Config returns the effective configuration (defaults applied).
func (c *CA) Config() Config { return c.cfg }

// Root returns the trust anchor.
func (c *CA) Root() *x509.Certificate { return c.root }

// Issuer describes one live intermediate.
type Issuer struct {
	KeyID  string
	Slot   string
	Cert   *x509.Certificate
	Signer crypto.Signer
}

// Issuers returns every live intermediate, oldest first. CRL and OCSP sign
// for each of them.
func (c *CA) Issuers() []Issuer {
	c.mu.RLock()
	defer c.mu.RUnlock()
	out := make([]Issuer, 0, len(c.live))
	for _, s := range c.live {
		out = append(out, s.issuer())
	}
	return out
}

// ActiveIssuer returns the intermediate that signs new SVIDs.
func (c *CA) ActiveIssuer() (Issuer, error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.active == nil {
		return Issuer{}, ErrNoActiveIssuer
	}
	return c.active.issuer(), nil
}

func (s *slot) issuer() Issuer {
	return Issuer{KeyID: s.rec.KeyID, Slot: s.rec.Slot, Cert: s.cert, Signer: s.signer}
}

func keyID(cert *x509.Certificate) string { return hex.EncodeToString(cert.SubjectKeyId) }

func samePublicKey(a, b crypto.PublicKey) bool {
	type equaler interface{ Equal(crypto.PublicKey) bool }
	e, ok := a.(equaler)
	return ok && e.Equal(b)
}

// svidTTL is the lifetime for a requested TTL: zero means def, negative
// fails with ErrBadTTL and more than maxTTL with ErrTTLTooLong.
func svidTTL(ttl, def, maxTTL time.Duration) (time.Duration, error) {
	switch {
	case ttl < 0:
		return 0, fmt.Errorf("%w: %s", ErrBadTTL, ttl)
	case ttl == 0:
		return def, nil
	case ttl > maxTTL:
		return 0, fmt.Errorf("%w: %s > %s", ErrTTLTooLong, ttl, maxTTL)
	}
	return ttl, nil
}

// serialBytes is the serial's entropy: 128 random bits.
const serialBytes = 16

func newSerial(rand func([]byte) (int, error)) (*big.Int, error) {
	b := make([]byte, serialBytes+1)
	if _, err := rand(b[1:]); err != nil {
		return nil, fmt.Errorf("ca: serial: %w", err)
	}
	// A leading 0x01 keeps all 128 random bits and a positive, fixed-length
	// (17-byte) DER integer.
	b[0] = 0x01
	return new(big.Int).SetBytes(b), nil
}
