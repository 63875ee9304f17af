package audit

import (
	"crypto"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"
)

// MaxReasonBytes bounds the reason Reanchor records.
const MaxReasonBytes = 1024

// Reanchoring describes an audit.reanchored record: the anchor was moved to
// a log that no longer reached it, so the anchored history past Head (or
// from wherever the log parts from it) is gone from the log.
type Reanchoring struct {
	Seq    uint64 // the audit.reanchored record
	Time   time.Time
	Actor  string // who moved the anchor
	Reason string
	// Previous is the anchor the log did not reach; Problem says how.
	Previous Anchor
	Problem  string
	// Head is the log's last record when it was reanchored.
	Head Anchor
	// LastCheckpoint is the newest signed checkpoint at or before Head:
	// records after it were vouched for by the reanchor alone.
	LastCheckpoint uint64
	// Missing counts the anchored records past Head. It is 0 when the log
	// reaches Previous.Seq with another record there (see Problem).
	Missing uint64
	// Checkpoint is the checkpoint anchored instead (set by Reanchor only).
	Checkpoint Anchor
}

// reanchorData is the Data of an audit.reanchored record; the actor is in
// the record itself.
type reanchorData struct {
	Reason         string `json:"reason"`
	Previous       Anchor `json:"previous_anchor"`
	Problem        string `json:"problem"`
	Head           Anchor `json:"head"`
	LastCheckpoint uint64 `json:"last_checkpoint"`
	Missing        uint64 `json:"missing"`
}

// Reanchor is the way back for a log restored from a backup, or otherwise
// cut back behind the checkpoint in opts.Anchor, which Open refuses for
// good. It verifies the log as Open does, with the same trust (signer and
// opts.Roots), and accepts one failure only: the log does not reach the
// anchored checkpoint, or holds another record at its seq. It then appends
// an audit.reanchored record by actor, naming the old anchor, the log's
// head and reason, and a checkpoint, and anchors that checkpoint, so the
// rollback stays in the log for every later Verify to show.
//
// Nothing is changed when it refuses: an empty or oversized reason or actor
// (ErrInvalid), a log that reaches the anchor or no anchor stored
// (ErrNothingToReanchor), any other verification failure (ErrTampered,
// naming the record, as Open), or the log in use by another process (its
// lock is Open's). The log file must exist. Past those checks, a torn last
// line is set aside as Open does; if the anchor update then fails
// (ErrAnchor) the records are in the log but not anchored, and running
// Reanchor again completes it with a second record.
func Reanchor(path string, signer crypto.Signer, opts Options, actor, reason string) (Reanchoring, error) {
	if err := checkText("actor", actor, MaxActorBytes); err != nil {
		return Reanchoring{}, err
	}
	if strings.TrimSpace(reason) == "" {
		return Reanchoring{}, fmt.Errorf("%w: empty reason", ErrInvalid)
	}
	if err := checkText("reason", reason, MaxReasonBytes); err != nil {
		return Reanchoring{}, err
	}
	if opts.Anchor == nil {
		return Reanchoring{}, errors.New("audit: reanchor needs Options.Anchor")
	}
	re := &Reanchoring{Actor: actor, Reason: reason}
	if _, err := open(path, signer, opts, re); err != nil {
		return Reanchoring{}, err
	}
	return *re, nil
}

// reanchor runs in load instead of the committer: the records Open would
// append on its own, then the reanchored record and a checkpoint in one
// write, then the anchor, which only now may move (even backwards).
func (l *Log) reanchor(r *Reanchoring, cont, recovered json.RawMessage) error {
	if r.Previous.Seq > r.Head.Seq {
		r.Missing = r.Previous.Seq - r.Head.Seq
	}
	data, err := json.Marshal(reanchorData{Reason: r.Reason, Previous: r.Previous, Problem: r.Problem,
		Head: r.Head, LastCheckpoint: r.LastCheckpoint, Missing: r.Missing})
	if err != nil {
		return fmt.Errorf("audit: reanchor: %w", err)
	}
	l.buf = l.buf[:0]
	if cont != nil {
		l.add(KindContinued, "system", cont)
	}
	if recovered != nil {
		l.add(KindRecovered, "system", recovered)
	}
	rec := l.add(KindReanchored, r.Actor, data)
	cp, err := l.addCheckpoint()
	if err != nil {
		return fmt.Errorf("audit: reanchor: %w", err)
	}
	if err := l.write(); err != nil {
		return fmt.Errorf("audit: reanchor: write %s: %w", l.path, err)
	}
	r.Seq, r.Time = rec.Seq, rec.Time
	if err := l.opts.Anchor.StoreAnchor(l.newestCP.encode()); err != nil {
		return fmt.Errorf("%w: reanchor record %d and checkpoint %d are in the log, but the anchor still names checkpoint %d (run reanchor again): %w",
			ErrAnchor, rec.Seq, cp.Seq, r.Previous.Seq, err)
	}
	r.Checkpoint = l.newestCP
	return nil
}

// parseReanchoring reads an audit.reanchored record for Verify's report;
// what does not parse is left zero (the record's hash is what counts).
func parseReanchoring(w *wire) Reanchoring {
	r := Reanchoring{Seq: w.Seq, Actor: w.Actor}
	r.Time, _ = parseTime(w.Time)
	var d reanchorData
	if json.Unmarshal(w.Data, &d) == nil {
		r.Reason, r.Previous, r.Problem, r.Head, r.LastCheckpoint, r.Missing =
			d.Reason, d.Previous, d.Problem, d.Head, d.LastCheckpoint, d.Missing
	}
	r.Actor, r.Reason, r.Problem = clip(r.Actor, MaxActorBytes), clip(r.Reason, MaxReasonBytes), clip(r.Problem, MaxReasonBytes)
	return r
}

// clip bounds what a hostile log can make a report hold.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	s = s[:n]
	for !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return strings.TrimSpace(s) + "…"
}
