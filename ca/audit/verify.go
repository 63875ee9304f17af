package audit

import (
	"bufio"
	"crypto"
	"crypto/ecdsa"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math"
	"sort"
)

// VerifyOptions are the trust anchors for checkpoint signatures; at least one
// of Roots or Keys is required. A checkpoint made by any other key is a
// problem. Take them from the HSM or from a bundle held out of band, never
// from files beside the log: whoever can rewrite the log can rewrite those.
type VerifyOptions struct {
	// Roots: a checkpoint's embedded signer certificate must chain here
	// (validity checked at the checkpoint's time).
	Roots *x509.CertPool
	// Keys are trusted directly (matched by the key ID in the checkpoint).
	Keys []crypto.PublicKey
	// RequireCheckpointAtEnd fails a log whose last record is not a valid
	// checkpoint: records after the last checkpoint are protected by the hash
	// chain only and could have been rewritten or truncated.
	RequireCheckpointAtEnd bool
	// Anchor, if set, is a checkpoint the log must reach with the same
	// hash (see LoadAnchor); a log cut back to an earlier checkpoint fails.
	// Verify checks it against one file, VerifyChain against the chain.
	Anchor *Anchor
}

// Problem kinds.
const (
	ProblemEdited       = "edited"
	ProblemDropped      = "dropped"
	ProblemReordered    = "reordered"
	ProblemInserted     = "inserted"
	ProblemBadSignature = "bad-signature"
	ProblemTruncated    = "truncated"
	ProblemMalformed    = "malformed"
)

// Problem locates one integrity failure. Seq is the affected record (0 when a
// line cannot be parsed); Line is 1-based.
type Problem struct {
	Seq    uint64
	Line   int
	Kind   string
	Detail string
	File   string // set by VerifyChain
}

func (p Problem) String() string {
	if p.File != "" {
		return fmt.Sprintf("%s line %d seq %d: %s: %s", p.File, p.Line, p.Seq, p.Kind, p.Detail)
	}
	return fmt.Sprintf("line %d seq %d: %s: %s", p.Line, p.Seq, p.Kind, p.Detail)
}

// Report summarises a verification.
type Report struct {
	Records     int // parsed record lines
	Checkpoints int // checkpoints whose signature verified
	// LastCheckpointSeq is the last checkpoint whose signature verified.
	LastCheckpointSeq uint64
	Problems          []Problem
	// ProblemsOmitted counts problems beyond the first maxProblems.
	ProblemsOmitted int
	Lines           int
	// HeadSeq and HeadHash are the highest in-sequence record. Kept outside
	// the appliance (as an Anchor is, in the HSM) they show truncation to an
	// earlier checkpoint.
	HeadSeq  uint64
	HeadHash string
	// FirstSeq and FirstPrev are the first record's seq and prev: 1 and
	// GenesisPrev for the first segment, the continuation point otherwise.
	FirstSeq  uint64
	FirstPrev string
	// Reanchors are the audit.reanchored records (the first 1000;
	// ReanchorsOmitted counts the rest): where the log was rolled back
	// behind its anchor, by whom and why.
	Reanchors        []Reanchoring
	ReanchorsOmitted int
}

const (
	maxProblems = 1000
	linkWindow  = 1 << 16 // records kept for reorder and link checks
	maxGaps     = 1024
)

// Verify reads a log and checks every record: canonical encoding, hash,
// contiguous seq, chain links and checkpoint signatures. The returned error
// wraps ErrTampered iff the report has problems; an I/O error from r is
// returned as is. Lines longer than MaxLineBytes are reported, not buffered.
func Verify(r io.Reader, opts VerifyOptions) (Report, error) {
	v, err := newVerifier(opts)
	if err != nil {
		return Report{}, err
	}
	if opts.Roots == nil && len(opts.Keys) == 0 {
		return Report{}, errNoTrust
	}
	if err := v.run(r); err != nil {
		return v.rep, err
	}
	return v.rep, v.result()
}

var errNoTrust = errors.New("audit: verify needs trust anchors (Roots or Keys)")

type link struct {
	hash, prev string
	line       int
	checkpoint bool // a checkpoint whose signature verified
}

type gap struct {
	lo, hi uint64
	line   int // where the missing records should have been
}

type verifier struct {
	opts   VerifyOptions
	keys   map[string]*ecdsa.PublicKey
	rep    Report
	expect uint64 // highest seq seen + 1
	known  map[uint64]*link
	alt    map[uint64]*link // second record claiming a seq, until a successor decides
	early  map[uint64]*item // records found ahead of their place
	certs  map[string]*certWindow
	gaps   []gap
	// watch notes the anchored record; checkWatch makes finish report a
	// log that does not reach it (VerifyChain and Open check across files).
	watch      *anchorWatch
	checkWatch bool
	lastCP     Anchor // the newest verified checkpoint (Open anchors it)
}

