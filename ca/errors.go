package ca

import (
	"errors"
	"slices"
)

// Errors returned by the CA. Callers match them with errors.Is; the wrapped
// message names the offending value.
var (
	ErrAlreadyInitialized = errors.New("ca: appliance already initialised")
	ErrNotInitialized     = errors.New("ca: appliance not initialised (run `palisade ceremony init`)")
	ErrMalformedCSR       = errors.New("ca: malformed CSR")
	ErrCSRTooLarge        = errors.New("ca: CSR too large")
	ErrCSRSignature       = errors.New("ca: CSR signature invalid")
	ErrCSRKey             = errors.New("ca: CSR public key not acceptable")
	ErrURISANCount        = errors.New("ca: an X509-SVID CSR must carry exactly one URI SAN")
	ErrInvalidSPIFFEID    = errors.New("ca: invalid SPIFFE ID")
	ErrForeignTrustDomain = errors.New("ca: SPIFFE ID outside this trust domain")
	ErrIDMismatch         = errors.New("ca: CSR SPIFFE ID differs from the authorised ID")
	ErrTTLTooLong         = errors.New("ca: requested TTL exceeds the maximum")
	ErrBadTTL             = errors.New("ca: TTL must not be negative")
	ErrBadAudience        = errors.New("ca: JWT-SVID needs at least one audience")
	ErrNoActiveIssuer     = errors.New("ca: no usable intermediate")
)

// requestErrors are the errors that blame the caller's request rather than
// the CA: a bad CSR, SPIFFE ID, TTL or audience.
var requestErrors = []error{
	ErrMalformedCSR, ErrCSRTooLarge, ErrCSRSignature, ErrCSRKey,
	ErrURISANCount, ErrInvalidSPIFFEID, ErrForeignTrustDomain, ErrIDMismatch,
	ErrTTLTooLong, ErrBadTTL, ErrBadAudience,
}

// RequestErrors returns (in a new slice) the errors that mean the caller's
// request was wrong, so a server answers them as a client error (HTTP 400,
// gRPC InvalidArgument).
func RequestErrors() []error { return slices.Clone(requestErrors) }

// IsRequestError reports whether err matches (errors.Is) one of
// RequestErrors.
func IsRequestError(err error) bool {
	for _, e := range requestErrors {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}
