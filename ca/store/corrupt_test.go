package store

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// populated writes a store with enough records to span many pages.
func populated(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "ca.db")
	s, err := Open(path, Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	err = s.update("fill", func(tx *bolt.Tx) error {
		for i := 1; i <= 3000; i++ {
			r := svid(int64(i)*7919, fmt.Sprintf("spiffe://example.org/w/%d", i), nodeA)
			key, _ := serialKey(r.Serial)
			if err := tx.Bucket(bucketCerts).Put(key, encodeCert(&r)); err != nil {
				return err
			}
		}
		return putU64(tx.Bucket(bucketMeta), keyNCerts, 3000)
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestCorruptFile damages the file in ways disks and operators do: Open must
// report ErrCorrupt naming the file, never panic or crash.
func TestCorruptFile(t *testing.T) {
	pageSize := os.Getpagesize()
	tests := []struct {
		name   string
		damage func(t *testing.T, path string)
	}{
		{name: "garbage file", damage: func(t *testing.T, path string) {
			writeFile(t, path, []byte(strings.Repeat("not a database ", 1000)))
		}},
		{name: "tiny file", damage: func(t *testing.T, path string) { writeFile(t, path, []byte("x")) }},
		{name: "both meta pages zeroed", damage: func(t *testing.T, path string) {
			overwrite(t, path, 0, make([]byte, 2*pageSize))
		}},
		{name: "truncated to half", damage: func(t *testing.T, path string) {
			fi, _ := os.Stat(path)
			if err := os.Truncate(path, fi.Size()/2); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "truncated to meta pages", damage: func(t *testing.T, path string) {
			if err := os.Truncate(path, int64(2*pageSize)); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "garbage over all data pages", damage: func(t *testing.T, path string) {
			fi, _ := os.Stat(path)
			junk := []byte(strings.Repeat("\xde\xad\xbe\xef", int(fi.Size()-int64(2*pageSize))/4))
			overwrite(t, path, int64(2*pageSize), junk)
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := populated(t)
			tc.damage(t, path)
			_, err := Open(path, Options{})
			wantErr(t, err, ErrCorrupt)
			if !strings.Contains(err.Error(), path) {
				t.Errorf("error %q does not name the file", err)
			}
			t.Logf("%v", err)
		})
	}
}

// leafPages lists the ids of the certs/ bucket's leaf pages.
func leafPages(t *testing.T, path string) []int {
	t.Helper()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var ids []int
	err = db.View(func(tx *bolt.Tx) error {
		for id := 2; ; id++ {
			pi, err := tx.Page(id)
			if err != nil {
				return err
			}
			if pi == nil {
				return nil
			}
			if pi.Type == "leaf" && pi.Count > 10 {
				ids = append(ids, id)
			}
		}
	})
	if err != nil || len(ids) == 0 {
		t.Fatalf("no leaf pages found: %v", err)
	}
	return ids
}

// Damage that Open cannot see without reading every page surfaces as
// ErrCorrupt from the first call that reads it, and from Verify.
func TestCorruptPages(t *testing.T) {
	pageSize := os.Getpagesize()
	tests := []struct {
		name   string
		damage func(t *testing.T, path string, page int)
	}{
		{name: "page overwritten", damage: func(t *testing.T, path string, page int) {
			overwrite(t, path, int64(page*pageSize), []byte(strings.Repeat("\xa5", pageSize)))
		}},
		{name: "record bytes damaged", damage: func(t *testing.T, path string, _ int) {
			// bbolt has no page checksums: a flipped value is only caught
			// by the record decoder.
			rawUpdate(t, path, func(tx *bolt.Tx) error {
				k, v := tx.Bucket(bucketCerts).Cursor().First()
				bad := append([]byte{}, v...)
				bad[1] = 0xff // first string length now runs past the end
				return tx.Bucket(bucketCerts).Put(k, bad)
			})
		}},
	}
	for _, tc := range tests {
		for _, verify := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/verify=%v", tc.name, verify), func(t *testing.T) {
				path := populated(t)
				pages := leafPages(t, path)
				tc.damage(t, path, pages[len(pages)/2])
				s, err := Open(path, Options{Verify: verify})
				if verify {
					wantErr(t, err, ErrCorrupt)
					t.Logf("%v", err)
					return
				}
				if err != nil {
					t.Fatalf("Open without Verify: %v", err)
				}
				defer s.Close()
				err = s.ForEachCert(func(CertRecord) error { return nil })
				wantErr(t, err, ErrCorrupt)
				if !strings.Contains(err.Error(), path) {
					t.Errorf("error %q does not name the file", err)
				}
				t.Logf("%v", err)
			})
		}
	}
}

func writeFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func overwrite(t *testing.T, path string, off int64, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}
