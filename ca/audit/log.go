package audit

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"golang.org/x/sys/unix"
)

// Options tune a Log. Zero values take the defaults.
type Options struct {
	// CheckpointEvery writes a signed checkpoint after this many records
	// (default 1000). It bounds how many records are chain-protected only.
	CheckpointEvery int
	// CheckpointInterval writes a checkpoint when records have been unsigned
	// this long (default 1m).
	CheckpointInterval time.Duration
	// Now stamps records (default time.Now).
	Now func() time.Time
	// SignerCert certifies the checkpoint key; it is embedded in every
	// checkpoint so Verify can chain it to VerifyOptions.Roots.
	SignerCert *x509.Certificate
	// SegmentBytes rotates the log (see Rotate) once the current file
	// reaches this size; 0 never rotates automatically. It bounds the work
	// Open does (it verifies the current segment) and the size of a file.
	SegmentBytes int64
	// Roots lets Open accept checkpoints made by keys other than the
	// signer's (an earlier audit key, say) when their certificate chains
	// here. Without it only the signer's own checkpoints are accepted.
	Roots *x509.CertPool
	// Anchor, if set, keeps the latest checkpoint outside the log (see
	// Anchor): Open refuses a log that does not reach the stored one (see
	// Reanchor for a restored backup), and every durable checkpoint
	// replaces it.
	Anchor AnchorStore
}

const (
	defaultCheckpointEvery    = 1000
	defaultCheckpointInterval = time.Minute
	maxBatchRecords           = 4096
	maxBatchBytes             = 1 << 20
	maxGather                 = 500 * time.Microsecond
	// An unterminated tail longer than one batch cannot come from a torn
	// write; Open refuses to cut it.
	maxTornBytes = maxBatchBytes + MaxLineBytes
)

// Log is an open audit log. All methods are safe for concurrent use.
type Log struct {
	path string
	f    *os.File
	fd   int
	cp   *cpSigner
	opts Options

	inflight atomic.Int64  // callers in submit: the batch the committer gathers for
	kick     chan struct{} // a caller left submit
	mu       sync.RWMutex  // guards closed against sends on reqs
	closed   bool
	reqs     chan *request
	done     chan struct{}

	headMu   sync.Mutex
	headSeq  uint64
	headHash string
	failed   error // sticky: set once a write or fsync failed
	cpErr    error // last automatic checkpoint or anchor failure
	closeErr error

	// Owned by the committer goroutine.
	seq       uint64
	prev      string
	size      int64 // bytes in the current segment
	rotateAt  int64 // next size at which to try an automatic rotation
	sinceCP   int
	lastCP    time.Time
	cpRetryAt int
	buf       []byte
	batch     []*request
	writes    int           // write+fdatasync calls, for benchmarks
	lastSync  time.Duration // duration of the last write+fdatasync
	newestCP  Anchor        // the newest checkpoint written (durable once its batch is)
	anchored  uint64        // seq of the checkpoint the anchor store holds
}

type request struct {
	kind, actor string
	data        json.RawMessage
	checkpoint  bool
	rotate      bool
	archived    string
	rec         Record
	err         error
	done        chan struct{}
}

// Open opens or creates the log at path and takes an exclusive lock on it.
// It verifies the current segment's chain and every checkpoint in it (by
// signer's key, or certified under opts.Roots), checks it reaches the
// checkpoint in opts.Anchor, and refuses a log that fails with an error
// wrapping ErrTampered that names the first bad record: new checkpoints
// must never vouch for history that cannot be trusted. An unterminated
// last line, which a crash can leave and which was never acknowledged, is
// moved to "<path>.torn-<offset>" and an "audit.recovered" record notes its
// offset, length and SHA-256.
func Open(path string, signer crypto.Signer, opts Options) (*Log, error) {
	return open(path, signer, opts, nil)
}

