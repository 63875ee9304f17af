package store

import (
	"encoding/binary"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

func TestOpen(t *testing.T) {
	tests := []struct {
		name    string
		prepare func(t *testing.T, path string)
		opts    Options
		path    func(dir string) string
		want    error
	}{
		{name: "new file", want: nil},
		{name: "reopen", prepare: func(t *testing.T, path string) {
			s, err := Open(path, Options{})
			if err != nil {
				t.Fatal(err)
			}
			s.Close()
		}},
		{name: "verify clean file", opts: Options{Verify: true}, prepare: func(t *testing.T, path string) {
			s, err := Open(path, Options{})
			if err != nil {
				t.Fatal(err)
			}
			mustRecord(t, s, svid(1, "spiffe://example.org/a", nodeA))
			s.Close()
		}},
		{name: "empty path", path: func(string) string { return "" }, want: ErrInvalid},
		{name: "missing directory", path: func(dir string) string { return filepath.Join(dir, "no", "ca.db") }, want: os.ErrNotExist},
		{name: "newer schema", want: ErrSchemaTooNew, prepare: func(t *testing.T, path string) {
			s, err := Open(path, Options{})
			if err != nil {
				t.Fatal(err)
			}
			s.Close()
			rawUpdate(t, path, func(tx *bolt.Tx) error {
				return tx.Bucket(bucketMeta).Put(keySchema, binary.BigEndian.AppendUint32(nil, SchemaVersion+1))
			})
		}},
		{name: "foreign bbolt file", want: ErrCorrupt, prepare: func(t *testing.T, path string) {
			rawUpdate(t, path, func(tx *bolt.Tx) error {
				_, err := tx.CreateBucket([]byte("something-else"))
				return err
			})
		}},
		{name: "missing bucket", want: ErrCorrupt, prepare: func(t *testing.T, path string) {
			s, err := Open(path, Options{})
			if err != nil {
				t.Fatal(err)
			}
			s.Close()
			rawUpdate(t, path, func(tx *bolt.Tx) error { return tx.DeleteBucket(bucketRevLog) })
		}},
		{name: "verify detects bad counter", opts: Options{Verify: true}, want: ErrCorrupt, prepare: func(t *testing.T, path string) {
			s, err := Open(path, Options{})
			if err != nil {
				t.Fatal(err)
			}
			mustRecord(t, s, svid(1, "spiffe://example.org/a", nodeA))
			s.Close()
			rawUpdate(t, path, func(tx *bolt.Tx) error { return putU64(tx.Bucket(bucketMeta), keyNCerts, 7) })
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "ca.db")
			if tc.path != nil {
				path = tc.path(dir)
			}
			if tc.prepare != nil {
				tc.prepare(t, path)
			}
			s, err := Open(path, tc.opts)
			wantErr(t, err, tc.want)
			if err != nil {
				if path != "" && !strings.Contains(err.Error(), path) {
					t.Errorf("error %q does not name the file", err)
				}
				return
			}
			defer s.Close()
			if _, err := s.Stats(); err != nil {
				t.Fatalf("Stats: %v", err)
			}
		})
	}
}

func rawUpdate(t *testing.T, path string, fn func(*bolt.Tx) error) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(fn); err != nil {
		t.Fatal(err)
	}
}

func TestOpenLocked(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ca.db")
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	start := time.Now()
	_, err = Open(path, Options{Timeout: 100 * time.Millisecond})
	wantErr(t, err, ErrLocked)
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("lock wait took %s", d)
	}
}