func newVerifier(opts VerifyOptions) (*verifier, error) {
	v := &verifier{opts: opts, keys: map[string]*ecdsa.PublicKey{}, expect: 1,
		known: map[uint64]*link{}, alt: map[uint64]*link{}, early: map[uint64]*item{}, certs: map[string]*certWindow{}}
	if opts.Anchor != nil {
		if opts.Anchor.Seq == 0 || !isHexHash(opts.Anchor.Hash) {
			return nil, fmt.Errorf("%w: anchor seq %d hash %q is not a record", ErrAnchor, opts.Anchor.Seq, opts.Anchor.Hash)
		}
		v.watch, v.checkWatch = &anchorWatch{a: *opts.Anchor}, true
	}
	for _, k := range opts.Keys {
		ek, ok := k.(*ecdsa.PublicKey)
		if !ok {
			return nil, fmt.Errorf("audit: trusted key is %T, want *ecdsa.PublicKey", k)
		}
		id, err := keyID(ek)
		if err != nil {
			return nil, fmt.Errorf("audit: trusted key: %w", err)
		}
		v.keys[id] = ek
	}
	return v, nil
}

func (v *verifier) result() error {
	if len(v.rep.Problems) == 0 {
		return nil
	}
	n := len(v.rep.Problems) + v.rep.ProblemsOmitted
	return fmt.Errorf("%w: %d problem(s), first: %s", ErrTampered, n, v.rep.Problems[0])
}

func (v *verifier) problem(seq uint64, line int, kind, format string, args ...any) {
	if len(v.rep.Problems) >= maxProblems {
		v.rep.ProblemsOmitted++
		return
	}
	v.rep.Problems = append(v.rep.Problems, Problem{Seq: seq, Line: line, Kind: kind, Detail: fmt.Sprintf(format, args...)})
}

func (v *verifier) run(r io.Reader) error {
	br := bufio.NewReaderSize(r, 64<<10)
	var buf []byte
	var held *item
	for {
		line, tooLong, err := readLine(br, &buf)
		if len(line) == 0 && !tooLong && err == io.EOF {
			break
		}
		if err != nil && err != io.EOF {
			return fmt.Errorf("audit: read log: %w", err)
		}
		v.rep.Lines++
		switch {
		case tooLong:
			v.problem(0, v.rep.Lines, ProblemMalformed, "line longer than %d bytes", MaxLineBytes)
		case err == io.EOF:
			v.problem(0, v.rep.Lines, ProblemTruncated, "last line is incomplete (%d bytes, no newline): torn write", len(line))
		default:
			if it := v.parse(v.rep.Lines, line); it != nil {
				if held != nil {
					v.process(held, it)
				}
				held = it
			}
		}
		if err == io.EOF {
			break
		}
	}
	if held != nil {
		v.process(held, nil)
	}
	v.finish()
	return nil
}

// readLine returns the next line without its newline. err is io.EOF when
// the line had no newline (or there was nothing left).
func readLine(br *bufio.Reader, buf *[]byte) (line []byte, tooLong bool, err error) {
	*buf = (*buf)[:0]
	for {
		frag, err := br.ReadSlice('\n')
		if !tooLong {
			if len(*buf)+len(frag) > MaxLineBytes+1 {
				tooLong = true
				*buf = (*buf)[:0]
			} else {
				*buf = append(*buf, frag...)
			}
		}
		switch err {
		case nil:
			if tooLong {
				return nil, true, nil
			}
			return (*buf)[:len(*buf)-1], false, nil
		case bufio.ErrBufferFull:
			continue
		default:
			return *buf, tooLong, err
		}
	}
}

// item is a parsed record waiting to be placed in the sequence.
type item struct {
	w      *wire
	line   int
	selfOK bool
	before uint64 // for a record ahead of its place: the seq that followed it
}

// parse turns a line into an item; malformed lines are reported here.
func (v *verifier) parse(ln int, b []byte) *item {
	w, err := parseLine(b)
	if err != nil {
		v.problem(0, ln, ProblemMalformed, "%v", err)
		return nil
	}
	if w.Seq == math.MaxUint64 {
		v.problem(w.Seq, ln, ProblemMalformed, "seq out of range")
		return nil
	}
	if w.Kind != KindCheckpoint && (w.Sig != nil || w.Cert != nil) {
		v.problem(w.Seq, ln, ProblemMalformed, "signature fields on a %q record", w.Kind)
		return nil
	}
	v.rep.Records++
	return &item{w: w, line: ln, selfOK: hashRecord(w.Seq, w.Time, w.Kind, w.Actor, w.Data, w.Prev) == w.Hash}
}

