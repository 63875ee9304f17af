package audit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Segments: Rotate seals the current file with a checkpoint, renames it to
// "<path>.<last seq, 20 digits>" and starts a new file at path whose first
// record (KindContinued) links to the sealed file's head. Each file verifies
// on its own; VerifyChain also checks that consecutive files link and that
// none is missing.

const segDigits = 20

type continuedData struct {
	Segment string `json:"segment"`  // file name of the previous segment
	PrevSeq uint64 `json:"prev_seq"` // its last seq
}

func segmentName(path string, last uint64) string {
	return fmt.Sprintf("%s.%0*d", path, segDigits, last)
}

// Segments lists the files of the log at path in order: archived segments,
// then path itself if it exists.
func Segments(path string) ([]string, error) {
	dir, base := filepath.Dir(path), filepath.Base(path)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("audit: list segments: %w", err)
	}
	var out []string
	for _, e := range ents {
		suf, ok := strings.CutPrefix(e.Name(), base+".")
		if !ok || len(suf) != segDigits {
			continue
		}
		if _, err := strconv.ParseUint(suf, 10, 64); err == nil {
			out = append(out, filepath.Join(dir, e.Name()))
		}
	}
	sort.Strings(out)
	if _, err := os.Stat(path); err == nil {
		out = append(out, path)
	}
	return out, nil
}

// Rotate seals the current segment with a checkpoint and starts a new one
// (see Options.SegmentBytes). It returns the archived file's path, or ""
// when the log is empty. The checkpoint must succeed: a segment is never
// archived unsigned.
func (l *Log) Rotate(ctx context.Context) (string, error) {
	req := &request{rotate: true, done: make(chan struct{})}
	_, err := l.submit(ctx, req)
	return req.archived, err
}

// rotate runs in the committer.
func (l *Log) rotate() (string, error) {
	if l.failed != nil {
		return "", l.failed
	}
	if l.seq == 0 {
		return "", nil
	}
	if l.sinceCP > 0 {
		l.buf = l.buf[:0]
		if _, err := l.addCheckpoint(); err != nil {
			return "", fmt.Errorf("audit: rotate: %w", err)
		}
		if err := l.write(); err != nil {
			return "", l.fail(err)
		}
		l.publishHead()
	}
	// A failed anchor update does not stop the rotation: CheckpointErr
	// reports it and the next checkpoint retries.
	_ = l.anchor()
	archived := segmentName(l.path, l.seq)
	if _, err := os.Lstat(archived); !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("audit: rotate: %s already exists", archived)
	}
	if err := os.Rename(l.path, archived); err != nil {
		return "", fmt.Errorf("audit: rotate: %w", err)
	}
	// From here on a failure leaves the log without a current file;
	// Open recovers from that, this Log does not.
	if err := syncDir(filepath.Dir(l.path)); err != nil {
		return "", l.fail(err)
	}
	f, err := os.OpenFile(l.path, os.O_RDWR|os.O_CREATE|os.O_EXCL|os.O_APPEND, 0o600)
	if err != nil {
		return "", l.fail(err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		return "", l.fail(err)
	}
	if err := syncDir(filepath.Dir(l.path)); err != nil {
		f.Close()
		return "", l.fail(err)
	}
	l.f.Close()
	l.f, l.fd, l.size = f, int(f.Fd()), 0
	l.rotateAt = l.opts.SegmentBytes
	data, _ := json.Marshal(continuedData{Segment: filepath.Base(archived), PrevSeq: l.seq})
	l.buf = l.buf[:0]
	l.add(KindContinued, "system", data)
	if err := l.write(); err != nil {
		return "", l.fail(err)
	}
	l.publishHead()
	return archived, nil
}

func (l *Log) fail(err error) error {
	l.failed = fmt.Errorf("%w: write failed, reopen the log to recover: %w", ErrClosed, err)
	return l.failed
}

func (l *Log) publishHead() {
	l.headMu.Lock()
	l.headSeq, l.headHash = l.seq, l.prev
	l.headMu.Unlock()
}

// continueFrom, for an empty current file, finds the newest archived
// segment and sets the chain to continue from its head. It returns the
// Data of the continuation record, or nil if there is no segment.
func (l *Log) continueFrom() (json.RawMessage, error) {
	segs, err := Segments(l.path)
	if err != nil {
		return nil, err
	}
	if len(segs) > 0 && segs[len(segs)-1] == l.path {
		segs = segs[:len(segs)-1]
	}
	if len(segs) == 0 {
		return nil, nil
	}
	last := segs[len(segs)-1]
	f, err := os.Open(last)
	if err != nil {
		return nil, fmt.Errorf("audit: open segment: %w", err)
	}
	defer f.Close()
	v := l.openVerifier(VerifyOptions{RequireCheckpointAtEnd: true}, nil)
	if err := v.run(f); err != nil {
		return nil, err
	}
	if err := v.result(); err != nil {
		return nil, fmt.Errorf("audit: refusing to continue from segment %s: %w", last, err)
	}
	if segmentName(l.path, v.rep.HeadSeq) != last {
		return nil, fmt.Errorf("%w: segment %s ends at seq %d", ErrTampered, last, v.rep.HeadSeq)
	}
	l.seq, l.prev = v.rep.HeadSeq, v.rep.HeadHash
	l.headSeq, l.headHash = l.seq, l.prev
	l.sinceCP = 0
	return json.Marshal(continuedData{Segment: filepath.Base(last), PrevSeq: l.seq})
}

