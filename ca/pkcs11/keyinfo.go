package pkcs11

import (
	"crypto"
	"fmt"

	"github.com/ThalesIgnite/crypto11"
)

// KeyAttributes is what the token says about a private key, for the key
// ceremony's audit record: evidence that the key was generated inside the
// token and has never been readable outside it.
type KeyAttributes struct {
	Label            string
	ID               []byte
	URI              string
	Public           crypto.PublicKey
	Sensitive        bool // CKA_SENSITIVE
	AlwaysSensitive  bool // CKA_ALWAYS_SENSITIVE
	Extractable      bool // CKA_EXTRACTABLE
	NeverExtractable bool // CKA_NEVER_EXTRACTABLE
	Local            bool // CKA_LOCAL: generated on the token
}

// Sealed reports whether the key was generated on the token and can never
// leave it.
func (a KeyAttributes) Sealed() bool {
	return a.Local && a.Sensitive && a.AlwaysSensitive && !a.Extractable && a.NeverExtractable
}

// KeyAttributes reads the private key labelled label's attributes from the
// token.
func (t *Token) KeyAttributes(label string) (KeyAttributes, error) {
	s, err := t.Signer(label)
	if err != nil {
		return KeyAttributes{}, err
	}
	sg := s.(*signer)
	out := KeyAttributes{Label: label, ID: sg.id, URI: t.KeyURI(label), Public: sg.pub}
	err = t.withCtx(func(ctx *crypto11.Context, gen uint64) error {
		ref, err := sg.current(ctx, gen)
		if err != nil {
			return err
		}
		fields := []struct {
			typ crypto11.AttributeType
			dst *bool
		}{
			{crypto11.CkaSensitive, &out.Sensitive},
			{crypto11.CkaAlwaysSensitive, &out.AlwaysSensitive},
			{crypto11.CkaExtractable, &out.Extractable},
			{crypto11.CkaNeverExtractable, &out.NeverExtractable},
			{crypto11.CkaLocal, &out.Local},
		}
		types := make([]crypto11.AttributeType, len(fields))
		for i, f := range fields {
			types[i] = f.typ
		}
		set, err := ctx.GetAttributes(ref.key, types)
		if err != nil {
			return err
		}
		for _, f := range fields {
			a := set[f.typ]
			if a == nil || len(a.Value) != 1 {
				return fmt.Errorf("attribute %#x missing or malformed", f.typ)
			}
			*f.dst = a.Value[0] != 0
		}
		return nil
	})
	if err != nil {
		return KeyAttributes{}, t.wrap(fmt.Sprintf("read attributes of %q", label), err, false)
	}
	return out, nil
}

// Sealed reports whether the key labelled label was generated on the token
// and can never leave it (see KeyAttributes.Sealed).
func (t *Token) Sealed(label string) (bool, error) {
	a, err := t.KeyAttributes(label)
	if err != nil {
		return false, err
	}
	return a.Sealed(), nil
}
