// Package store owns the CA's durable state: CA metadata, intermediate
// slots, registration entries, every certificate serial ever issued, the
// revocation index and log, and small counters for other components. It is
// a single bbolt file; the layout is documented in schema.go.
//
// Every write is fsynced before the method returns. Concurrent RecordIssued
// callers share one commit (group commit, commit.go). A damaged file yields
// ErrCorrupt, never a crash: bbolt's panics and page faults are recovered.
package store
