package pkcs11

import "errors"

// Sentinel errors. Errors returned by this package wrap them with %w and a
// message naming the module, token or key involved; underlying PKCS#11
// return values (github.com/miekg/pkcs11.Error) stay reachable with
// errors.As.
var (
	// ErrInvalidURI: a pkcs11: URI that does not parse or lacks what the
	// operation needs.
	ErrInvalidURI = errors.New("pkcs11: invalid URI")
	// ErrPIN: the PIN could not be obtained (pin-source unreadable, no PIN
	// given for a token that requires login).
	ErrPIN = errors.New("pkcs11: PIN unavailable")
	// ErrModule: the PKCS#11 module could not be loaded or initialised.
	ErrModule = errors.New("pkcs11: cannot load PKCS#11 module")
	// ErrTokenNotFound: no token in the module matches the URI.
	ErrTokenNotFound = errors.New("pkcs11: token not found")
	// ErrTokenAmbiguous: more than one token matches the URI.
	ErrTokenAmbiguous = errors.New("pkcs11: more than one token matches")
	// ErrPINIncorrect: the token rejected the PIN (CKR_PIN_INCORRECT).
	ErrPINIncorrect = errors.New("pkcs11: PIN incorrect")
	// ErrPINLocked: the token locked the user PIN (CKR_PIN_LOCKED).
	ErrPINLocked = errors.New("pkcs11: PIN locked")
	// ErrKeyNotFound: no key pair with that label or id on the token.
	ErrKeyNotFound = errors.New("pkcs11: key not found")
	// ErrKeyExists: a key pair with that label already exists.
	ErrKeyExists = errors.New("pkcs11: key already exists")
	// ErrKeyAmbiguous: several key pairs match a label or id.
	ErrKeyAmbiguous = errors.New("pkcs11: more than one key matches")
	// ErrHSMUnavailable: the token stopped answering for its objects
	// (removed, reset, session or handle invalidated). The Token must be
	// reopened (Token.Reopen); Signers handed out before keep working after.
	ErrHSMUnavailable = errors.New("pkcs11: HSM unavailable")
	// ErrClosed: the Token was closed.
	ErrClosed = errors.New("pkcs11: token closed")
)
