// Package audit owns the appliance's tamper-evident, append-only audit log.
//
// Every state change, issuance and operator action is appended as one JSON
// line (Record). Records form a SHA-256 hash chain: each carries the hash of
// its predecessor and a contiguous seq, so editing, dropping, reordering or
// inserting a record breaks the chain at a point Verify reports by seq and
// line. The hash is over a length-prefixed binary encoding of seq, time,
// kind, actor, data and prev (not over JSON), and Data is stored compacted
// and hashed byte for byte; Verify also requires every line to be in the
// exact canonical JSON form, so no byte of a line can change unnoticed.
//
// A hash chain alone does not stop an attacker who rewrites the log from
// some record onward and recomputes every later hash. Checkpoint records
// close that gap: a checkpoint carries an ECDSA signature, made by an
// HSM-held key through crypto.Signer, over its own seq and hash, which
// commit to the entire chain before it, plus the signer's certificate. A
// rewritten chain fails at the first checkpoint after the rewrite.
//
// Records after the last checkpoint are protected by the hash chain only: an
// attacker with write access can rewrite or truncate that tail undetected.
// The exposure is bounded by Options.CheckpointEvery (records) and
// Options.CheckpointInterval (time); Close writes a final checkpoint so a
// cleanly stopped log ends signed, and VerifyOptions.RequireCheckpointAtEnd
// makes a log that does not end with a valid checkpoint a failure.
// Truncation back to an earlier checkpoint can only be seen against a head
// (Log.Head, Report.HeadSeq/HeadHash) kept outside the log.
//
// Durability: Append returns only after its record is fsynced. Concurrent
// appends are group-committed (one write and one fdatasync per batch). A line
// torn by a crash was never acknowledged; Open moves it to a sidecar file,
// truncates it and appends an "audit.recovered" record describing it.
//
// Segments: Rotate (or Options.SegmentBytes) seals the file with a
// checkpoint, renames it to "<path>.<last seq>" and continues the chain in a
// new file that starts with an "audit.continued" record. Open verifies only
// the current segment; VerifyChain verifies all of them and their links.
package audit
