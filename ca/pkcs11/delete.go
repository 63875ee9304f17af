package pkcs11

import (
	"crypto"
	"fmt"

	"github.com/ThalesIgnite/crypto11"
)

// DeleteKey destroys the key pair labelled label whose public key is pub,
// both halves. It exists to undo a generation that must not stand (a
// refused key ceremony): naming the public key as well as the label means
// only the key the caller generated can go, never another one that shares
// its label. ErrKeyNotFound if no key pair labelled label has public key
// pub. Signers handed out for the key must not be used afterwards.
func (t *Token) DeleteKey(label string, pub crypto.PublicKey) error {
	if err := validLabel(label); err != nil {
		return err
	}
	want, ok := pub.(interface{ Equal(crypto.PublicKey) bool })
	if !ok {
		return fmt.Errorf("pkcs11: delete key %q: cannot compare a %T public key", label, pub)
	}
	// Not concurrently with a GenerateSigner checking the same label.
	genMu.Lock()
	defer genMu.Unlock()
	err := t.withCtx(func(ctx *crypto11.Context, gen uint64) error {
		pairs, err := ctx.FindKeyPairs(nil, []byte(label))
		if err != nil {
			return err
		}
		var match []crypto11.Signer
		for _, k := range pairs {
			if want.Equal(k.Public()) {
				match = append(match, k)
			}
		}
		switch len(match) {
		case 0:
			return fmt.Errorf("%w: label %q with that public key on %s", ErrKeyNotFound, label, t)
		case 1:
		default:
			return fmt.Errorf("%w: %d key pairs labelled %q share that public key on %s", ErrKeyAmbiguous, len(match), label, t)
		}
		// Ping reads the probe key's handle: it must not report the token
		// gone because this key is.
		if p := t.probe.Load(); p != nil && p.label == label && want.Equal(p.pub) {
			t.probe.CompareAndSwap(p, nil)
		}
		if err := match[0].Delete(); err != nil {
			return fmt.Errorf("destroy key pair %q: %w", label, err)
		}
		return nil
	})
	if err != nil {
		return t.wrap("delete key", err, false)
	}
	return nil
}
