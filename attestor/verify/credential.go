package verify

import (
	"fmt"
	"io"
)

// Challenge is a MakeCredential result: only the TPM holding the EK can
// recover the secret, and only for a loaded object whose Name is the AK name.
type Challenge struct {
	IDObject        []byte // TPM2B_ID_OBJECT contents
	EncryptedSecret []byte // TPM2B_ENCRYPTED_SECRET contents
}

// MakeCredential wraps secret to ek, bound to akName, in software.
func MakeCredential(rand io.Reader, ek *EK, akName, secret []byte) (*Challenge, error) {
	if ek == nil || ek.encap == nil || len(akName) == 0 || len(secret) == 0 || len(secret) > 32 {
		return nil, ErrCredentialInput
	}
	id, enc, err := tpm2CreateCredential(rand, ek, akName, secret)
	if err != nil {
		return nil, fmt.Errorf("verify: make credential: %w", err)
	}
	return &Challenge{IDObject: id, EncryptedSecret: enc}, nil
}
