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
// rewritten chain fails at the first checkpoint after the rewrite, but
// only if the verifier's trust anchors are out of the attacker's reach: a
// forger re-signs every checkpoint with a key of their own and certifies it
// with a root of their own. So Open trusts only its signer's key (the HSM
// audit key) and certificates chaining to Options.Roots (the root whose
// key the HSM holds), and fails on any other checkpoint key; Verify's
// VerifyOptions should come from the HSM or from a bundle the operator
// holds out of band, never from files beside the log.
//
// Records after the last checkpoint are protected by the hash chain only: an
// attacker with write access can rewrite or truncate that tail undetected.
// The exposure is bounded by Options.CheckpointEvery (records) and
// Options.CheckpointInterval (time); Close writes a final checkpoint so a
// cleanly stopped log ends signed, and VerifyOptions.RequireCheckpointAtEnd
// makes a log that does not end with a valid checkpoint a failure.
//
// A log cut back to an earlier checkpoint, or replaced by an older copy,
// still verifies on its own. The Anchor closes that: every checkpoint, once
// fsynced, is recorded in an AnchorStore outside the log's directory (the
// appliance uses a private data object in the HSM token, which only a
// session holding the PIN can change), and Open and Verify fail when the
// log does not reach the anchored checkpoint with the same hash. The anchor
// is written after the log, so a crash leaves it behind, never ahead, and
// a failed update only weakens it until the next checkpoint. Its strength is
// the store's: an HSM keeps its objects to itself, but SoftHSM2 keeps them
// in files, which whoever has root can roll back along with the log. Neither
// checkpoints nor the anchor stop someone who can use the HSM's keys (holds
// its PIN).
//
// Restoring the log from a backup leaves the anchor ahead of it, which Open
// refuses for good. Reanchor is the audited way back: it accepts that one
// failure only, appends an "audit.reanchored" record naming the old anchor,
// the log's head, the operator and the reason, and anchors a checkpoint
// after it; Verify lists such records in Report.Reanchors.
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