// VerifyChain verifies the files of one log in order (as listed by
// Segments) and that each continues the previous one: a missing, reordered
// or substituted segment is reported like a missing or edited record.
// Every file but the last must end with a checkpoint; opts applies to the
// last, and opts.Anchor to the chain as a whole. Problems carry the file
// they were found in.
func VerifyChain(paths []string, opts VerifyOptions) (Report, error) {
	var total Report
	if len(paths) == 0 {
		return total, errors.New("audit: no log files to verify")
	}
	if opts.Roots == nil && len(opts.Keys) == 0 {
		return total, errNoTrust
	}
	anchor := opts.Anchor
	opts.Anchor = nil
	var watch *anchorWatch
	if anchor != nil {
		if anchor.Seq == 0 || !isHexHash(anchor.Hash) {
			return total, fmt.Errorf("%w: anchor seq %d hash %q is not a record", ErrAnchor, anchor.Seq, anchor.Hash)
		}
		watch = &anchorWatch{a: *anchor}
	}
	var lastLines int
	var name string
	for i, p := range paths {
		o := opts
		if i < len(paths)-1 {
			o.RequireCheckpointAtEnd = true
		}
		name = filepath.Base(p)
		rep, err := verifyFile(p, o, watch, name)
		if err != nil {
			return total, err
		}
		lastLines = rep.Lines
		for j := range rep.Problems {
			rep.Problems[j].File = name
		}
		first := rep.FirstSeq
		switch {
		case rep.Records == 0:
		case i == 0 && first > 1:
			rep.Problems = append([]Problem{{Seq: 1, Line: 1, File: name, Kind: ProblemDropped,
				Detail: fmt.Sprintf("records 1..%d are missing: earlier segments absent", first-1)}}, rep.Problems...)
		case i > 0 && first != total.HeadSeq+1:
			kind := ProblemDropped
			if first <= total.HeadSeq {
				kind = ProblemReordered
			}
			rep.Problems = append([]Problem{{Seq: total.HeadSeq + 1, Line: 1, File: name, Kind: kind,
				Detail: fmt.Sprintf("segment starts at seq %d, previous segment ended at %d", first, total.HeadSeq)}}, rep.Problems...)
		case i > 0 && rep.FirstPrev != total.HeadHash:
			rep.Problems = append([]Problem{{Seq: first, Line: 1, File: name, Kind: ProblemEdited,
				Detail: "segment does not link to the previous segment's last record"}}, rep.Problems...)
		}
		total.Records += rep.Records
		total.Lines += rep.Lines
		total.Checkpoints += rep.Checkpoints
		total.LastCheckpointSeq = max(total.LastCheckpointSeq, rep.LastCheckpointSeq)
		if total.FirstSeq == 0 {
			total.FirstSeq, total.FirstPrev = rep.FirstSeq, rep.FirstPrev
		}
		if rep.HeadSeq != 0 {
			total.HeadSeq, total.HeadHash = rep.HeadSeq, rep.HeadHash
		}
		total.ProblemsOmitted += rep.ProblemsOmitted
		total.addProblems(rep.Problems...)
		total.ReanchorsOmitted += rep.ReanchorsOmitted
		total.addReanchors(rep.Reanchors...)
	}
	if watch != nil {
		if p := watch.problem(total.FirstSeq, total.FirstPrev, total.HeadSeq, lastLines, name); p != nil {
			if p.File == "" {
				p.File = filepath.Base(paths[0])
			}
			total.addProblems(*p)
		}
	}
	if len(total.Problems) > 0 {
		return total, fmt.Errorf("%w: %d problem(s), first: %s", ErrTampered, len(total.Problems)+total.ProblemsOmitted, total.Problems[0])
	}
	return total, nil
}

func (r *Report) addProblems(ps ...Problem) {
	r.Problems = appendCapped(r.Problems, &r.ProblemsOmitted, ps)
}

func (r *Report) addReanchors(rs ...Reanchoring) {
	r.Reanchors = appendCapped(r.Reanchors, &r.ReanchorsOmitted, rs)
}

// appendCapped appends xs to list up to maxProblems entries and counts the
// rest in omitted: a hostile log cannot make a report unbounded.
func appendCapped[T any](list []T, omitted *int, xs []T) []T {
	for _, x := range xs {
		if len(list) >= maxProblems {
			*omitted++
			continue
		}
		list = append(list, x)
	}
	return list
}

// verifyFile verifies one file of a chain, noting the anchored record in
// watch. Only an I/O error is returned; problems are in the Report.
func verifyFile(path string, opts VerifyOptions, watch *anchorWatch, name string) (Report, error) {
	f, err := os.Open(path)
	if err != nil {
		return Report{}, fmt.Errorf("audit: %w", err)
	}
	defer f.Close()
	v, err := newVerifier(opts)
	if err != nil {
		return Report{}, err
	}
	if watch != nil {
		watch.cur = name
	}
	v.watch = watch
	if err := v.run(f); err != nil {
		return v.rep, err
	}
	return v.rep, nil
}
