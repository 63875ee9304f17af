// Package nodeapi serves and calls palisade-server's node-facing API: gRPC
// over mutual TLS 1.3 (AES-256-GCM-SHA384 only). A caller is the SPIFFE ID
// of the X509-SVID it presents, verified against the CA's bundle and the
// revocation state on every call; registration entries parented by that ID
// are the only authority for what it may obtain.
package nodeapi
