// Package store owns the CA's durable state: CA metadata, intermediate
// slots, registration entries, every certificate serial ever issued, the
// revocation index and log, and small counters for other components. It is
// a single bbolt file; the layout is documented in schema.go.
//
// Every write is fsynced before the method returns. RecordIssued is durable
// once its record is in the append-only issuance journal, written with group
// commit (journal.go); records move into bbolt behind it. A damaged file
// yields ErrCorrupt, never a crash: bbolt's panics and page faults are
// recovered.
package store
