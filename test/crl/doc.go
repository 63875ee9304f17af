// Package crl holds the end-to-end revocation tests: the crl service over
// the CA's bbolt store and SoftHSM2 keys, driven by openssl as the client,
// across kill -9 restarts. Build tag integration.
package crl
