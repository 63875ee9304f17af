package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
)

// The issuance journal: RecordIssued's durability point.
//
// A bbolt commit costs two fdatasyncs (pages, then meta) and rewrites the
// B-tree pages it touches; an append-only journal costs one fdatasync for a
// whole batch of records. RecordIssued therefore reserves the serial (in
// memory and against the B-tree), appends the record to the journal with
// group commit, and returns once that write is durable. A background applier
// moves journaled records into the B-tree in large transactions and then
// deletes the journal segments it has applied. Open replays any segment left
// by a crash before it returns, so every acknowledged record is in the
// B-tree by the time anyone reads it after a restart.
//
// Segment files sit beside the database: <db>.journal.<16 hex digits>. A
// segment is a sequence of frames:
//
//	u32 length of payload (big-endian)
//	u32 CRC-32C of payload
//	payload: 20-byte serial key, then the cert record (binary v1, schema.go)
//
// A frame that is cut short or fails its CRC can only be the unacknowledged
// tail of the last write before a crash: replay stops reading that segment
// there.
//
// Readers see journaled records at once: Cert consults the pending set, and
// every operation that scans or modifies certificates (Revoke, RevokeNode,
// ForEach*, Stats, Backup) first applies the journal.

var crcTable = crc32.MakeTable(crc32.Castagnoli)

const (
	// DefaultApplyInterval is how often journaled records move into the
	// B-tree.
	DefaultApplyInterval = 20 * time.Millisecond
	// applyThreshold starts an apply early when this many records wait.
	applyThreshold = 4096
	maxFrame       = 1 << 20
	// segmentBytes is the size at which the journal moves to a new segment.
	segmentBytes = 4 << 20
)

type pendingRec struct {
	rec     CertRecord
	key     []byte // serial key
	val     []byte // encoded record
	seg     uint64
	durable bool
}

type jcall struct {
	key   []byte
	frame []byte
	done  chan error
}

type journal struct {
	base   string // database path
	noSync bool
	max    int           // frames per write (Options.MaxBatchSize)
	every  time.Duration // apply interval

	ioMu sync.Mutex // held across write+fsync and segment rotation
	f    *os.File
	seg  uint64
	size int64 // bytes in the current segment

	mu      sync.Mutex
	pending map[string]*pendingRec
	queue   []*jcall
	running bool
	failed  error // sticky: a write or fsync failed; nothing more is acknowledged
	writes  uint64
	records uint64

	applyMu sync.Mutex
	kick    chan struct{}
	stop    chan struct{}
	stopped chan struct{}
}

func segmentName(base string, n uint64) string {
	return base + ".journal." + fmt.Sprintf("%016x", n)
}