// process places a record in the sequence. peek is the next parsed record
// (nil at the end): it tells a record that jumped ahead of its place (the
// log carries on with the expected seq) from records dropped before it.
func (v *verifier) process(it, peek *item) {
	s := it.w.Seq
	if v.rep.FirstSeq == 0 {
		v.rep.FirstSeq, v.rep.FirstPrev = s, it.w.Prev
		if it.w.Kind == KindContinued && s > 1 {
			v.expect = s // a segment continuing an earlier one
		}
	} else if it.w.Kind == KindContinued {
		v.problem(s, it.line, ProblemInserted, "continuation record %d is not the first record of its segment", s)
	}
	for s > v.expect && v.takeEarly(v.expect) {
	}
	switch {
	case s == v.expect:
		v.expect++
		v.accept(it)
		if e, ok := v.early[s]; ok {
			delete(v.early, s)
			v.duplicate(e)
		}
	case s > v.expect:
		if _, taken := v.early[s]; !taken && peek != nil && peek.w.Seq == v.expect && len(v.early) < maxGaps {
			it.before = v.expect
			v.early[s] = it
			return
		}
		v.addGap(v.expect, s-1, it.line)
		v.expect = s + 1
		v.accept(it)
	case v.fillGap(s):
		v.problem(s, it.line, ProblemReordered, "record %d is at line %d, after record %d", s, it.line, v.expect-1)
		v.accept(it)
	default:
		v.duplicate(it)
	}
}

// takeEarly accepts record s if it appeared ahead of its place.
func (v *verifier) takeEarly(s uint64) bool {
	e, ok := v.early[s]
	if !ok {
		return false
	}
	delete(v.early, s)
	v.problem(s, e.line, ProblemReordered, "record %d is at line %d, ahead of record %d", s, e.line, s-1)
	v.expect = s + 1
	v.accept(e)
	return true
}

// duplicate handles a record whose seq is already taken. Which of the two
// is forged is decided by which one the successor links to.
func (v *verifier) duplicate(it *item) {
	s, ln := it.w.Seq, it.line
	l := &link{hash: it.w.Hash, prev: it.w.Prev, line: ln}
	old, ok := v.known[s]
	switch {
	case !ok:
		v.problem(s, ln, ProblemInserted, "record %d reappears far out of order (last seq %d)", s, v.expect-1)
	case old.hash == it.w.Hash:
		v.problem(s, ln, ProblemInserted, "duplicate of record %d at line %d", s, old.line)
	case v.alt[s] != nil:
		v.problem(s, ln, ProblemInserted, "third record claiming seq %d", s)
	default:
		next, ok := v.known[s+1]
		switch {
		case !ok:
			v.alt[s] = l // decided when the successor arrives, or at the end
			v.checkCP(it.w, l)
		case next.prev == it.w.Hash && it.selfOK:
			// The successor links here: the record placed first was forged.
			v.problem(s, old.line, ProblemInserted, "forged record %d: record %d at line %d links to the record %d at line %d instead", s, s+1, next.line, s, ln)
			v.known[s] = l
			v.watch.note(it.w, ln)
			v.checkCP(it.w, l)
		default:
			v.problem(s, ln, ProblemInserted, "second record claiming seq %d (first at line %d)", s, old.line)
		}
	}
}

// accept records an in-place record and checks its hash, signature and links.
func (v *verifier) accept(it *item) {
	w := it.w
	l := &link{hash: w.Hash, prev: w.Prev, line: it.line}
	if !it.selfOK {
		v.problem(w.Seq, it.line, ProblemEdited, "record %d content does not match its hash", w.Seq)
	}
	v.checkCP(w, l)
	if w.Kind == KindReanchored {
		v.rep.addReanchors(parseReanchoring(w))
	}
	v.watch.note(w, it.line)
	v.known[w.Seq] = l
	v.link(w.Seq)
	if len(v.known) > 2*linkWindow {
		v.evict()
	}
}

func (v *verifier) checkCP(w *wire, l *link) {
	if w.Kind != KindCheckpoint {
		return
	}
	if err := v.checkCheckpoint(w); err != nil {
		v.problem(w.Seq, l.line, ProblemBadSignature, "%v", err)
		return
	}
	l.checkpoint = true
	v.rep.Checkpoints++
	if w.Seq > v.lastCP.Seq {
		v.lastCP = Anchor{Seq: w.Seq, Hash: w.Hash}
	}
	v.rep.LastCheckpointSeq = v.lastCP.Seq
}