// open is Open, or with re Reanchor: the file must exist, and load fills
// in re and appends its record instead of starting the committer.
func open(path string, signer crypto.Signer, opts Options, re *Reanchoring) (*Log, error) {
	cp, err := newCPSigner(signer, opts.SignerCert)
	if err != nil {
		return nil, err
	}
	if opts.CheckpointEvery < 0 || opts.CheckpointInterval < 0 || opts.SegmentBytes < 0 {
		return nil, errors.New("audit: negative checkpoint or segment option")
	}
	if opts.CheckpointEvery == 0 {
		opts.CheckpointEvery = defaultCheckpointEvery
	}
	if opts.CheckpointInterval == 0 {
		opts.CheckpointInterval = defaultCheckpointInterval
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	// A missing log is not a log to vouch for when reanchoring; otherwise
	// it is created exclusively, so that a refused open (an anchor the new
	// file cannot reach) removes only what it made and leaves the
	// directory as it found it.
	created := false
	f, err := os.OpenFile(path, os.O_RDWR|os.O_APPEND, 0o600)
	if errors.Is(err, os.ErrNotExist) && re == nil {
		f, err = os.OpenFile(path, os.O_RDWR|os.O_APPEND|os.O_CREATE|os.O_EXCL, 0o600)
		created = err == nil
	}
	if err != nil {
		return nil, fmt.Errorf("audit: open: %w", err)
	}
	l := &Log{path: path, f: f, fd: int(f.Fd()), cp: cp, opts: opts, kick: make(chan struct{}, 1)}
	if err := l.load(created, re); err != nil {
		f.Close()
		if created {
			if rerr := os.Remove(path); rerr == nil {
				_ = syncDir(filepath.Dir(path))
			}
		}
		return nil, err
	}
	if re != nil {
		if err := f.Close(); err != nil {
			return nil, fmt.Errorf("audit: close: %w", err)
		}
	}
	return l, nil
}

func (l *Log) load(created bool, re *Reanchoring) error {
	verb := "open"
	if re != nil {
		verb = "reanchor"
	}
	if err := unix.Flock(l.fd, unix.LOCK_EX|unix.LOCK_NB); err != nil {
		return fmt.Errorf("audit: %s is in use by another process: %w", l.path, err)
	}
	if created {
		if err := syncDir(filepath.Dir(l.path)); err != nil {
			return err
		}
	}
	fi, err := l.f.Stat()
	if err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	end, err := lastNewline(l.f, fi.Size())
	if err != nil {
		return err
	}
	torn := fi.Size() - end
	if torn > maxTornBytes {
		return fmt.Errorf("%w: %s: last %d bytes have no newline, far more than a torn write; run verify", ErrCorrupt, l.path, torn)
	}

	// Read the anchor before the log: a checkpoint is durable in the log
	// before the anchor names it, so a log read after the anchor reaches it.
	var anchor *Anchor
	if l.opts.Anchor != nil {
		if anchor, err = LoadAnchor(l.opts.Anchor); err != nil {
			return fmt.Errorf("audit: refusing to %s %s: %w", verb, l.path, err)
		}
	}
	if re != nil && anchor == nil {
		return fmt.Errorf("%w: no anchor is stored", ErrNothingToReanchor)
	}
	v := l.openVerifier(VerifyOptions{}, anchor)
	if err := v.run(io.NewSectionReader(l.f, 0, end)); err != nil {
		return err
	}
	if err := v.result(); err != nil {
		return fmt.Errorf("audit: refusing to %s %s: %w", verb, l.path, err)
	}
	l.seq, l.prev = v.rep.HeadSeq, v.rep.HeadHash
	if l.seq == 0 {
		l.prev = GenesisPrev
	}
	var cont json.RawMessage
	if l.seq == 0 {
		// A fresh file next to archived segments continues their chain
		// (also the state a crash in the middle of Rotate leaves).
		if cont, err = l.continueFrom(); err != nil {
			return err
		}
	}
	if anchor != nil {
		p, err := l.anchorProblem(anchor, v)
		switch {
		case err != nil:
			return fmt.Errorf("audit: refusing to %s %s: %w", verb, l.path, err)
		case p != nil && (re == nil || p.Kind != ProblemTruncated && p.Kind != ProblemEdited):
			return fmt.Errorf("audit: refusing to %s %s: %w: %s", verb, l.path, ErrTampered, p)
		case p == nil && re != nil:
			return fmt.Errorf("%w: %s reaches checkpoint %d anchored in the HSM", ErrNothingToReanchor, l.path, anchor.Seq)
		case p != nil && l.seq == 0 && cont == nil:
			// A restored backup holds at least the ceremony's records; an
			// empty log with nothing before it is deleted history.
			return fmt.Errorf("audit: refusing to %s %s: %w: it holds no records and continues no archived segment", verb, l.path, ErrTampered)
		case p != nil:
			re.Previous, re.Problem = *anchor, p.Detail
		default:
			l.anchored = anchor.Seq
		}
	}
	if cont == nil {
		l.headSeq, l.headHash = l.seq, v.rep.HeadHash
		l.sinceCP = int(l.seq - v.rep.LastCheckpointSeq)
		l.newestCP = v.lastCP
	} else {
		l.newestCP = Anchor{Seq: l.seq, Hash: l.prev} // the archived segment's sealing checkpoint
	}
	if re != nil {
		re.Head, re.LastCheckpoint = Anchor{Seq: l.seq, Hash: l.prev}, l.newestCP.Seq
		if re.LastCheckpoint == 0 && v.rep.FirstSeq > 1 {
			re.LastCheckpoint = v.rep.FirstSeq - 1 // sealed the segment this file continues
		}
	}
	// A log from before anchoring, or a crash between a checkpoint's fsync
	// and its anchor update, leaves the anchor behind: catch up now. A
	// failure is reported by CheckpointErr; the log itself is sound. Never
	// when reanchoring: the anchor moves only past the reanchored record.
	if re == nil {
		_ = l.anchor()
	}
	l.lastCP = time.Now()
	l.size = end
	l.rotateAt = l.opts.SegmentBytes

	var recovered json.RawMessage
	if torn > 0 {
		if recovered, err = l.cutTorn(end, torn); err != nil {
			return err
		}
	}
	if re != nil {
		return l.reanchor(re, cont, recovered)
	}
	l.reqs = make(chan *request, maxBatchRecords)
	l.done = make(chan struct{})
	go l.commitLoop()
	if cont != nil {
		if err := l.appendSystem(KindContinued, cont); err != nil {
			l.Close()
			return err
		}
	}
	if recovered != nil {
		if err := l.appendSystem(KindRecovered, recovered); err != nil {
			l.Close()
			return err
		}
	}
	return nil
}

// openVerifier returns a verifier for checking this log's own files when
// opening it: it trusts the log's checkpoint key and certificates chaining
// to Options.Roots, and notes the anchored record (checkAnchor decides).
func (l *Log) openVerifier(opts VerifyOptions, anchor *Anchor) *verifier {
	opts.Roots = l.opts.Roots
	v, _ := newVerifier(opts) // opts carries no Keys nor Anchor, so this cannot fail
	v.keys[l.cp.keyID] = l.cp.pub
	if anchor != nil {
		v.watch = &anchorWatch{a: *anchor, cur: filepath.Base(l.path)}
	}
	return v
}

// anchorProblem says how the log, whose current segment v verified and
// whose head is l.seq, fails to reach the anchored checkpoint, or nil. An
// anchor older than the current segment is looked up in the archived one
// holding it; an error means that segment, or the anchored record, is
// not there to look at.
func (l *Log) anchorProblem(a *Anchor, v *verifier) (*Problem, error) {
	w, rep := v.watch, v.rep
	if a.Seq == l.seq && rep.Records == 0 {
		// Empty current file continuing archived segments: the head is
		// the last segment's (continueFrom set l.seq and l.prev).
		w.seen, w.hash = true, l.prev
	}
	if !w.seen && a.Seq < l.seq && (rep.Records == 0 || a.Seq+1 < rep.FirstSeq) {
		if err := l.watchArchived(w); err != nil {
			return nil, err
		}
		rep = Report{} // the archived segment settles it
	}
	if p := w.problem(rep.FirstSeq, rep.FirstPrev, l.seq, rep.Lines, filepath.Base(l.path)); p != nil {
		return p, nil
	}
	if !w.seen && (rep.FirstSeq == 0 || a.Seq+1 != rep.FirstSeq) {
		return nil, fmt.Errorf("%w: checkpoint %d anchored in the HSM is not in the log", ErrTampered, a.Seq)
	}
	return nil, nil
}

// watchArchived verifies the archived segment that should hold w's record.
func (l *Log) watchArchived(w *anchorWatch) error {
	segs, err := Segments(l.path)
	if err != nil {
		return err
	}
	for _, s := range segs {
		last, err := strconv.ParseUint(strings.TrimPrefix(filepath.Base(s), filepath.Base(l.path)+"."), 10, 64)
		if err != nil || s == l.path || last < w.a.Seq {
			continue
		}
		f, err := os.Open(s)
		if err != nil {
			return fmt.Errorf("audit: open segment: %w", err)
		}
		defer f.Close()
		v := l.openVerifier(VerifyOptions{}, nil)
		w.cur, v.watch = filepath.Base(s), w
		if err := v.run(f); err != nil {
			return err
		}
		if err := v.result(); err != nil {
			return fmt.Errorf("segment %s: %w", s, err)
		}
		return nil
	}
	return nil
}

// appendSystem submits a record by the "system" actor to the commit loop
// and waits until it is durable.
func (l *Log) appendSystem(kind string, data json.RawMessage) error {
	req := &request{kind: kind, actor: "system", data: data, done: make(chan struct{})}
	l.reqs <- req
	<-req.done
	return req.err
}

// cutTorn moves the unterminated tail into a sidecar file (evidence is never
// destroyed, only set aside), truncates the log and describes what was cut.
func (l *Log) cutTorn(end, n int64) (json.RawMessage, error) {
	side := fmt.Sprintf("%s.torn-%d", l.path, end)
	sf, err := os.OpenFile(side, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("audit: save torn tail: %w", err)
	}
	h := sha256.New()
	_, err = io.Copy(io.MultiWriter(sf, h), io.NewSectionReader(l.f, end, n))
	if err == nil {
		err = sf.Sync()
	}
	if cerr := sf.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = syncDir(filepath.Dir(l.path))
	}
	if err != nil {
		return nil, fmt.Errorf("audit: save torn tail to %s: %w", side, err)
	}
	if err := l.f.Truncate(end); err != nil {
		return nil, fmt.Errorf("audit: truncate torn tail: %w", err)
	}
	if err := l.f.Sync(); err != nil {
		return nil, fmt.Errorf("audit: sync after truncating torn tail: %w", err)
	}
	return json.Marshal(struct {
		Reason  string `json:"reason"`
		Offset  int64  `json:"offset"`
		Bytes   int64  `json:"bytes"`
		SHA256  string `json:"sha256"`
		SavedAs string `json:"saved_as"`
	}{"unterminated last line (crash during an unacknowledged write)", end, n, hex.EncodeToString(h.Sum(nil)), filepath.Base(side)})
}

