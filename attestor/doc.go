// Package attestor is the server side of TPM 2.0 node attestation: it owns
// the EK manifest, the golden PCR policy and the node records, runs the
// Attest protocol (attestorpb) and, on success, has the CA issue the node
// SVID spiffe://<td>/palisade/node/<hex sha256 of EKpub PKIX DER>.
//
// Dependencies are small interfaces declared here and implemented elsewhere:
// Store (attestor/store, bbolt), NodeIssuer (the CA), Auditor (the audit
// log) and Revoker (revocation). Cryptographic checks live in
// attestor/verify; the node side is attestor/device and attestor/agent.
//
// Renewal is re-attestation: a node gets a new SVID only with a fresh quote.
package attestor
