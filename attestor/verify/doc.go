// Package verify holds the server-side checks of TPM 2.0 node attestation,
// pure software with no device: endorsement key (EK) parsing and certificate
// chains, attestation key (AK) properties, credential creation
// (MakeCredential), quote signature, nonce and PCR digest checks, and the
// golden PCR policy per node class.
//
// Everything here takes untrusted bytes from the wire; every parser checks
// lengths, algorithms and canonical encoding and returns a wrapped sentinel
// error naming the problem.
package verify
