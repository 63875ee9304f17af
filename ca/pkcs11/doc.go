// Package pkcs11 is Palisade's only door to a hardware security module. It
// names keys with RFC 7512 pkcs11: URIs, opens a token through any vendor's
// PKCS#11 module (configuration only: module path, token, PIN source), and
// hands out crypto.Signer values whose private keys are generated inside the
// token and can never leave it (CKA_SENSITIVE, not CKA_EXTRACTABLE).
// Token.Data and Token.SetData keep small values (the audit log's anchor) in
// private data objects, which only a session holding the PIN can change.
//
// It is the only package that imports crypto11; everything else signs
// through crypto.Signer. Failures are reported with the sentinel errors in
// errors.go so callers can tell a wrong PIN from a missing token from an HSM
// that went away mid-run (ErrHSMUnavailable).
//
// A crypto11 Context does not recover once its token has gone away:
// Token.Reopen replaces it, and Signers handed out before find their keys
// again. Token.Supervise does this on its own (ping, reopen, report). Keep
// one Token per module per process: the module is only re-initialised
// when its last Token closes, and some modules (SoftHSM2) only see a
// returning token after that.
package pkcs11
