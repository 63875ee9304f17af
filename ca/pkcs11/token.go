package pkcs11

import (
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/ThalesIgnite/crypto11"
	p11 "github.com/miekg/pkcs11"
)

// Option configures Open.
type Option func(*options)

type options struct {
	alg         Algorithm
	pin         *string
	maxSessions int
	sessionWait time.Duration
	moduleDirs  []string
}

// WithAlgorithm sets the algorithm GenerateSigner uses (default ECDSAP256).
func WithAlgorithm(a Algorithm) Option { return func(o *options) { o.alg = a } }

// WithPIN supplies the PIN directly (an operator typing it during a
// ceremony), overriding the URI's pin-source and pin-value.
func WithPIN(pin string) Option { return func(o *options) { o.pin = &pin } }

// WithMaxSessions bounds the PKCS#11 sessions the Token opens (at least 2;
// one is held to keep the login alive). Zero keeps crypto11's default.
func WithMaxSessions(n int) Option { return func(o *options) { o.maxSessions = n } }

// WithSessionWait bounds how long an operation waits for a free session.
// Zero waits indefinitely.
func WithSessionWait(d time.Duration) Option { return func(o *options) { o.sessionWait = d } }

// WithModuleDirs sets where a URI's module-name is looked up
// (default DefaultModuleDirs).
func WithModuleDirs(dirs ...string) Option { return func(o *options) { o.moduleDirs = dirs } }

// genMu makes "is the label free? then create" atomic for all Tokens of
// this process. Key generation is rare; other processes sharing the token
// are not covered.
var genMu sync.Mutex

// Token is an open, logged-in PKCS#11 token. It is safe for concurrent use.
type Token struct {
	uri    *URI // the token-selecting part of the URI Open got, no PIN value
	module string
	pin    string
	opts   options

	label string   // the token's label, fixed at Open
	raw   *p11.Ctx // module handle of our own for C_GetTokenInfo in Ping

	mu      sync.RWMutex // write-held by Close and Reopen
	ctx     *crypto11.Context
	gen     uint64 // incremented by every successful (re)open
	found   found
	lastErr error // why ctx is nil after a failed Reopen
	closed  bool

	probe atomic.Pointer[signer] // a key Ping reads
	kick  chan struct{}          // wakes Supervise
}

// Open loads the module the URI names (module-path, or module-name looked up
// in WithModuleDirs), selects the one token matching its token attributes
// (token, serial, manufacturer, model, slot-*), and logs in with the PIN
// from WithPIN, pin-source or pin-value. Object attributes in u are
// ignored. Errors wrap ErrModule, ErrTokenNotFound, ErrTokenAmbiguous,
// ErrPIN, ErrPINIncorrect or ErrPINLocked.
func Open(u *URI, opts ...Option) (*Token, error) {
	if u == nil {
		return nil, fmt.Errorf("%w: nil URI", ErrInvalidURI)
	}
	o := options{alg: ECDSAP256, moduleDirs: DefaultModuleDirs}
	for _, opt := range opts {
		opt(&o)
	}
	if _, err := o.alg.curve(); err != nil {
		return nil, err
	}
	if o.maxSessions == 1 || o.maxSessions < 0 {
		return nil, fmt.Errorf("pkcs11: max sessions %d: want 0 (default) or at least 2", o.maxSessions)
	}
	if !hasTokenSelector(u) {
		return nil, fmt.Errorf("%w: %s selects no token (give token=, serial= or slot-id=)", ErrInvalidURI, u)
	}
	module, err := resolveModule(u, o.moduleDirs)
	if err != nil {
		return nil, err
	}
	var pin string
	switch {
	case o.pin != nil:
		pin = *o.pin
	case u.PinSource != "" || u.PinValue != "":
		if pin, err = u.PIN(); err != nil {
			return nil, err
		}
	}
	sel := &URI{Token: u.Token, Manufacturer: u.Manufacturer, Serial: u.Serial, Model: u.Model,
		LibraryManufacturer: u.LibraryManufacturer, LibraryDescription: u.LibraryDescription,
		LibraryVersion: u.LibraryVersion, SlotDescription: u.SlotDescription,
		SlotManufacturer: u.SlotManufacturer, Slot: u.Slot,
		ModulePath: u.ModulePath, ModuleName: u.ModuleName, PinSource: u.PinSource}
	t := &Token{uri: sel, module: module, pin: pin, opts: o, kick: make(chan struct{}, 1)}
	if err := t.open(); err != nil {
		return nil, err
	}
	t.label = clean(t.found.info.Label)
	// The module is initialised now; this handle only maps it, so it
	// survives Reopen's finalise and initialise.
	if t.raw = p11.New(module); t.raw == nil {
		t.Close()
		return nil, fmt.Errorf("%w: %s: cannot load library a second time", ErrModule, module)
	}
	return t, nil
}

