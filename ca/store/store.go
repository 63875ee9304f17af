package store

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

const (
	// DefaultMaxBatchSize caps the records one journal write carries
	// (journal.go), far above the concurrency a CA sees.
	DefaultMaxBatchSize = 512
	DefaultTimeout      = time.Second
)

// Options tune Open. The zero value is the production setting.
type Options struct {
	// Timeout bounds the wait for the file lock (default 1s), then ErrLocked.
	Timeout time.Duration
	// NoSync skips fsync. Tests only: a crash may lose acknowledged writes.
	NoSync bool
	// Verify runs a full page-level consistency check at open (reads the
	// whole file; for `store check`-style tooling and recovery drills).
	Verify bool
	// MaxBatchSize caps the records one journal write (RecordIssued's
	// group commit) carries (default DefaultMaxBatchSize). There is no
	// delay to tune: see journal.go.
	MaxBatchSize int
	// ApplyInterval is how often journaled issuances move into the B-tree
	// (default DefaultApplyInterval).
	ApplyInterval time.Duration
}

// Store is the CA's database. It is safe for concurrent use; methods that
// take a callback run it inside a read transaction, so the callback must not
// call Store methods that write.
type Store struct {
	db      *bolt.DB
	path    string
	opts    Options
	journal *journal
}

// Open opens or creates the database at path (mode 0600).
func Open(path string, opts Options) (*Store, error) {
	if path == "" {
		return nil, fmt.Errorf("%w: empty database path", ErrInvalid)
	}
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.MaxBatchSize <= 0 {
		opts.MaxBatchSize = DefaultMaxBatchSize
	}
	if opts.ApplyInterval <= 0 {
		opts.ApplyInterval = DefaultApplyInterval
	}
	s := &Store{path: path, opts: opts}
	_, statErr := os.Stat(path)
	created := errors.Is(statErr, os.ErrNotExist)
	db, err := s.openBolt(opts)
	if err != nil {
		return nil, err
	}
	s.db = db
	if err := s.check(opts); err != nil {
		_ = db.Close()
		return nil, err
	}
	if created && !opts.NoSync {
		// A new file's directory entry is only durable once the directory is.
		if err := syncDir(filepath.Dir(path)); err != nil {
			_ = db.Close()
			return nil, fmt.Errorf("store: sync directory of %s: %w", path, err)
		}
	}
	if err := s.openJournal(opts.NoSync, opts.MaxBatchSize, opts.ApplyInterval); err != nil {
		_ = db.Close()
		return nil, err
	}
	return s, nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

func (s *Store) openBolt(opts Options) (db *bolt.DB, err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if p := recover(); p != nil {
			if db != nil {
				_ = db.Close()
			}
			db, err = nil, fmt.Errorf("%w: %s: open: %v", ErrCorrupt, s.path, p)
		}
	}()
	// The freelist is synced on every commit. Not syncing it saves a page
	// write per commit, but then Open rebuilds it on a bbolt goroutine,
	// where a damaged page faults beyond our recovery and kills the process.
	// The map freelist keeps allocation cheap as the file fragments.
	db, err = bolt.Open(s.path, 0o600, &bolt.Options{
		Timeout:      opts.Timeout,
		NoSync:       opts.NoSync,
		FreelistType: bolt.FreelistMapType,
	})
	switch {
	case err == nil:
		return db, nil
	case errors.Is(err, berrors.ErrTimeout):
		return nil, fmt.Errorf("%w: %s (waited %s)", ErrLocked, s.path, opts.Timeout)
	case errors.Is(err, berrors.ErrInvalid), errors.Is(err, berrors.ErrChecksum),
		errors.Is(err, berrors.ErrVersionMismatch), errors.Is(err, berrors.ErrInvalidMapping):
		return nil, fmt.Errorf("%w: %s: open: %w", ErrCorrupt, s.path, err)
	}
	var pe *os.PathError
	if errors.As(err, &pe) {
		return nil, fmt.Errorf("store: open %s: %w", s.path, err)
	}
	// Anything else bbolt says about an existing file is about its content.
	return nil, fmt.Errorf("%w: %s: open: %w", ErrCorrupt, s.path, err)
}

