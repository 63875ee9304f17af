// Package attestorpb holds the generated gRPC wire protocol of node
// attestation (attestor.proto). Regenerate with `go generate`.
package attestorpb