// link checks record s against its neighbours. A broken link is blamed on
// the earlier record: the usual cause is a record edited with its own hash
// recomputed, which its successor's prev still contradicts.
func (v *verifier) link(s uint64) {
	cur := v.known[s]
	if s == 1 {
		if cur.prev != GenesisPrev {
			v.problem(1, cur.line, ProblemEdited, "record 1 does not start the chain (prev is not the genesis value)")
		}
	} else if p, ok := v.known[s-1]; ok {
		a, hasAlt := v.alt[s-1]
		switch {
		case p.hash == cur.prev && hasAlt:
			v.problem(s-1, a.line, ProblemInserted, "forged record %d: record %d at line %d links to the record %d at line %d instead", s-1, s, cur.line, s-1, p.line)
			delete(v.alt, s-1)
		case p.hash != cur.prev && hasAlt && a.hash == cur.prev:
			v.problem(s-1, p.line, ProblemInserted, "forged record %d: record %d at line %d links to the record %d at line %d instead", s-1, s, cur.line, s-1, a.line)
			delete(v.alt, s-1)
			v.known[s-1] = a
			v.link(s - 1)
		case p.hash != cur.prev:
			v.problem(s-1, p.line, ProblemEdited, "record %d was rewritten: record %d (line %d) links to a different hash", s-1, s, cur.line)
		}
	}
	if n, ok := v.known[s+1]; ok && n.prev != cur.hash {
		v.problem(s, cur.line, ProblemEdited, "record %d was rewritten: record %d (line %d) links to a different hash", s, s+1, n.line)
	}
}

func (v *verifier) addGap(lo, hi uint64, line int) {
	if len(v.gaps) >= maxGaps {
		g := v.gaps[0]
		v.dropped(g)
		v.gaps = v.gaps[1:]
	}
	v.gaps = append(v.gaps, gap{lo, hi, line})
}

func (v *verifier) dropped(g gap) {
	if g.lo == g.hi {
		v.problem(g.lo, g.line, ProblemDropped, "record %d is missing (expected before line %d)", g.lo, g.line)
	} else {
		v.problem(g.lo, g.line, ProblemDropped, "records %d..%d are missing (expected before line %d)", g.lo, g.hi, g.line)
	}
}

func (v *verifier) fillGap(s uint64) bool {
	for i, g := range v.gaps {
		if s < g.lo || s > g.hi {
			continue
		}
		switch {
		case g.lo == g.hi:
			v.gaps = append(v.gaps[:i], v.gaps[i+1:]...)
		case s == g.lo:
			v.gaps[i].lo++
		case s == g.hi:
			v.gaps[i].hi--
		default:
			v.gaps = append(v.gaps[:i+1], v.gaps[i:]...)
			v.gaps[i].hi = s - 1
			v.gaps[i+1].lo = s + 1
		}
		return true
	}
	return false
}

func (v *verifier) evict() {
	floor := v.expect - linkWindow
	for s := range v.known {
		if s < floor && s != v.expect-1 {
			delete(v.known, s)
		}
	}
	for s, a := range v.alt {
		if s < floor {
			v.problem(s, a.line, ProblemInserted, "second record claiming seq %d", s)
			delete(v.alt, s)
		}
	}
}

func (v *verifier) finish() {
	for v.takeEarly(v.expect) {
	}
	early := make([]*item, 0, len(v.early))
	for _, e := range v.early {
		early = append(early, e)
	}
	sort.Slice(early, func(i, j int) bool { return early[i].line < early[j].line })
	for _, e := range early {
		v.problem(e.w.Seq, e.line, ProblemInserted, "record %d at line %d is out of sequence: record %d follows it and the log never reaches %d", e.w.Seq, e.line, e.before, e.w.Seq)
	}
	v.early = nil
	for s, a := range v.alt {
		v.problem(s, a.line, ProblemInserted, "second record claiming seq %d (no successor links to it)", s)
	}
	v.alt = map[uint64]*link{}
	for _, g := range v.gaps {
		v.dropped(g)
	}
	v.gaps = nil
	head := v.expect - 1
	if h, ok := v.known[head]; ok {
		v.rep.HeadSeq, v.rep.HeadHash = head, h.hash
	}
	if v.checkWatch {
		if p := v.watch.problem(v.rep.FirstSeq, v.rep.FirstPrev, head, v.rep.Lines, ""); p != nil {
			v.problem(p.Seq, p.Line, p.Kind, "%s", p.Detail)
		}
	}
	if v.opts.RequireCheckpointAtEnd {
		switch h, ok := v.known[head]; {
		case head == 0:
			v.problem(0, v.rep.Lines, ProblemTruncated, "log has no records")
		case !ok || !h.checkpoint:
			v.problem(head, v.rep.Lines, ProblemTruncated, "log does not end with a valid checkpoint: records %d..%d are protected by the hash chain only (truncated, or not closed cleanly)", v.rep.LastCheckpointSeq+1, head)
		}
	}
	sort.SliceStable(v.rep.Problems, func(i, j int) bool { return v.rep.Problems[i].Line < v.rep.Problems[j].Line })
}
