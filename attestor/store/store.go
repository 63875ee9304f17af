package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/palisade-id/palisade/attestor"
	bolt "go.etcd.io/bbolt"
)

// ErrSchema is returned by Open for a file of another schema version.
var ErrSchema = errors.New("store: unsupported schema version")

// DB is a bbolt-backed attestor.Store.
type DB struct{ db *bolt.DB }

var _ attestor.Store = (*DB)(nil)

// Open opens or creates the database file at path. bbolt locks the file:
// a second process waits up to one second, then fails.
func Open(path string) (*DB, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketMeta, bucketManifest, bucketPolicy, bucketNodes} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		meta := tx.Bucket(bucketMeta)
		switch v := meta.Get(keySchema); {
		case v == nil:
			return meta.Put(keySchema, []byte(SchemaVersion))
		case string(v) != SchemaVersion:
			return fmt.Errorf("%w: %q", ErrSchema, v)
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("store: init %s: %w", path, err)
	}
	return &DB{db: db}, nil
}

// Close closes the file.
func (d *DB) Close() error { return d.db.Close() }

func (d *DB) PutManifestEntry(_ context.Context, e attestor.ManifestEntry) error {
	v, err := json.Marshal(e)
	if err != nil {
		return err
	}
	return d.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketManifest).Put([]byte(e.ID), v) })
}

func (d *DB) DeleteManifestEntry(_ context.Context, id string) error {
	return d.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketManifest)
		if b.Get([]byte(id)) == nil {
			return fmt.Errorf("%w: manifest entry %q", attestor.ErrNotFound, id)
		}
		return b.Delete([]byte(id))
	})
}

func (d *DB) ManifestEntries(_ context.Context) ([]attestor.ManifestEntry, error) {
	var out []attestor.ManifestEntry
	err := d.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketManifest).ForEach(func(k, v []byte) error {
			var e attestor.ManifestEntry
			if err := json.Unmarshal(v, &e); err != nil {
				return fmt.Errorf("store: manifest entry %q: %w", k, err)
			}
			out = append(out, e)
			return nil
		})
	})
	return out, err
}

func (d *DB) PutPolicy(_ context.Context, version uint64, raw []byte) error {
	key := binary.BigEndian.AppendUint64(nil, version)
	return d.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketPolicy)
		if k, _ := b.Cursor().Last(); k != nil && bytes.Compare(key, k) <= 0 {
			return fmt.Errorf("%w: %d <= current %d", attestor.ErrPolicyVersion, version, binary.BigEndian.Uint64(k))
		}
		return b.Put(key, bytes.Clone(raw))
	})
}

func (d *DB) Policy(_ context.Context) ([]byte, error) {
	var out []byte
	err := d.db.View(func(tx *bolt.Tx) error {
		if _, v := tx.Bucket(bucketPolicy).Cursor().Last(); v != nil {
			out = bytes.Clone(v)
		}
		return nil
	})
	return out, err
}

func (d *DB) Node(_ context.Context, id string) (attestor.NodeRecord, error) {
	var rec attestor.NodeRecord
	err := d.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketNodes).Get([]byte(id))
		if v == nil {
			return fmt.Errorf("%w: node %q", attestor.ErrNotFound, id)
		}
		return json.Unmarshal(v, &rec)
	})
	return rec, err
}

func (d *DB) Nodes(_ context.Context) ([]attestor.NodeRecord, error) {
	var out []attestor.NodeRecord
	err := d.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketNodes).ForEach(func(k, v []byte) error {
			var r attestor.NodeRecord
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("store: node %q: %w", k, err)
			}
			out = append(out, r)
			return nil
		})
	})
	return out, err
}

func (d *DB) UpdateNode(_ context.Context, id string, fn func(*attestor.NodeRecord, bool) error) error {
	return d.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketNodes)
		var rec attestor.NodeRecord
		v := b.Get([]byte(id))
		if v != nil {
			if err := json.Unmarshal(v, &rec); err != nil {
				return fmt.Errorf("store: node %q: %w", id, err)
			}
		}
		if err := fn(&rec, v != nil); err != nil {
			return err
		}
		rec.ID = id
		nv, err := json.Marshal(rec)
		if err != nil {
			return err
		}
		return b.Put([]byte(id), nv)
	})
}
