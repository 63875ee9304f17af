// Package store owns the CA's durable state: CA metadata, intermediate
// slots, registration entries, every certificate serial ever issued, the
// revocation index and log, and small counters for other components. It is
// a single bbolt file; the layout is documented in schema.go.
//
// Every write is fsynced before the method returns. RecordIssued uses bbolt's
// batch so concurrent issuers share one commit (group commit).
package store