// open configures a fresh crypto11 Context. The caller holds t.mu or owns t.
func (t *Token) open() error {
	lockRegistry()
	defer unlockRegistry()
	f, err := preflight(t.module, t.uri, t.pin)
	if err != nil {
		return err
	}
	slot := int(f.slot)
	ctx, err := crypto11.Configure(&crypto11.Config{
		Path:              t.module,
		SlotNumber:        &slot,
		Pin:               t.pin,
		MaxSessions:       t.opts.maxSessions,
		PoolWaitTimeout:   t.opts.sessionWait,
		LoginNotSupported: t.pin == "" && !f.loginRequired,
	})
	if err != nil {
		return fmt.Errorf("token %q in module %s: %w", clean(f.info.Label), t.module, classify(err))
	}
	registry.modules[t.module]++
	if t.pin != "" {
		key := tokenKey(t.module, f.info)
		rec := registry.logins[key]
		if rec == nil {
			rec = &loginRecord{pinHash: sha256.Sum256([]byte(t.pin))}
			registry.logins[key] = rec
		}
		rec.n++
	}
	t.ctx, t.found, t.lastErr = ctx, f, nil
	t.gen++
	return nil
}

// closeCtx closes the current Context. The caller holds t.mu.
func (t *Token) closeCtx() error {
	if t.ctx == nil {
		return nil
	}
	lockRegistry()
	defer unlockRegistry()
	err := t.ctx.Close()
	t.ctx = nil
	registry.modules[t.module]--
	if t.pin != "" {
		key := tokenKey(t.module, t.found.info)
		if rec := registry.logins[key]; rec != nil {
			if rec.n--; rec.n <= 0 {
				delete(registry.logins, key)
			}
		}
	}
	if err != nil {
		return fmt.Errorf("pkcs11: close %s: %w", t, err)
	}
	return nil
}

// Close logs out and releases the token. Signers fail with ErrClosed after.
func (t *Token) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil
	}
	t.closed = true
	err := t.closeCtx()
	t.raw.Destroy()
	return err
}

// Reopen closes the PKCS#11 context and configures a new one: the way back
// after ErrHSMUnavailable (a crypto11 Context does not heal by itself once
// the token has gone away). Signers handed out before find their key again
// on first use. If the module is still loaded by another open Token in this
// process it is not re-initialised, which some modules need to see a
// returning token; close every Token of that module for a full reset.
func (t *Token) Reopen() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return ErrClosed
	}
	_ = t.closeCtx() // the old Context is broken; its Close error says nothing new
	if err := t.open(); err != nil {
		t.lastErr = err
		return fmt.Errorf("pkcs11: reopen: %w", err)
	}
	return nil
}

// String names the token and module, for errors and logs.
func (t *Token) String() string {
	return fmt.Sprintf("token %q (module %s)", t.label, t.module)
}

// withCtx runs f with the current Context, holding it open.
func (t *Token) withCtx(f func(ctx *crypto11.Context, gen uint64) error) error {
	t.mu.RLock()
	defer t.mu.RUnlock()
	switch {
	case t.closed:
		return fmt.Errorf("%w: %s", ErrClosed, t)
	case t.ctx == nil:
		return fmt.Errorf("%w: %s needs Reopen: %w", ErrHSMUnavailable, t, t.lastErr)
	}
	return f(t.ctx, t.gen)
}

// Ping checks that the token still answers: the slot still holds this
// token (C_GetTokenInfo), a session operation works (C_GenerateRandom) and,
// once a key has been handed out, that key's handle can be read, which
// fails when the token's objects have gone away. It wraps ErrHSMUnavailable
// or ErrClosed.
func (t *Token) Ping() error {
	err := t.withCtx(func(ctx *crypto11.Context, gen uint64) error {
		ti, err := t.raw.GetTokenInfo(t.found.slot)
		if err != nil {
			return fmt.Errorf("C_GetTokenInfo: %w", err)
		}
		if clean(ti.Label) != t.label || clean(ti.SerialNumber) != clean(t.found.info.SerialNumber) {
			return fmt.Errorf("slot %d now holds token %q serial %q", t.found.slot, clean(ti.Label), clean(ti.SerialNumber))
		}
		r, err := ctx.NewRandomReader()
		if err != nil {
			return err
		}
		var b [1]byte
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return fmt.Errorf("C_GenerateRandom: %w", err)
		}
		if s := t.probe.Load(); s != nil {
			ref, err := s.current(ctx, gen)
			if err != nil {
				return fmt.Errorf("find key %q: %w", s.label, err)
			}
			if _, err := ctx.GetAttribute(ref.key, crypto11.CkaSign); err != nil {
				return fmt.Errorf("read key %q: %w", s.label, err)
			}
		}
		return nil
	})
	if err != nil {
		return t.wrap("ping", err, true)
	}
	return nil
}