// lastNewline returns the offset just past the last newline (0 if none),
// scanning back at most maxTornBytes+1 bytes.
func lastNewline(f *os.File, size int64) (int64, error) {
	buf := make([]byte, 64<<10)
	for off := size; off > 0 && size-off <= maxTornBytes; {
		n := min(int64(len(buf)), off)
		off -= n
		if _, err := f.ReadAt(buf[:n], off); err != nil {
			return 0, fmt.Errorf("audit: read tail: %w", err)
		}
		for i := n - 1; i >= 0; i-- {
			if buf[i] == '\n' {
				return off + i + 1, nil
			}
		}
	}
	if size <= maxTornBytes {
		return 0, nil
	}
	return 0, fmt.Errorf("%w: no newline in the last %d bytes; run verify", ErrCorrupt, maxTornBytes)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("audit: sync dir: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("audit: sync dir: %w", err)
	}
	return nil
}

// Append adds a record and returns it once it is durable. data is marshalled
// to JSON (a json.RawMessage is used as is) and compacted. Concurrent calls
// share one write and fsync. If ctx ends first the error is ctx's, and the
// record may or may not have been committed.
func (l *Log) Append(ctx context.Context, kind, actor string, data any) (Record, error) {
	if err := checkText("kind", kind, MaxKindBytes); err != nil {
		return Record{}, err
	}
	if kind == KindCheckpoint || len(kind) >= 6 && kind[:6] == "audit." {
		return Record{}, fmt.Errorf("%w: kind %q is reserved", ErrInvalid, kind)
	}
	if err := checkText("actor", actor, MaxActorBytes); err != nil {
		return Record{}, err
	}
	raw, err := encodeData(data)
	if err != nil {
		return Record{}, err
	}
	return l.submit(ctx, &request{kind: kind, actor: actor, data: raw, done: make(chan struct{})})
}