// check verifies the file is whole and initialises or validates the schema.
func (s *Store) check(opts Options) error {
	fi, err := os.Stat(s.path)
	if err != nil {
		return fmt.Errorf("store: stat %s: %w", s.path, err)
	}
	var need int64
	if err := s.view("size check", func(tx *bolt.Tx) error { need = tx.Size(); return nil }); err != nil {
		return err
	}
	if fi.Size() < need {
		return fmt.Errorf("%w: %s: truncated: file is %d bytes, its pages need %d", ErrCorrupt, s.path, fi.Size(), need)
	}
	// Read first: an existing file is not written to just by opening it
	// (and one from a newer release never is).
	var fresh bool
	err = s.view("schema", func(tx *bolt.Tx) (err error) { fresh, err = checkSchema(tx); return err })
	if err == nil && fresh {
		err = s.update("schema", initSchema)
	}
	if err != nil {
		if !strings.Contains(err.Error(), s.path) {
			err = fmt.Errorf("%s: %w", s.path, err)
		}
		return err
	}
	if opts.Verify {
		return s.view("verify", func(tx *bolt.Tx) error {
			// Read every key and value here first: bbolt's Check walks
			// pages on its own goroutine, where a fault is fatal, so damage
			// must surface on ours (guarded) before it runs.
			if err := walk(tx); err != nil {
				return err
			}
			var errs []error
			for e := range tx.Check() {
				errs = append(errs, e)
				if len(errs) == 10 {
					break
				}
			}
			if len(errs) > 0 {
				return fmt.Errorf("%w: %s: consistency check: %w", ErrCorrupt, s.path, errors.Join(errs...))
			}
			return s.verifyCounters(tx)
		})
	}
	return nil
}

// walk touches every key and value in the file.
func walk(tx *bolt.Tx) error {
	var sink byte
	var visit func(b *bolt.Bucket) error
	visit = func(b *bolt.Bucket) error {
		return b.ForEach(func(k, v []byte) error {
			if v == nil {
				if nb := b.Bucket(k); nb != nil {
					return visit(nb)
				}
			}
			for _, c := range v {
				sink ^= c
			}
			return nil
		})
	}
	err := tx.ForEach(func(_ []byte, b *bolt.Bucket) error { return visit(b) })
	_ = sink
	return err
}

// verifyCounters recounts certs/ and revoked/ against the meta counters.
func (s *Store) verifyCounters(tx *bolt.Tx) error {
	meta := tx.Bucket(bucketMeta)
	var certs, caCerts, revoked uint64
	if err := tx.Bucket(bucketCerts).ForEach(func(k, v []byte) error {
		r, err := decodeCert(k, v)
		if err != nil {
			return err
		}
		certs++
		if IsCAKind(r.Kind) {
			caCerts++
		}
		if r.Status == CertRevoked {
			revoked++
		}
		return nil
	}); err != nil {
		return s.corrupt(err)
	}
	if c := u64(meta.Get(keyNCerts)); c != certs {
		return fmt.Errorf("%w: %s: counter says %d certificates, found %d", ErrCorrupt, s.path, c, certs)
	}
	if c := u64(meta.Get(keyNCACerts)); c != caCerts {
		return fmt.Errorf("%w: %s: counter says %d CA certificates, found %d", ErrCorrupt, s.path, c, caCerts)
	}
	if c := u64(meta.Get(keyNRevoked)); c != revoked {
		return fmt.Errorf("%w: %s: counter says %d revoked, found %d", ErrCorrupt, s.path, c, revoked)
	}
	return nil
}