func TestClosed(t *testing.T) {
	s, err := Open(filepath.Join(t.TempDir(), "ca.db"), Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	calls := map[string]func() error{
		"Stats":        func() error { _, err := s.Stats(); return err },
		"CAMeta":       func() error { _, err := s.CAMeta(); return err },
		"RecordIssued": func() error { return s.RecordIssued(svid(1, "spiffe://example.org/a", nodeA)) },
		"PutMeta":      func() error { return s.PutMeta("k", []byte("v")) },
	}
	for name, call := range calls {
		t.Run(name, func(t *testing.T) { wantErr(t, call(), ErrClosed) })
	}
}

func TestMeta(t *testing.T) {
	s := openTest(t)
	tests := []struct {
		name string
		key  string
		val  []byte
		want error
	}{
		{name: "put", key: "crl/0a0b/number", val: []byte{0, 1}},
		{name: "empty value", key: "empty", val: nil},
		{name: "empty key", key: "", val: []byte("x"), want: ErrInvalid},
		{name: "long key", key: strings.Repeat("k", maxMetaKey+1), val: []byte("x"), want: ErrInvalid},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := s.PutMeta(tc.key, tc.val)
			wantErr(t, err, tc.want)
			got, gerr := s.GetMeta(tc.key)
			if tc.want != nil {
				wantErr(t, gerr, tc.want)
				return
			}
			if gerr != nil || string(got) != string(tc.val) {
				t.Fatalf("GetMeta = %q, %v; want %q", got, gerr, tc.val)
			}
		})
	}
	t.Run("missing", func(t *testing.T) {
		_, err := s.GetMeta("nope")
		wantErr(t, err, ErrMetaNotFound)
	})
	t.Run("update counter", func(t *testing.T) {
		inc := func(old []byte) ([]byte, error) {
			var n uint64
			if old != nil {
				n = binary.BigEndian.Uint64(old)
			}
			return binary.BigEndian.AppendUint64(nil, n+1), nil
		}
		for range 3 {
			if err := s.UpdateMeta("ctr", inc); err != nil {
				t.Fatal(err)
			}
		}
		v, err := s.GetMeta("ctr")
		if err != nil || binary.BigEndian.Uint64(v) != 3 {
			t.Fatalf("counter = %x, %v; want 3", v, err)
		}
		boom := errors.New("boom")
		wantErr(t, s.UpdateMeta("ctr", func([]byte) ([]byte, error) { return []byte("x"), boom }), boom)
		v, _ = s.GetMeta("ctr")
		if binary.BigEndian.Uint64(v) != 3 {
			t.Fatalf("failed update changed the counter to %x", v)
		}
	})
}

func TestBackup(t *testing.T) {
	s := openTest(t)
	mustRecord(t, s, svid(1, "spiffe://example.org/a", nodeA), svid(2, "spiffe://example.org/b", nodeA))
	if _, err := s.Revoke(big.NewInt(2), 1, t0); err != nil {
		t.Fatal(err)
	}
	t.Run("nil writer", func(t *testing.T) {
		_, err := s.Backup(nil)
		wantErr(t, err, ErrInvalid)
	})
	t.Run("snapshot opens", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "backup.db")
		f, err := os.Create(path)
		if err != nil {
			t.Fatal(err)
		}
		n, err := s.Backup(f)
		if err != nil || n == 0 {
			t.Fatalf("Backup = %d, %v", n, err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		b, err := Open(path, Options{Verify: true})
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		got, want := stats(t, b), stats(t, s)
		got.GroupCommits, got.GroupRecords, want.GroupCommits, want.GroupRecords = 0, 0, 0, 0
		if got != want {
			t.Fatalf("backup stats %+v, original %+v", got, want)
		}
		r, err := b.Cert(big.NewInt(2))
		if err != nil || r.Status != CertRevoked {
			t.Fatalf("backup lost the revocation: %+v, %v", r, err)
		}
	})
}

// A file from a newer release is refused without a single byte written.
func TestOpenNewerSchemaUntouched(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ca.db")
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	rawUpdate(t, path, func(tx *bolt.Tx) error {
		return tx.Bucket(bucketMeta).Put(keySchema, binary.BigEndian.AppendUint32(nil, SchemaVersion+1))
	})
	before, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	_, err = Open(path, Options{})
	wantErr(t, err, ErrSchemaTooNew)
	after, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(before) != string(after) {
		t.Fatal("refused open modified the file")
	}
}