// segments lists existing segment numbers in order.
func segments(base string) ([]uint64, error) {
	matches, err := filepath.Glob(base + ".journal.*")
	if err != nil {
		return nil, err
	}
	var out []uint64
	for _, m := range matches {
		suffix := strings.TrimPrefix(m, base+".journal.")
		n, err := strconv.ParseUint(suffix, 16, 64)
		if err != nil || len(suffix) != 16 {
			return nil, fmt.Errorf("%w: unexpected journal file %s", ErrCorrupt, m)
		}
		out = append(out, n)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out, nil
}

// openJournal replays what a previous process left, then starts a fresh
// segment and the applier.
func (s *Store) openJournal(noSync bool, maxBatch int, every time.Duration) error {
	j := &journal{base: s.path, noSync: noSync, max: maxBatch, every: every, pending: map[string]*pendingRec{},
		kick: make(chan struct{}, 1), stop: make(chan struct{}), stopped: make(chan struct{})}
	segs, err := segments(s.path)
	if err != nil {
		return err
	}
	var recs []pendingRec
	for i, n := range segs {
		got, err := readSegment(segmentName(s.path, n), i == len(segs)-1)
		if err != nil {
			return err
		}
		recs = append(recs, got...)
		j.seg = n
	}
	if len(recs) > 0 {
		if err := s.update("journal replay", func(tx *bolt.Tx) error {
			for i := range recs {
				if _, err := insertCert(tx, recs[i].key, recs[i].val, &recs[i].rec); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			return fmt.Errorf("store: replay journal: %w", err)
		}
	}
	for _, n := range segs {
		if err := os.Remove(segmentName(s.path, n)); err != nil {
			return fmt.Errorf("store: remove applied journal: %w", err)
		}
	}
	j.seg++
	if j.f, err = j.create(j.seg); err != nil {
		return err
	}
	s.journal = j
	go s.applier()
	return nil
}

// readSegment returns a segment's records. Only the last segment may end
// in a damaged frame, and only if that frame runs to the end of the file (a
// write cut short by a crash, never acknowledged); damage anywhere else
// would drop acknowledged records, so it is ErrCorrupt.
func readSegment(path string, last bool) ([]pendingRec, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("store: journal: %w", err)
	}
	var out []pendingRec
	for off := 0; off < len(raw); {
		torn := func(why string) ([]pendingRec, error) {
			if last {
				return out, nil
			}
			return nil, fmt.Errorf("%w: journal %s: %s at offset %d", ErrCorrupt, path, why, off)
		}
		if len(raw)-off < 8 {
			return torn("short frame header")
		}
		n := int(binary.BigEndian.Uint32(raw[off:]))
		if n < serialLen+1 || n > maxFrame {
			return nil, fmt.Errorf("%w: journal %s: frame length %d at offset %d", ErrCorrupt, path, n, off)
		}
		end := off + 8 + n
		if end > len(raw) {
			return torn("short frame")
		}
		payload := raw[off+8 : end]
		if crc32.Checksum(payload, crcTable) != binary.BigEndian.Uint32(raw[off+4:]) {
			if end == len(raw) {
				return torn("checksum mismatch in the final frame")
			}
			return nil, fmt.Errorf("%w: journal %s: checksum mismatch at offset %d", ErrCorrupt, path, off)
		}
		rec, err := decodeCert(payload[:serialLen], payload[serialLen:])
		if err != nil {
			return nil, fmt.Errorf("%w: journal %s: %v", ErrCorrupt, path, err)
		}
		out = append(out, pendingRec{rec: rec, key: payload[:serialLen], val: payload[serialLen:]})
		off = end
	}
	return out, nil
}

func (j *journal) create(n uint64) (*os.File, error) {
	f, err := os.OpenFile(segmentName(j.base, n), os.O_CREATE|os.O_EXCL|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("store: journal: %w", err)
	}
	if !j.noSync {
		if err := syncDir(filepath.Dir(j.base)); err != nil {
			f.Close()
			return nil, fmt.Errorf("store: journal: sync directory: %w", err)
		}
	}
	return f, nil
}

// reserve claims key for rec unless it is pending or already recorded.
// The B-tree is consulted after the claim, outside j.mu, so that callers do
// not queue behind a read transaction: a key is always pending, in the
// tree, or both (the applier deletes a pending record only after its
// transaction commits), and a claimed record is not durable, so the applier
// leaves it alone.
func (s *Store) reserve(key, val []byte, rec CertRecord) error {
	j := s.journal
	j.mu.Lock()
	if j.failed != nil {
		j.mu.Unlock()
		return j.failed
	}
	if _, ok := j.pending[string(key)]; ok {
		j.mu.Unlock()
		return fmt.Errorf("%w: %x", ErrSerialExists, rec.Serial)
	}
	j.pending[string(key)] = &pendingRec{rec: rec, key: key, val: val}
	j.mu.Unlock()
	var exists bool
	err := s.view("serial check", func(tx *bolt.Tx) error {
		exists = tx.Bucket(bucketCerts).Get(key) != nil
		return nil
	})
	if err == nil && exists {
		err = fmt.Errorf("%w: %x", ErrSerialExists, rec.Serial)
	}
	if err != nil {
		j.mu.Lock()
		delete(j.pending, string(key))
		j.mu.Unlock()
	}
	return err
}

// journalRecord makes rec durable in the journal (group-committed).
func (s *Store) journalRecord(key, val []byte, rec CertRecord) error {
	if err := s.reserve(key, val, rec); err != nil {
		return err
	}
	// Frame: payload length and CRC-32 (8 bytes), then payload = key || val.
	frame := make([]byte, 8, 8+len(key)+len(val))
	frame = append(append(frame, key...), val...)
	binary.BigEndian.PutUint32(frame[:4], uint32(len(frame)-8))
	binary.BigEndian.PutUint32(frame[4:8], crc32.Checksum(frame[8:], crcTable))
	c := &jcall{key: key, frame: frame, done: make(chan error, 1)}
	j := s.journal
	j.mu.Lock()
	j.queue = append(j.queue, c)
	lead := !j.running
	j.running = true
	j.mu.Unlock()
	if lead {
		s.leadJournal()
	}
	err := <-c.done
	if err != nil {
		j.mu.Lock()
		delete(j.pending, string(key))
		j.mu.Unlock()
	}
	return err
}

// leadJournal writes queued frames until the queue is empty. There is no
// timer: a caller that finds no write running writes at once, and callers
// that arrive during a write form the next batch (at most j.max frames), so
// a lone caller pays one fsync and N steady callers share one.
func (s *Store) leadJournal() {
	j := s.journal
	for {
		j.mu.Lock()
		n := min(len(j.queue), j.max)
		batch := append([]*jcall(nil), j.queue[:n]...)
		j.queue = append(j.queue[:0], j.queue[n:]...)
		if len(batch) == 0 {
			j.running = false
			j.mu.Unlock()
			return
		}
		j.mu.Unlock()
		var buf []byte
		for _, c := range batch {
			buf = append(buf, c.frame...)
		}
		j.ioMu.Lock()
		_, err := j.f.Write(buf)
		j.size += int64(len(buf))
		if err == nil && !j.noSync {
			err = j.f.Sync()
		}
		seg := j.seg
		j.mu.Lock()
		if err != nil {
			err = fmt.Errorf("store: journal write: %w", err)
			j.failed = err
		} else {
			j.writes++
			j.records += uint64(len(batch))
		}
		for _, c := range batch {
			if p := j.pending[string(c.key)]; p != nil && err == nil {
				p.durable, p.seg = true, seg
			}
		}
		full := len(j.pending) >= applyThreshold
		j.mu.Unlock()
		j.ioMu.Unlock()
		if full {
			select {
			case j.kick <- struct{}{}:
			default:
			}
		}
		for _, c := range batch {
			c.done <- err
		}
	}
}

func (s *Store) pendingCount() int {
	s.journal.mu.Lock()
	defer s.journal.mu.Unlock()
	return len(s.journal.pending)
}

// pendingCert returns a journaled record not yet in the tree.
func (s *Store) pendingCert(key []byte) (CertRecord, bool) {
	j := s.journal
	j.mu.Lock()
	defer j.mu.Unlock()
	p, ok := j.pending[string(key)]
	if !ok || !p.durable {
		return CertRecord{}, false
	}
	return p.rec, true
}

func (s *Store) applier() {
	j := s.journal
	defer close(j.stopped)
	t := time.NewTicker(j.every)
	defer t.Stop()
	for {
		select {
		case <-j.stop:
			return
		case <-t.C:
		case <-j.kick:
		}
		// A failure leaves the records journaled and pending; the next
		// round, or the next Open, applies them.
		_ = s.applyJournal()
	}
}

// applyJournal moves every durable journaled record into the tree and
// deletes the segments that held them.
func (s *Store) applyJournal() error {
	j := s.journal
	j.applyMu.Lock()
	defer j.applyMu.Unlock()
	j.mu.Lock()
	var batch []*pendingRec
	for _, p := range j.pending {
		if p.durable {
			batch = append(batch, p)
		}
	}
	j.mu.Unlock()
	if len(batch) > 0 {
		sort.Slice(batch, func(a, b int) bool { return string(batch[a].key) < string(batch[b].key) })
		if err := s.update("journal apply", func(tx *bolt.Tx) error {
			for _, p := range batch {
				if _, err := insertCert(tx, p.key, p.val, &p.rec); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			return err
		}
		j.mu.Lock()
		for _, p := range batch {
			delete(j.pending, string(p.key))
		}
		j.mu.Unlock()
	}
	return s.rotateJournal(false)
}

// rotateJournal starts a new segment once the current one is large (or
// always, with force) and deletes every older segment none of whose records
// still waits to be applied. Rotation costs a directory fsync, so it is
// rare; replaying an applied record after a crash is harmless.
func (s *Store) rotateJournal(force bool) error {
	j := s.journal
	j.mu.Lock()
	failed := j.failed
	j.mu.Unlock()
	if failed != nil {
		// The failed write may have left a partial frame: the segment must
		// stay the last one so Open treats that frame as a torn tail.
		return nil
	}
	j.ioMu.Lock()
	if j.size < segmentBytes && !force {
		j.ioMu.Unlock()
		return nil
	}
	nf, err := j.create(j.seg + 1)
	if err != nil {
		j.ioMu.Unlock()
		return err
	}
	prev := j.f
	j.f, j.seg, j.size = nf, j.seg+1, 0
	j.ioMu.Unlock()
	prev.Close()
	j.mu.Lock()
	keep := j.seg // oldest segment still needed
	for _, p := range j.pending {
		if p.durable && p.seg < keep {
			keep = p.seg
		}
	}
	j.mu.Unlock()
	segs, err := segments(s.path)
	if err != nil {
		return err
	}
	for _, n := range segs {
		if n < keep {
			if err := os.Remove(segmentName(s.path, n)); err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
		}
	}
	return nil
}

// flushJournal makes every acknowledged record visible in the tree; callers
// that scan or modify certificates use it first.
func (s *Store) flushJournal() error {
	if s.journal == nil {
		return nil
	}
	return s.applyJournal()
}

// closeJournal stops the applier, applies what is left and removes the
// segments, all of whose records are then in the tree.
func (s *Store) closeJournal() error {
	j := s.journal
	if j == nil {
		return nil
	}
	close(j.stop)
	<-j.stopped
	err := s.applyJournal()
	j.ioMu.Lock()
	defer j.ioMu.Unlock()
	j.f.Close()
	if err == nil && s.pendingCount() == 0 {
		segs, _ := segments(s.path)
		for _, n := range segs {
			_ = os.Remove(segmentName(s.path, n))
		}
	}
	return err
}
