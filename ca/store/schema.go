package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"runtime/debug"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// SchemaVersion is the layout below. Open refuses a file whose version is
// higher (a newer release wrote it) and never rewrites it.
//
// Layout (top-level buckets, keys → values). Integers are big-endian so byte
// order is numeric order; strings never contain NUL, which separates the
// parts of composite index keys.
//
//	meta/
//	  schema      → uint32 SchemaVersion
//	  ca          → JSON CAMeta (written once, by InitCA)
//	  rev_seq     → uint64 last RevokeSeq handed out
//	  n_certs     → uint64 number of records in certs/
//	  n_ca_certs  → uint64 how many of those are the CA's own (IsCAKind; absent: 0)
//	  n_revoked   → uint64 number of revoked records
//	  bundle      → uint64 trust bundle sequence number, then the digest of the
//	                bundle contents it numbers (BundleSequence; absent until
//	                the CA first loads)
//	kv/
//	  <key>       → opaque bytes (GetMeta/PutMeta/UpdateMeta: other components' counters)
//	intermediates/
//	  <key id>    → JSON Intermediate (key id: lowercase hex SKI)
//	entries/
//	  <entry id>  → JSON Entry
//	entries_by_parent/
//	  <parent id> 0x00 <entry id>  → empty
//	entries_by_spiffeid/
//	  <spiffe id> 0x00 <entry id>  → empty
//	entries_by_key/
//	  sha256(spiffe id, parent id, sorted selectors) → <entry id>   (uniqueness)
//	certs/
//	  <serial>    → cert record, binary v1 (below); never deleted, so a serial is never reused.
//	                Besides the SVIDs: the root and audit certificates (written by
//	                InitCA), each intermediate (PutIntermediate), in the same
//	                transaction as their metadata (RecordCACerts adds them to older
//	                stores); these have no subject index entries and are never revoked
//	certs_by_expiry/
//	  <uint64 NotAfter unix seconds ^ 2^63> <uint32 nanos> <serial> → empty   (ForEachUnexpired)
//	certs_by_subject/
//	  <node id | spiffe id> 0x00 <expiry key> → empty   (RevokeNode; a record is filed under
//	                                                    its NodeID and, if different, its
//	                                                    SPIFFEID; <expiry key> as in
//	                                                    certs_by_expiry, so expired ones
//	                                                    are skipped by a seek)
//	revoked/
//	  <issuer key id>/             (one nested bucket per issuer: the CRL for that issuer)
//	    <serial>  → cert record, binary v1 (copy taken at revocation; revocation is final)
//	revlog/
//	  <uint64 seq> → <serial>     (RevocationsSince; seq is meta/rev_seq, gap-free)
//
// <serial> is the certificate serial as 20 big-endian bytes, left-padded with
// zeros (RFC 5280 caps serials at 20 octets), so cursor order is numeric order.
//
// Cert record binary v1 (compact: a million of them must stream fast):
//
//	u8       format = 1
//	5×string spiffe_id, node_id, entry_id, issuer_key_id, kind   (uvarint length + bytes)
//	time     not_before, not_after                              (varint unix seconds + uvarint nanos, UTC)
//	u8       status (1 valid, 2 revoked)
//	uvarint  reason (RFC 5280 CRLReason)
//	time     revoked_at
//	uvarint  revoke_seq
//
// Beside the file, <db>.journal.<n> segments hold issuances acknowledged but
// not yet applied to certs/ and its indexes (journal.go); Open replays them.
//
// The other records are JSON: there are few of them and operators may read
// them with bbolt tooling.
const SchemaVersion uint32 = 1