// Backup writes a consistent snapshot of the whole database to w while
// readers and writers carry on; the copy opens with Open like the original.
func (s *Store) Backup(w io.Writer) (int64, error) {
	if w == nil {
		return 0, fmt.Errorf("%w: nil backup writer", ErrInvalid)
	}
	if err := s.flushJournal(); err != nil {
		return 0, err
	}
	var n int64
	err := s.view("backup", func(tx *bolt.Tx) (err error) {
		n, err = tx.WriteTo(w)
		return err
	})
	return n, err
}

// Path is the database file.
func (s *Store) Path() string { return s.path }

// Close releases the file. Callers must not use the Store concurrently with
// or after Close (they get ErrClosed).
func (s *Store) Close() error {
	jerr := s.closeJournal()
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("store: close %s: %w", s.path, err)
	}
	return jerr
}

// Stats are record counts, plus RecordIssued's group-commit counters since
// Open (GroupRecords/GroupCommits is the mean batch size).
type Stats struct {
	Entries int
	// Certs counts the issued certificates (SVIDs); CACerts the CA's own
	// (IsCAKind: root, audit, intermediates, OCSP responders).
	Certs         uint64
	CACerts       uint64
	Revoked       uint64
	Intermediates int
	GroupCommits  uint64
	GroupRecords  uint64
}

// Stats counts records. Certificate counts are maintained counters, so this
// is cheap with millions of serials.
func (s *Store) Stats() (Stats, error) {
	if err := s.flushJournal(); err != nil {
		return Stats{}, err
	}
	var st Stats
	err := s.view("stats", func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		n := u64(meta.Get(keyNCerts))
		st.CACerts = min(u64(meta.Get(keyNCACerts)), n)
		st.Certs = n - st.CACerts
		st.Revoked = u64(meta.Get(keyNRevoked))
		st.Entries = tx.Bucket(bucketEntries).Stats().KeyN
		st.Intermediates = tx.Bucket(bucketIntermediates).Stats().KeyN
		return nil
	})
	s.journal.mu.Lock()
	st.GroupCommits, st.GroupRecords = s.journal.writes, s.journal.records
	s.journal.mu.Unlock()
	return st, err
}

const maxMetaKey = 256

func checkMetaKey(key string) error {
	if key == "" {
		return fmt.Errorf("%w: empty meta key", ErrInvalid)
	}
	if len(key) > maxMetaKey {
		return fmt.Errorf("%w: meta key longer than %d bytes", ErrInvalid, maxMetaKey)
	}
	return nil
}

// GetMeta returns the value PutMeta stored under key, or ErrMetaNotFound.
func (s *Store) GetMeta(key string) ([]byte, error) {
	if err := checkMetaKey(key); err != nil {
		return nil, err
	}
	var out []byte
	err := s.view("get meta", func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketKV).Get([]byte(key))
		if v == nil {
			return fmt.Errorf("%w: %q", ErrMetaNotFound, key)
		}
		out = append([]byte{}, v...)
		return nil
	})
	return out, err
}

// PutMeta stores val (nil counts as empty) under key, durably.
func (s *Store) PutMeta(key string, val []byte) error {
	if err := checkMetaKey(key); err != nil {
		return err
	}
	if val == nil {
		val = []byte{}
	}
	return s.update("put meta", func(tx *bolt.Tx) error {
		return tx.Bucket(bucketKV).Put([]byte(key), val)
	})
}

// UpdateMeta atomically replaces key's value by fn(old) (old is nil when
// absent; fn must not retain it). An error from fn aborts with nothing
// written. Use it for counters such as CRL numbers, which must never repeat.
func (s *Store) UpdateMeta(key string, fn func(old []byte) ([]byte, error)) error {
	if err := checkMetaKey(key); err != nil {
		return err
	}
	return s.update("update meta", func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketKV)
		nv, err := fn(b.Get([]byte(key)))
		if err != nil {
			return err
		}
		if nv == nil {
			nv = []byte{}
		}
		return b.Put([]byte(key), nv)
	})
}