// Checkpoint writes a signed checkpoint now and returns it once durable.
func (l *Log) Checkpoint(ctx context.Context) (Record, error) {
	return l.submit(ctx, &request{checkpoint: true, done: make(chan struct{})})
}

func (l *Log) submit(ctx context.Context, req *request) (Record, error) {
	l.inflight.Add(1)
	defer func() {
		l.inflight.Add(-1)
		select {
		case l.kick <- struct{}{}:
		default:
		}
	}()
	l.mu.RLock()
	if l.closed {
		l.mu.RUnlock()
		return Record{}, ErrClosed
	}
	select {
	case l.reqs <- req:
		l.mu.RUnlock()
	case <-ctx.Done():
		l.mu.RUnlock()
		return Record{}, ctx.Err()
	}
	select {
	case <-req.done:
		return req.rec, req.err
	case <-ctx.Done():
		return Record{}, ctx.Err()
	}
}

func checkText(what, s string, limit int) error {
	switch {
	case s == "":
		return fmt.Errorf("%w: empty %s", ErrInvalid, what)
	case len(s) > limit:
		return fmt.Errorf("%w: %s longer than %d bytes", ErrInvalid, what, limit)
	case !utf8.ValidString(s):
		return fmt.Errorf("%w: %s is not valid UTF-8", ErrInvalid, what)
	}
	return nil
}

