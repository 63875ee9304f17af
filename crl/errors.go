package crl

import "errors"

// Errors returned by the package. Match them with errors.Is.
var (
	ErrBadReason        = errors.New("crl: invalid revocation reason")
	ErrBadSerial        = errors.New("crl: invalid serial number")
	ErrBadNodeID        = errors.New("crl: empty node ID")
	ErrUnknownIssuer    = errors.New("crl: unknown issuer")
	ErrNotReady         = errors.New("crl: not built yet")
	ErrMalformedRequest = errors.New("crl: malformed OCSP request")
	ErrRequestTooLarge  = errors.New("crl: OCSP request too large")
	ErrNoCRL            = errors.New("crl: no verified CRL for this issuer")
	ErrBadCRL           = errors.New("crl: CRL rejected")
	ErrStaleCRL         = errors.New("crl: CRL past its nextUpdate")
	// ErrSerialExists: a CertRecorder refused a serial it had recorded
	// before; the certificate was never used.
	ErrSerialExists = errors.New("crl: certificate serial already recorded")
)
