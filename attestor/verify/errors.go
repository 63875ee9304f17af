package verify

import "errors"

// Sentinel errors; callers match them with errors.Is.
var (
	ErrMalformed       = errors.New("verify: malformed TPM structure")
	ErrTooLarge        = errors.New("verify: input too large")
	ErrEKAttributes    = errors.New("verify: EK is not a restricted decryption key fixed to a TPM")
	ErrEKAlgorithm     = errors.New("verify: unsupported EK algorithm")
	ErrEKCert          = errors.New("verify: EK certificate invalid")
	ErrEKCertMismatch  = errors.New("verify: EK certificate does not match EK public key")
	ErrAKAttributes    = errors.New("verify: AK is not a restricted signing key fixed to a TPM")
	ErrAKAlgorithm     = errors.New("verify: AK must be ECC NIST P-256 with ECDSA-SHA256")
	ErrQuoteSignature  = errors.New("verify: quote signature invalid")
	ErrQuoteType       = errors.New("verify: attestation is not a quote")
	ErrQuoteNonce      = errors.New("verify: quote nonce does not match")
	ErrQuoteSelection  = errors.New("verify: quote covers a different PCR selection")
	ErrPCRDigest       = errors.New("verify: PCR values do not match the quoted digest")
	ErrPCRMismatch     = errors.New("verify: PCR value does not match the golden policy")
	ErrPolicy          = errors.New("verify: invalid PCR policy")
	ErrUnknownClass    = errors.New("verify: no PCR policy for node class")
	ErrCredentialInput = errors.New("verify: invalid credential input")
)
