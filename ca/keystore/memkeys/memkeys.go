package memkeys

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
)

var (
	// ErrKeyNotFound: no key with that label.
	ErrKeyNotFound = errors.New("memkeys: key not found")
	// ErrKeyExists: a key with that label already exists.
	ErrKeyExists = errors.New("memkeys: key already exists")
)

// Store holds ECDSA keys in memory. It is safe for concurrent use.
type Store struct {
	curve elliptic.Curve
	name  string

	mu   sync.RWMutex
	keys map[string]*ecdsa.PrivateKey
	fail error
}

// Option configures New.
type Option func(*Store)

// WithCurve sets the curve GenerateSigner uses (default P-256).
func WithCurve(c elliptic.Curve) Option { return func(s *Store) { s.curve = c } }

// WithName sets the token name KeyURI reports (default "memkeys").
func WithName(name string) Option { return func(s *Store) { s.name = name } }

// New returns an empty Store.
func New(opts ...Option) *Store {
	s := &Store{curve: elliptic.P256(), name: "memkeys", keys: map[string]*ecdsa.PrivateKey{}}
	for _, o := range opts {
		o(s)
	}
	return s
}

// GenerateSigner creates a key labelled label; ErrKeyExists if it exists.
func (s *Store) GenerateSigner(label string) (crypto.Signer, error) {
	if label == "" {
		return nil, errors.New("memkeys: empty key label")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fail != nil {
		return nil, fmt.Errorf("memkeys: generate %q: %w", label, s.fail)
	}
	if _, ok := s.keys[label]; ok {
		return nil, fmt.Errorf("%w: %q", ErrKeyExists, label)
	}
	k, err := ecdsa.GenerateKey(s.curve, rand.Reader)
	if err != nil {
		return nil, err
	}
	s.keys[label] = k
	return &signer{s: s, label: label, key: k}, nil
}

// Signer returns the key labelled label; ErrKeyNotFound if there is none.
func (s *Store) Signer(label string) (crypto.Signer, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.fail != nil {
		return nil, fmt.Errorf("memkeys: find %q: %w", label, s.fail)
	}
	k, ok := s.keys[label]
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrKeyNotFound, label)
	}
	return &signer{s: s, label: label, key: k}, nil
}

// DeleteKey removes the key labelled label if its public key is pub, as
// the HSM backend destroys a key pair; ErrKeyNotFound otherwise. Signers
// handed out for it fail afterwards.
func (s *Store) DeleteKey(label string, pub crypto.PublicKey) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fail != nil {
		return fmt.Errorf("memkeys: delete %q: %w", label, s.fail)
	}
	k, ok := s.keys[label]
	if !ok || !k.PublicKey.Equal(pub) {
		return fmt.Errorf("%w: %q with that public key", ErrKeyNotFound, label)
	}
	delete(s.keys, label)
	return nil
}

// KeyURI returns a pkcs11: URI naming the key, shaped like the HSM's.
func (s *Store) KeyURI(label string) string {
	return "pkcs11:token=" + escape(s.name) + ";object=" + escape(label) + ";type=private"
}

// Ping reports the simulated failure, if any.
func (s *Store) Ping() error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.fail != nil {
		return fmt.Errorf("memkeys: ping: %w", s.fail)
	}
	return nil
}

// Reopen is a no-op that reports the simulated failure, like reopening a
// token that is still gone.
func (s *Store) Reopen() error { return s.Ping() }

// SetFailure makes every operation (Sign of Signers already handed out
// included) fail with an error wrapping err, until SetFailure(nil): pass
// pkcs11.ErrHSMUnavailable to rehearse an HSM outage.
func (s *Store) SetFailure(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fail = err
}

// Labels lists the stored labels.
func (s *Store) Labels() []string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]string, 0, len(s.keys))
	for l := range s.keys {
		out = append(out, l)
	}
	return out
}

// signer hides the private key behind crypto.Signer, as an HSM key is.
type signer struct {
	s     *Store
	label string
	key   *ecdsa.PrivateKey
}

func (k *signer) Public() crypto.PublicKey { return &k.key.PublicKey }

func (k *signer) Sign(r io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	if opts != nil {
		if h := opts.HashFunc(); h != 0 && len(digest) != h.Size() {
			return nil, fmt.Errorf("memkeys: sign with %q: digest is %d bytes, %v needs %d", k.label, len(digest), h, h.Size())
		}
	}
	k.s.mu.RLock()
	fail, live := k.s.fail, k.s.keys[k.label] == k.key
	k.s.mu.RUnlock()
	if fail != nil {
		return nil, fmt.Errorf("memkeys: sign with %q: %w", k.label, fail)
	}
	if !live {
		return nil, fmt.Errorf("%w: sign with deleted key %q", ErrKeyNotFound, k.label)
	}
	if r == nil {
		r = rand.Reader
	}
	return ecdsa.SignASN1(r, k.key, digest)
}

// escape percent-encodes what RFC 7512 does not allow in a path attribute.
func escape(v string) string {
	var b strings.Builder
	for i := 0; i < len(v); i++ {
		c := v[i]
		if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("-._~:[]@!$'()*+,=", c) >= 0 {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}
