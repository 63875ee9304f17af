package pkcs11

import (
	"crypto"
	"errors"
	"fmt"
	"io"
	"sync/atomic"

	"github.com/ThalesIgnite/crypto11"
)

// keyRef is a key handle valid for one generation of the Token's Context.
type keyRef struct {
	key crypto11.Signer
	gen uint64
}

// signer is a crypto.Signer backed by a key pair on a Token. It survives
// Token.Reopen: on first use after one it finds its key again by CKA_ID and
// label and checks the public key did not change.
type signer struct {
	t     *Token
	label string
	id    []byte
	pub   crypto.PublicKey
	ref   atomic.Pointer[keyRef]
}

func (t *Token) newSigner(label string, id []byte, k crypto11.Signer, gen uint64) *signer {
	s := &signer{t: t, label: label, id: id, pub: k.Public()}
	ref := &keyRef{key: k, gen: gen}
	s.ref.Store(ref)
	t.probe.Store(s)
	return s
}

func (s *signer) Public() crypto.PublicKey { return s.pub }

// Sign signs digest inside the token. ECDSA signatures are ASN.1 DER, as
// crypto/ecdsa produces them. Failures meaning the token went away wrap
// ErrHSMUnavailable.
func (s *signer) Sign(rand io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	if opts != nil {
		if h := opts.HashFunc(); h != 0 && len(digest) != h.Size() {
			return nil, fmt.Errorf("pkcs11: sign with %q: digest is %d bytes, %v needs %d", s.label, len(digest), h, h.Size())
		}
	}
	var sig []byte
	err := s.t.withCtx(func(ctx *crypto11.Context, gen uint64) error {
		ref, err := s.current(ctx, gen)
		if err != nil {
			return err
		}
		sig, err = ref.key.Sign(rand, digest, opts)
		return err
	})
	if err != nil {
		err = s.t.wrap(fmt.Sprintf("sign with %q", s.label), err, false)
		if errors.Is(err, ErrHSMUnavailable) {
			s.t.kickSupervisor()
		}
		return nil, err
	}
	return sig, nil
}

// current returns the key handle for this Context generation, finding the
// key again after a Reopen.
func (s *signer) current(ctx *crypto11.Context, gen uint64) (*keyRef, error) {
	if ref := s.ref.Load(); ref.gen == gen {
		return ref, nil
	}
	var lbl []byte
	if s.label != "" {
		lbl = []byte(s.label)
	}
	keys, err := ctx.FindKeyPairs(s.id, lbl)
	if err != nil {
		return nil, err
	}
	if len(keys) != 1 {
		return nil, fmt.Errorf("%w: %s: %d key pairs after reopen", ErrKeyNotFound, describeKey(s.label, s.id), len(keys))
	}
	eq, ok := s.pub.(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !eq.Equal(keys[0].Public()) {
		return nil, fmt.Errorf("%w: %s: public key changed after reopen", ErrKeyNotFound, describeKey(s.label, s.id))
	}
	ref := &keyRef{key: keys[0], gen: gen}
	s.ref.Store(ref)
	return ref, nil
}
