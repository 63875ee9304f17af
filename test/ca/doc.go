// Package ca holds the CA's end-to-end suite: the real binaries, SoftHSM2
// through PKCS#11, openssl and go-spiffe as clients, kill -9 recovery.
package ca