// KeyURI returns the RFC 7512 URI of the private key labelled label on this
// token: token attributes, object, type=private, and the module-path or
// module-name and pin-source Open was given (never a PIN value).
func (t *Token) KeyURI(label string) string {
	u := *t.uri
	u.Object, u.Type = label, "private"
	if u.Token == "" {
		u.Token = t.label
	}
	return u.String()
}

// GenerateSigner creates a key pair of the Token's default algorithm (see
// WithAlgorithm) inside the token.
func (t *Token) GenerateSigner(label string) (crypto.Signer, error) {
	return t.GenerateSignerAlg(label, t.opts.alg)
}

// GenerateSignerAlg creates a key pair labelled label inside the token: a
// token object, private, sensitive, never extractable, for signing only,
// with a random 16-byte CKA_ID. ErrKeyExists if a key pair already has
// that label.
func (t *Token) GenerateSignerAlg(label string, alg Algorithm) (crypto.Signer, error) {
	if err := validLabel(label); err != nil {
		return nil, err
	}
	curve, err := alg.curve()
	if err != nil {
		return nil, err
	}
	id := make([]byte, 16)
	if _, err := rand.Read(id); err != nil {
		return nil, err
	}
	genMu.Lock()
	defer genMu.Unlock()
	var s *signer
	err = t.withCtx(func(ctx *crypto11.Context, gen uint64) error {
		existing, err := ctx.FindKeyPairs(nil, []byte(label))
		if err != nil {
			return err
		}
		if len(existing) > 0 {
			return fmt.Errorf("%w: %q on %s", ErrKeyExists, label, t)
		}
		pub, err := crypto11.NewAttributeSetWithIDAndLabel(id, []byte(label))
		if err != nil {
			return err
		}
		priv := pub.Copy()
		for typ, v := range map[crypto11.AttributeType]any{
			crypto11.CkaToken: true, crypto11.CkaVerify: true, crypto11.CkaPrivate: false,
		} {
			if err := pub.Set(typ, v); err != nil {
				return err
			}
		}
		for typ, v := range map[crypto11.AttributeType]any{
			crypto11.CkaToken: true, crypto11.CkaPrivate: true, crypto11.CkaSensitive: true,
			crypto11.CkaExtractable: false, crypto11.CkaSign: true,
			// Signing only: no ECDH, no unwrapping other keys into the token.
			crypto11.CkaDerive: false, crypto11.CkaDecrypt: false, crypto11.CkaUnwrap: false,
		} {
			if err := priv.Set(typ, v); err != nil {
				return err
			}
		}
		k, err := ctx.GenerateECDSAKeyPairWithAttributes(pub, priv, curve)
		if err != nil {
			return fmt.Errorf("generate %v key %q: %w", alg, label, err)
		}
		s = t.newSigner(label, id, k, gen)
		return nil
	})
	if err != nil {
		return nil, t.wrap("generate key", err, false)
	}
	return s, nil
}

// Signer returns the key pair labelled label. ErrKeyNotFound if there is
// none, ErrKeyAmbiguous if several key pairs share the label.
func (t *Token) Signer(label string) (crypto.Signer, error) {
	if err := validLabel(label); err != nil {
		return nil, err
	}
	return t.find(label, nil)
}

// SignerByURI returns the key pair u names by object and/or id. u may
// repeat the token's attributes; they must then match this token.
func (t *Token) SignerByURI(u *URI) (crypto.Signer, error) {
	if u == nil {
		return nil, fmt.Errorf("%w: nil URI", ErrInvalidURI)
	}
	if u.Type != "" && u.Type != "private" {
		return nil, fmt.Errorf("%w: %s has type=%s; a signer needs type=private", ErrInvalidURI, u, u.Type)
	}
	if u.Object == "" && len(u.ID) == 0 {
		return nil, fmt.Errorf("%w: %s names no key (give object= or id=)", ErrInvalidURI, u)
	}
	t.mu.RLock()
	f := t.found
	t.mu.RUnlock()
	eq := func(want, have string) bool { return want == "" || want == clean(have) }
	if !eq(u.Token, f.info.Label) || !eq(u.Serial, f.info.SerialNumber) ||
		!eq(u.Manufacturer, f.info.ManufacturerID) || !eq(u.Model, f.info.Model) {
		return nil, fmt.Errorf("%w: %s names another token than %s", ErrInvalidURI, u, t)
	}
	return t.find(u.Object, u.ID)
}

