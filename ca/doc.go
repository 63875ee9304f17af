// Package ca is Palisade's SPIFFE certificate authority: the key ceremony,
// X509-SVID and JWT-SVID issuance, the trust bundle, and rotation of the
// intermediates.
//
// The CA never holds a private key. It signs through crypto.Signer values
// handed out by a KeyStore (the HSM, see ca/pkcs11), records every issued
// serial in a Store (see ca/store) and every state change in an Auditor
// (see ca/audit) before it releases anything: an SVID the caller receives
// is always durably recorded and audited.
//
// Serials are 128 random bits. The Store refuses a serial it has already
// recorded, inside the same transaction that records the new one, and
// records are only acknowledged after fsync, so no two released
// certificates can share a serial, also across kill -9.
package ca
