// Package audit owns the appliance's tamper-evident, append-only audit log.
//
// Every state change, issuance and operator action is appended as one JSON
// line. Records form a SHA-256 hash chain (each record carries the hash of its
// predecessor) with contiguous sequence numbers, so editing, dropping,
// reordering or inserting a record breaks the chain at a point Verify reports
// by sequence number and line.
//
// A hash chain alone does not stop an attacker who rewrites the log from some
// record onward and recomputes every later hash. Checkpoint records close that
// gap: a checkpoint carries a signature, made by an HSM-held key through
// crypto.Signer, over its own sequence number and hash, which commits to the
// entire chain before it. A rewritten chain therefore fails at the first
// checkpoint after the rewrite.
//
// Records after the last checkpoint are protected by the hash chain only: an
// attacker with write access can rewrite or truncate that tail undetected.
// The exposure is bounded by Options.CheckpointEvery (records) and
// Options.CheckpointInterval (time), and Close writes a final checkpoint so a
// cleanly shut down log ends signed; VerifyOptions.RequireCheckpointAtEnd
// makes a log that does not end with a signed checkpoint a failure. Truncation
// back to an earlier checkpoint is only detectable against an externally kept
// head (Log.Head, Report.HeadSeq/HeadHash).
//
// Durability: Append returns only after its record is fsynced. Concurrent
// appends are group-committed (one write and one fdatasync per batch). A line
// torn by a crash was never acknowledged; Open truncates it and records an
// "audit.recovered" record describing what was cut.
package audit
