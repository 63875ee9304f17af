package audit

import (
	"bytes"
	"encoding/json"
	"fmt"
)

// Anchor is a checkpoint recorded outside the log: the log must reach it,
// with the same hash. Checkpoints alone cannot show that the log was cut
// back to an earlier checkpoint (what is left still verifies); an anchor
// kept where whoever can write the log cannot roll it back can.
type Anchor struct {
	Seq  uint64 `json:"seq"`
	Hash string `json:"hash"`
}

// AnchorStore keeps the anchor out of the log's directory: in the HSM, as
// a private token object only a session logged in with the PIN can change.
// The appliance adapts its token to it; tests use memory.
type AnchorStore interface {
	// LoadAnchor returns the stored value, or nil when none is stored yet.
	LoadAnchor() ([]byte, error)
	// StoreAnchor replaces the stored value.
	StoreAnchor(value []byte) error
}

const anchorFormat = "palisade-audit-anchor-v1"

type anchorWire struct {
	Format string `json:"format"`
	Seq    uint64 `json:"seq"`
	Hash   string `json:"hash"`
}

func (a Anchor) encode() []byte {
	b, _ := json.Marshal(anchorWire{Format: anchorFormat, Seq: a.Seq, Hash: a.Hash})
	return b
}

// LoadAnchor reads the anchor from s; nil when none is stored yet. A value
// that does not parse is an error wrapping ErrAnchor: the store is not
// written by anything else, so the appliance must not guess.
func LoadAnchor(s AnchorStore) (*Anchor, error) {
	raw, err := s.LoadAnchor()
	if err != nil {
		return nil, fmt.Errorf("%w: read: %w", ErrAnchor, err)
	}
	if raw == nil {
		return nil, nil
	}
	var w anchorWire
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&w); err != nil || dec.More() || w.Format != anchorFormat || w.Seq == 0 || !isHexHash(w.Hash) {
		return nil, fmt.Errorf("%w: stored value %q is not a %s anchor", ErrAnchor, raw, anchorFormat)
	}
	return &Anchor{Seq: w.Seq, Hash: w.Hash}, nil
}

// anchorWatch notes the record at the anchor's seq while a verifier runs;
// one watch can span the files of a segmented log.
type anchorWatch struct {
	a    Anchor
	seen bool
	hash string
	line int
	file string
	cur  string // the file being verified
}

func (w *anchorWatch) note(rec *wire, line int) {
	if w != nil && rec.Seq == w.a.Seq {
		w.seen, w.hash, w.line, w.file = true, rec.Hash, line, w.cur
	}
}

// problem says how the log fails to reach the anchor, or nil. first and
// firstPrev are the log's first record and its prev, head its last
// in-sequence record, lines the number of its last line (or 0), file the
// name of its last file.
func (w *anchorWatch) problem(first uint64, firstPrev string, head uint64, lines int, file string) *Problem {
	a := w.a
	short := a.Hash[:16]
	switch {
	case a.Seq > head:
		return &Problem{Seq: head + 1, Line: lines, File: file, Kind: ProblemTruncated,
			Detail: fmt.Sprintf("records %d..%d are missing: the log ends at seq %d, but checkpoint %d (hash %s…) is anchored in the HSM (the log was cut back or replaced by an older copy)", head+1, a.Seq, head, a.Seq, short)}
	case w.seen && w.hash != a.Hash:
		return &Problem{Seq: a.Seq, Line: w.line, File: w.file, Kind: ProblemEdited,
			Detail: fmt.Sprintf("record %d is not checkpoint %d anchored in the HSM (hash %s…, anchored %s…)", a.Seq, a.Seq, w.hash[:16], short)}
	case w.seen:
		return nil
	case first > 0 && a.Seq == first-1 && firstPrev != a.Hash:
		return &Problem{Seq: first, Line: 1, Kind: ProblemEdited,
			Detail: fmt.Sprintf("record %d does not continue from checkpoint %d anchored in the HSM (hash %s…)", first, a.Seq, short)}
	case first > 0 && a.Seq == first-1:
		return nil
	case first > 0 && a.Seq < first:
		return &Problem{Seq: a.Seq, Line: 1, Kind: ProblemDropped,
			Detail: fmt.Sprintf("checkpoint %d anchored in the HSM precedes this file (first seq %d): verify every segment", a.Seq, first)}
	}
	return nil // inside the log but absent: reported as a dropped record already
}
