// Package keystoretest is the contract every key store backend must pass:
// generate, find, refuse duplicates, report unknown labels, delete only the
// key named by both label and public key, and sign concurrently with ECDSA
// keys whose signatures verify. The HSM backend (ca/pkcs11, against
// SoftHSM2) and the in-memory one (ca/keystore/memkeys) both run it, so unit
// tests written against memkeys hold for the HSM.
package keystoretest
