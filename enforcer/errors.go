package enforcer

import "errors"

var (
	// ErrConfig reports an invalid configuration or argument.
	ErrConfig = errors.New("enforcer: invalid configuration")
	// ErrExpired reports an expiry in the past (certificate or entry).
	ErrExpired = errors.New("enforcer: expired")
	// ErrUnknownIngress: the datapath has no record of the interface an
	// admission connection arrived on.
	ErrUnknownIngress = errors.New("enforcer: ingress interface of admission connection unknown")
	// ErrPolicy reports an invalid policy file.
	ErrPolicy = errors.New("enforcer: invalid policy")
	// ErrNotAdmitted: a peer failed admission (verification, revocation,
	// trust domain, or no policy).
	ErrNotAdmitted = errors.New("enforcer: peer not admitted")
	// ErrRevoked: the peer's SVID is revoked or its node banned.
	ErrRevoked = errors.New("enforcer: SVID revoked")
	// ErrRevocationUnknown: the revocation or ban status cannot be
	// established (no current CRL). New admissions are refused; existing
	// ones are kept for AdmitterOptions.RevocationGrace.
	ErrRevocationUnknown = errors.New("enforcer: revocation status unknown")
)