// Bucket names.
var (
	bucketMeta          = []byte("meta")
	bucketKV            = []byte("kv")
	bucketIntermediates = []byte("intermediates")
	bucketEntries       = []byte("entries")
	bucketEntryParent   = []byte("entries_by_parent")
	bucketEntrySPIFFEID = []byte("entries_by_spiffeid")
	bucketEntryKey      = []byte("entries_by_key")
	bucketCerts         = []byte("certs")
	bucketCertSubject   = []byte("certs_by_subject")
	bucketCertExpiry    = []byte("certs_by_expiry")
	bucketRevoked       = []byte("revoked")
	bucketRevLog        = []byte("revlog")

	allBuckets = [][]byte{
		bucketMeta, bucketKV, bucketIntermediates,
		bucketEntries, bucketEntryParent, bucketEntrySPIFFEID, bucketEntryKey,
		bucketCerts, bucketCertSubject, bucketCertExpiry, bucketRevoked, bucketRevLog,
	}
)

// Keys in meta/.
var (
	keySchema   = []byte("schema")
	keyCA       = []byte("ca")
	keyRevSeq   = []byte("rev_seq")
	keyNCerts   = []byte("n_certs")
	keyNRevoked = []byte("n_revoked")
	keyNCACerts = []byte("n_ca_certs")
	keyBundle   = []byte("bundle")
)

const serialLen = 20

// checkSchema validates an existing file's version and buckets; fresh
// reports a file with no buckets at all (just created).
func checkSchema(tx *bolt.Tx) (fresh bool, err error) {
	meta := tx.Bucket(bucketMeta)
	if meta == nil {
		empty := true
		_ = tx.ForEach(func([]byte, *bolt.Bucket) error { empty = false; return nil })
		if !empty {
			return false, fmt.Errorf("%w: no schema version, but the file holds buckets (not a CA store?)", ErrCorrupt)
		}
		return true, nil
	}
	v := meta.Get(keySchema)
	if len(v) != 4 {
		return false, fmt.Errorf("%w: schema version is %d bytes, want 4", ErrCorrupt, len(v))
	}
	switch ver := binary.BigEndian.Uint32(v); {
	case ver > SchemaVersion:
		return false, fmt.Errorf("%w: file has schema %d, this release knows up to %d", ErrSchemaTooNew, ver, SchemaVersion)
	case ver < 1:
		return false, fmt.Errorf("%w: schema version %d", ErrCorrupt, ver)
	}
	for _, name := range allBuckets {
		if tx.Bucket(name) == nil {
			return false, fmt.Errorf("%w: bucket %q missing", ErrCorrupt, name)
		}
	}
	return false, nil
}

// initSchema creates the buckets and version of a fresh file.
func initSchema(tx *bolt.Tx) error {
	fresh, err := checkSchema(tx)
	if err != nil || !fresh {
		return err
	}
	for _, name := range allBuckets {
		if _, err := tx.CreateBucket(name); err != nil {
			return fmt.Errorf("store: create bucket %s: %w", name, err)
		}
	}
	return tx.Bucket(bucketMeta).Put(keySchema, binary.BigEndian.AppendUint32(nil, SchemaVersion))
}

// guard turns a panic or memory fault inside bbolt (which it raises on
// damaged pages) into ErrCorrupt instead of taking the process down.
func (s *Store) guard(what string, err *error) {
	if p := recover(); p != nil {
		*err = fmt.Errorf("%w: %s: %s: %v", ErrCorrupt, s.path, what, p)
	}
}

// view runs fn in a read transaction.
func (s *Store) view(what string, fn func(tx *bolt.Tx) error) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer s.guard(what, &err)
	return closedErr(s.db.View(fn))
}

// update runs fn in a write transaction, committed (and fsynced) on nil.
func (s *Store) update(what string, fn func(tx *bolt.Tx) error) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer s.guard(what, &err)
	return closedErr(s.db.Update(fn))
}

func closedErr(err error) error {
	if errors.Is(err, berrors.ErrDatabaseNotOpen) {
		return ErrClosed
	}
	return err
}

func u64(b []byte) uint64 {
	if len(b) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(b)
}

func putU64(b *bolt.Bucket, key []byte, v uint64) error {
	return b.Put(key, binary.BigEndian.AppendUint64(make([]byte, 0, 8), v))
}

// compositeKey is a 0x00 b, the index key layout.
func compositeKey(a string, b []byte) []byte {
	k := make([]byte, 0, len(a)+1+len(b))
	k = append(k, a...)
	k = append(k, 0)
	return append(k, b...)
}