func (t *Token) find(label string, id []byte) (crypto.Signer, error) {
	var lbl []byte
	if label != "" {
		lbl = []byte(label)
	}
	var s *signer
	err := t.withCtx(func(ctx *crypto11.Context, gen uint64) error {
		keys, err := ctx.FindKeyPairs(id, lbl)
		if err != nil {
			return err
		}
		switch len(keys) {
		case 0:
			return nil
		case 1:
		default:
			return fmt.Errorf("%w: %d key pairs match %s on %s", ErrKeyAmbiguous, len(keys), describeKey(label, id), t)
		}
		k := keys[0]
		if id == nil {
			a, err := ctx.GetAttribute(k, crypto11.CkaId)
			if err != nil {
				return err
			}
			if a != nil {
				id = a.Value
			}
		}
		if label == "" {
			a, err := ctx.GetAttribute(k, crypto11.CkaLabel)
			if err != nil {
				return err
			}
			if a != nil {
				label = string(a.Value)
			}
		}
		s = t.newSigner(label, id, k, gen)
		return nil
	})
	if err != nil {
		return nil, t.wrap("find key", err, false)
	}
	if s == nil {
		// crypto11 reports a vanished token as "no keys": tell them apart.
		if perr := t.Ping(); perr != nil {
			return nil, fmt.Errorf("find key %s: %w", describeKey(label, id), perr)
		}
		return nil, fmt.Errorf("%w: %s on %s", ErrKeyNotFound, describeKey(label, id), t)
	}
	return s, nil
}

func describeKey(label string, id []byte) string {
	switch {
	case label != "" && id != nil:
		return fmt.Sprintf("label %q id %x", label, id)
	case id != nil:
		return fmt.Sprintf("id %x", id)
	}
	return fmt.Sprintf("label %q", label)
}

func validLabel(label string) error {
	if label == "" || !utf8.ValidString(label) || strings.ContainsRune(label, 0) {
		return fmt.Errorf("pkcs11: key label %q must be non-empty UTF-8 without NUL", label)
	}
	return nil
}

// wrap adds the operation and token to err and classifies PKCS#11 return
// values into the package's sentinels. unavailable marks every failure as
// ErrHSMUnavailable (for Ping).
func (t *Token) wrap(op string, err error, unavailable bool) error {
	if errors.Is(err, ErrClosed) || errors.Is(err, ErrHSMUnavailable) || errors.Is(err, ErrKeyExists) ||
		errors.Is(err, ErrKeyAmbiguous) || errors.Is(err, ErrKeyNotFound) {
		return fmt.Errorf("pkcs11: %s: %w", op, err)
	}
	c := classify(err)
	if unavailable && !errors.Is(c, ErrHSMUnavailable) {
		c = fmt.Errorf("%w: %w", ErrHSMUnavailable, err)
	}
	return fmt.Errorf("pkcs11: %s on %s: %w", op, t, c)
}

// unavailableCodes are return values meaning the token, its session or its
// objects went away: nothing but a Reopen helps.
var unavailableCodes = map[p11.Error]bool{
	p11.CKR_OBJECT_HANDLE_INVALID:        true,
	p11.CKR_KEY_HANDLE_INVALID:           true,
	p11.CKR_SESSION_HANDLE_INVALID:       true,
	p11.CKR_SESSION_CLOSED:               true,
	p11.CKR_SESSION_COUNT:                false,
	p11.CKR_DEVICE_REMOVED:               true,
	p11.CKR_DEVICE_ERROR:                 true,
	p11.CKR_DEVICE_MEMORY:                true,
	p11.CKR_TOKEN_NOT_PRESENT:            true,
	p11.CKR_TOKEN_NOT_RECOGNIZED:         true,
	p11.CKR_USER_NOT_LOGGED_IN:           true,
	p11.CKR_CRYPTOKI_NOT_INITIALIZED:     true,
	p11.CKR_SLOT_ID_INVALID:              true,
	p11.CKR_GENERAL_ERROR:                true,
	p11.CKR_FUNCTION_FAILED:              false,
	p11.CKR_CRYPTOKI_ALREADY_INITIALIZED: false,
}

// classify wraps err with the sentinel its PKCS#11 return value maps to.
func classify(err error) error {
	var pe p11.Error
	if errors.As(err, &pe) {
		switch {
		case pe == p11.CKR_PIN_INCORRECT:
			return fmt.Errorf("%w: %w", ErrPINIncorrect, err)
		case pe == p11.CKR_PIN_LOCKED:
			return fmt.Errorf("%w: %w", ErrPINLocked, err)
		case pe == p11.CKR_PIN_LEN_RANGE, pe == p11.CKR_PIN_INVALID:
			return fmt.Errorf("%w: %w", ErrPINIncorrect, err)
		case unavailableCodes[pe]:
			return fmt.Errorf("%w: %w", ErrHSMUnavailable, err)
		}
		return err
	}
	if msg := err.Error(); strings.Contains(msg, "context is closed") || strings.Contains(msg, "closed Context") {
		return fmt.Errorf("%w: %w", ErrHSMUnavailable, err)
	}
	return err
}
