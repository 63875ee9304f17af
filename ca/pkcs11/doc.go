// Package pkcs11 is Palisade's only door to a hardware security module. It
// names keys with RFC 7512 pkcs11: URIs, opens a token through any vendor's
// PKCS#11 module (configuration only: module path, token, PIN source), and
// hands out crypto.Signer values whose private keys are generated inside the
// token and can never leave it (CKA_SENSITIVE, not CKA_EXTRACTABLE).
//
// It is the only package that imports crypto11; everything else signs
// through crypto.Signer. Failures are reported with the sentinel errors in
// errors.go so callers can tell a wrong PIN from a missing token from an HSM
// that went away mid-run (ErrHSMUnavailable, recovered with Token.Reopen).
package pkcs11
