// Package attestor holds the end-to-end tests of TPM node attestation
// (build tag integration): a node with a real swtpm attests over loopback
// TLS gRPC to the attestation service backed by bbolt, and gets its SVID.
package attestor
