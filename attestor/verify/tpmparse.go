package verify

import (
	"bytes"
	"fmt"

	"github.com/google/go-tpm/tpm2"
)

// unmarshalCanonical parses a TPM structure and refuses trailing bytes or a
// non-canonical encoding: names and signatures are computed over the raw
// bytes, so the parsed value must be exactly what was hashed.
func unmarshalCanonical[T tpm2.Marshallable, P interface {
	*T
	tpm2.Unmarshallable
}](what string, raw []byte, max int) (v *T, err error) {
	v, err = unmarshalLimited[T, P](what, raw, max)
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(tpm2.Marshal(*v), raw) {
		return nil, fmt.Errorf("%w: %s has trailing or non-canonical bytes", ErrMalformed, what)
	}
	return v, nil
}

// unmarshalLimited parses a TPM structure without the canonical check, for
// callers that bind to the raw bytes themselves (names hash the raw bytes).
func unmarshalLimited[T tpm2.Marshallable, P interface {
	*T
	tpm2.Unmarshallable
}](what string, raw []byte, max int) (v *T, err error) {
	if len(raw) == 0 {
		return nil, fmt.Errorf("%w: %s is empty", ErrMalformed, what)
	}
	if len(raw) > max {
		return nil, fmt.Errorf("%w: %s is %d bytes (max %d)", ErrTooLarge, what, len(raw), max)
	}
	defer func() {
		// The reflection marshaller panics on some impossible values.
		if r := recover(); r != nil {
			v, err = nil, fmt.Errorf("%w: %s: %v", ErrMalformed, what, r)
		}
	}()
	v, err = tpm2.Unmarshal[T, P](raw)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrMalformed, what, err)
	}
	return v, nil
}