func encodeData(data any) (json.RawMessage, error) {
	var raw []byte
	switch d := data.(type) {
	case nil:
		return nil, nil
	case json.RawMessage:
		raw = d
	default:
		b, err := json.Marshal(d)
		if err != nil {
			return nil, fmt.Errorf("%w: data: %w", ErrInvalid, err)
		}
		raw = b
	}
	buf := bytes.NewBuffer(make([]byte, 0, len(raw)))
	if err := json.Compact(buf, raw); err != nil {
		return nil, fmt.Errorf("%w: data is not valid JSON: %w", ErrInvalid, err)
	}
	if buf.String() == "null" {
		return nil, nil
	}
	if !utf8.Valid(buf.Bytes()) {
		return nil, fmt.Errorf("%w: data is not valid UTF-8", ErrInvalid)
	}
	if buf.Len() > MaxDataBytes {
		return nil, fmt.Errorf("%w: data is %d bytes, limit %d", ErrInvalid, buf.Len(), MaxDataBytes)
	}
	return buf.Bytes(), nil
}

// Head returns the last durable record's seq and hash (0 and "" when empty).
func (l *Log) Head() (seq uint64, hash string) {
	l.headMu.Lock()
	defer l.headMu.Unlock()
	return l.headSeq, l.headHash
}

// CheckpointErr returns the error of the last automatic checkpoint that
// failed (nil once one succeeds), or of the last anchor update that failed
// (wrapping ErrAnchor; nil once one succeeds). Records are still committed
// while the signer fails; they are chain-protected only until a checkpoint
// succeeds.
func (l *Log) CheckpointErr() error {
	l.headMu.Lock()
	defer l.headMu.Unlock()
	return l.cpErr
}

