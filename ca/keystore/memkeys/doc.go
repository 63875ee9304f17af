// Package memkeys is an in-memory key store with the HSM's surface
// (GenerateSigner, Signer, DeleteKey, KeyURI, Ping, Reopen), for unit tests
// of code that signs through keys it never sees. It passes the same contract
// suite (ca/keystore/keystoretest) as the PKCS#11 backend, and can simulate
// an HSM outage with SetFailure. Keys are lost when the process exits; never
// use it for a real CA.
package memkeys
