package attestor

import "errors"

// Refusal reasons. Every refused attestation wraps one of these (or a
// verify sentinel); the RPC edge maps them to gRPC status codes.
var (
	ErrBadMessage      = errors.New("attestor: malformed or unexpected message")
	ErrNotInManifest   = errors.New("attestor: EK not in manifest")
	ErrBanned          = errors.New("attestor: node is banned")
	ErrNoPolicy        = errors.New("attestor: no PCR policy for node class")
	ErrActivation      = errors.New("attestor: credential activation failed (AK not bound to EK)")
	ErrNonceUnknown    = errors.New("attestor: quote nonce was never issued")
	ErrNonceReplayed   = errors.New("attestor: quote nonce already used (replay)")
	ErrNonceStale      = errors.New("attestor: quote nonce expired")
	ErrNonceSession    = errors.New("attestor: quote nonce was issued to another session")
	ErrTooManyNonces   = errors.New("attestor: too many outstanding nonces")
	ErrBusy            = errors.New("attestor: too many concurrent attestations")
	ErrHelloTimeout    = errors.New("attestor: no hello in time")
	ErrIssue           = errors.New("attestor: node SVID issuance failed")
	ErrNotFound        = errors.New("attestor: not found")
	ErrPolicyVersion   = errors.New("attestor: PCR policy version must increase")
	ErrInvalidManifest = errors.New("attestor: invalid manifest entry")
	ErrInvalidArgument = errors.New("attestor: invalid argument")
)