// Close drains pending appends, writes a final checkpoint if any record is
// unsigned, fsyncs and releases the file.
func (l *Log) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return ErrClosed
	}
	l.closed = true
	close(l.reqs)
	l.mu.Unlock()
	<-l.done
	err := l.closeErr
	if cerr := l.f.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("audit: close: %w", cerr)
	}
	return err
}

func (l *Log) commitLoop() {
	defer close(l.done)
	tick := time.NewTicker(max(l.opts.CheckpointInterval/4, 10*time.Millisecond))
	defer tick.Stop()
	gatherTimer := time.NewTimer(time.Hour)
	gatherTimer.Stop()
	for {
		select {
		case req, ok := <-l.reqs:
			if !ok {
				l.closeErr = l.finalCheckpoint()
				return
			}
			var rot *request
			l.batch = l.batch[:0]
			if req.rotate {
				rot = req
			} else {
				l.batch = append(l.batch, req)
			}
			size := len(req.data)
			// Appenders acknowledged by the last commit resubmit within
			// microseconds; waiting briefly for every appender in flight
			// (never longer than a fraction of an fsync) lets one fsync
			// carry all of them instead of alternating half batches.
			var gather <-chan time.Time
		drain:
			for rot == nil && len(l.batch) < maxBatchRecords && size < maxBatchBytes {
				var r *request
				var ok bool
				select {
				case r, ok = <-l.reqs:
				default:
					if len(l.batch) >= int(l.inflight.Load()) {
						break drain
					}
					if gather == nil {
						gatherTimer.Reset(min(l.lastSync/4, maxGather))
						gather = gatherTimer.C
					}
					select {
					case r, ok = <-l.reqs:
					case <-l.kick:
						continue // an appender left: re-check who is still coming
					case <-gather:
						break drain
					}
				}
				if !ok {
					break drain
				}
				if r.rotate {
					rot = r
					break drain
				}
				l.batch = append(l.batch, r)
				size += len(r.data) + 256
			}
			gatherTimer.Stop() // Go ≥ 1.23: no stale value survives Stop
			if len(l.batch) > 0 {
				l.commit(l.batch)
				clear(l.batch)
			}
			switch {
			case rot != nil:
				rot.archived, rot.err = l.rotate()
				close(rot.done)
			case l.opts.SegmentBytes > 0 && l.size >= l.rotateAt && l.failed == nil:
				if _, err := l.rotate(); err != nil {
					// Retry after another eighth of a segment.
					l.rotateAt = l.size + max(l.opts.SegmentBytes/8, 1)
				}
			}
		case <-tick.C:
			if l.sinceCP > 0 && time.Since(l.lastCP) >= l.opts.CheckpointInterval {
				l.commit(nil)
			}
		}
	}
}

func (l *Log) finalCheckpoint() error {
	if l.failed != nil {
		return l.failed
	}
	if l.sinceCP == 0 {
		return l.anchor() // the last checkpoint's anchor update may have failed
	}
	req := &request{checkpoint: true, done: make(chan struct{})}
	l.commit([]*request{req})
	return req.err
}

// commit writes one batch with a single write and fdatasync. A nil batch
// means a timed checkpoint.
func (l *Log) commit(batch []*request) {
	if l.failed != nil {
		for _, r := range batch {
			r.err = l.failed
			close(r.done)
		}
		return
	}
	l.buf = l.buf[:0]
	startSeq, startPrev, startSince := l.seq, l.prev, l.sinceCP
	autoCP := func() {
		if _, err := l.addCheckpoint(); err != nil {
			// Keep committing records; retry after another interval's worth.
			l.cpRetryAt = l.sinceCP + l.opts.CheckpointEvery
			l.lastCP = time.Now()
			l.setCPErr(err)
			return
		}
		l.setCPErr(nil)
	}
	if batch == nil && l.sinceCP > 0 {
		autoCP()
	}
	for _, r := range batch {
		if r.checkpoint {
			r.rec, r.err = l.addCheckpoint()
			continue
		}
		r.rec = l.add(r.kind, r.actor, r.data)
		if l.sinceCP >= l.opts.CheckpointEvery && l.sinceCP >= l.cpRetryAt {
			autoCP()
		}
	}
	if len(l.buf) > 0 {
		if err := l.write(); err != nil {
			l.fail(err)
			l.seq, l.prev, l.sinceCP = startSeq, startPrev, startSince
			for _, r := range batch {
				r.err, r.rec = l.failed, Record{}
			}
		}
	}
	l.headMu.Lock()
	if l.failed == nil {
		l.headSeq, l.headHash = l.seq, l.prev
	}
	l.headMu.Unlock()
	// Appenders need not wait for the anchor; a Checkpoint caller learns
	// whether its checkpoint was anchored.
	var cps []*request
	for _, r := range batch {
		if r.checkpoint && r.err == nil {
			cps = append(cps, r)
			continue
		}
		close(r.done)
	}
	if l.failed == nil {
		if err := l.anchor(); err != nil {
			for _, r := range cps {
				r.err = err
			}
		}
	}
	for _, r := range cps {
		close(r.done)
	}
}

// anchor stores the newest durable checkpoint in Options.Anchor. Only
// after the log's fsync: an anchor ahead of the log would make Open refuse
// a genuine log. A failure leaves the anchor on an earlier checkpoint,
// which is safe, and is reported by CheckpointErr until an update works.
func (l *Log) anchor() error {
	if l.opts.Anchor == nil || l.newestCP.Seq <= l.anchored {
		return nil
	}
	if err := l.opts.Anchor.StoreAnchor(l.newestCP.encode()); err != nil {
		err = fmt.Errorf("%w: checkpoint %d is durable but the anchor still names checkpoint %d: %w", ErrAnchor, l.newestCP.Seq, l.anchored, err)
		l.setCPErr(err)
		return err
	}
	l.anchored = l.newestCP.Seq
	l.headMu.Lock()
	if errors.Is(l.cpErr, ErrAnchor) {
		l.cpErr = nil
	}
	l.headMu.Unlock()
	return nil
}

func (l *Log) setCPErr(err error) {
	l.headMu.Lock()
	l.cpErr = err
	l.headMu.Unlock()
}

func (l *Log) write() error {
	start := time.Now()
	n, err := l.f.Write(l.buf)
	l.size += int64(n)
	l.writes++
	if err != nil {
		return err
	}
	err = unix.Fdatasync(l.fd)
	l.lastSync = time.Since(start)
	return err
}

// add encodes the next record into the batch buffer.
func (l *Log) add(kind, actor string, data json.RawMessage) Record {
	seq := l.seq + 1
	now := l.opts.Now().UTC()
	ts := formatTime(now)
	w := wire{Seq: seq, Time: ts, Kind: kind, Actor: actor, Data: data, Prev: l.prev}
	w.Hash = hashRecord(seq, ts, kind, actor, data, l.prev)
	l.buf = appendLine(l.buf, &w)
	l.seq, l.prev = seq, w.Hash
	l.sinceCP++
	return Record{Seq: seq, Time: now, Kind: kind, Actor: actor, Data: data, Prev: w.Prev, Hash: w.Hash}
}

func (l *Log) addCheckpoint() (Record, error) {
	seq := l.seq + 1
	ts := formatTime(l.opts.Now())
	w := wire{Seq: seq, Time: ts, Kind: KindCheckpoint, Actor: "system", Data: l.cp.data, Prev: l.prev}
	w.Hash = hashRecord(seq, ts, w.Kind, w.Actor, w.Data, w.Prev)
	sig, err := l.cp.sign(rand.Reader, seq, w.Hash)
	if err != nil {
		return Record{}, err
	}
	w.Sig, w.Cert = sig, l.cp.cert
	l.buf = appendLine(l.buf, &w)
	l.seq, l.prev = seq, w.Hash
	l.newestCP = Anchor{Seq: seq, Hash: w.Hash}
	l.sinceCP, l.cpRetryAt = 0, 0
	l.lastCP = time.Now()
	return w.record(), nil
}
