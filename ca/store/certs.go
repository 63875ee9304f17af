package store

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/big"
	"sort"
	"time"

	bolt "go.etcd.io/bbolt"
)

// CertStatus is a recorded certificate's state. Revocation is final.
type CertStatus int

const (
	CertValid CertStatus = iota + 1
	CertRevoked
)

func (c CertStatus) String() string {
	switch c {
	case CertValid:
		return "valid"
	case CertRevoked:
		return "revoked"
	}
	return fmt.Sprintf("CertStatus(%d)", int(c))
}

// Certificate kinds.
const (
	KindX509SVID     = "x509-svid"
	KindNodeSVID     = "node-svid"
	KindServerSVID   = "server-svid" // the appliance's own service identities
	KindIntermediate = "intermediate"
	KindOCSPSigner   = "ocsp-signer"
	KindRoot         = "root"
	KindAuditSigner  = "audit-signer" // certifies the audit log's checkpoint key
)

// IsCAKind reports whether kind is one of the CA's own certificates (root,
// intermediates, audit and OCSP signers) rather than an SVID. They are
// recorded so their serials stay unique, but are not revoked through the
// store: no CRL covers them.
func IsCAKind(kind string) bool {
	switch kind {
	case KindRoot, KindIntermediate, KindAuditSigner, KindOCSPSigner:
		return true
	}
	return false
}

// CertRecord is one issued certificate.
type CertRecord struct {
	Serial      *big.Int
	SPIFFEID    string
	NodeID      string
	EntryID     string
	IssuerKeyID string
	Kind        string
	NotBefore   time.Time
	NotAfter    time.Time
	Status      CertStatus
	RevokedAt   time.Time
	Reason      int // RFC 5280 CRLReason
	RevokeSeq   uint64
}

// RFC 5280 CRLReason codes are 0-10, 7 unused.
func checkReason(reason int) error {
	if reason < 0 || reason > 10 || reason == 7 {
		return fmt.Errorf("%w: CRL reason %d is not an RFC 5280 CRLReason", ErrInvalid, reason)
	}
	return nil
}

func checkRecord(r *CertRecord) ([]byte, error) {
	key, err := serialKey(r.Serial)
	if err != nil {
		return nil, err
	}
	// SVIDs must carry a SPIFFE ID; CA certificates may, and any one they
	// carry is checked like the other IDs.
	switch r.Kind {
	case KindX509SVID, KindNodeSVID, KindServerSVID:
		if err := checkSPIFFEID("SPIFFE ID", r.SPIFFEID); err != nil {
			return nil, fmt.Errorf("serial %x: %w", r.Serial, err)
		}
	case KindRoot, KindIntermediate, KindAuditSigner, KindOCSPSigner:
		if r.SPIFFEID != "" {
			if err := checkID("SPIFFE ID", r.SPIFFEID); err != nil {
				return nil, fmt.Errorf("serial %x: %w", r.Serial, err)
			}
		}
	default:
		return nil, fmt.Errorf("%w: serial %x: kind %q", ErrInvalid, r.Serial, r.Kind)
	}
	for _, f := range []struct{ name, v string }{{"node ID", r.NodeID}, {"entry ID", r.EntryID}} {
		if f.v != "" {
			if err := checkID(f.name, f.v); err != nil {
				return nil, fmt.Errorf("serial %x: %w", r.Serial, err)
			}
		}
	}
	if err := validKeyID(r.IssuerKeyID); err != nil {
		return nil, fmt.Errorf("serial %x: issuer: %w", r.Serial, err)
	}
	if r.NotBefore.IsZero() || !r.NotAfter.After(r.NotBefore) {
		return nil, fmt.Errorf("%w: serial %x: validity %s – %s", ErrInvalid, r.Serial, r.NotBefore, r.NotAfter)
	}
	if r.Status == 0 {
		r.Status = CertValid
	}
	if r.Status != CertValid {
		return nil, fmt.Errorf("%w: serial %x: new records must be valid (status %s); use Revoke", ErrInvalid, r.Serial, r.Status)
	}
	if !r.RevokedAt.IsZero() || r.Reason != 0 || r.RevokeSeq != 0 {
		return nil, fmt.Errorf("%w: serial %x: revocation fields set on a new record", ErrInvalid, r.Serial)
	}
	return key, nil
}

// RecordIssued durably records a certificate before it is handed out: it
// returns once the record is in the fsynced issuance journal (journal.go),
// shared with concurrent callers. ErrSerialExists if the serial was ever
// recorded: the CA must sign again with a fresh serial.
func (s *Store) RecordIssued(rec CertRecord) error {
	key, err := checkRecord(&rec)
	if err != nil {
		return err
	}
	return s.journalRecord(key, encodeCert(&rec), rec)
}

// insertCert adds a new record and its index entries inside tx. It reports
// false, changing nothing, when the serial is already recorded (journal
// replay is idempotent).
func insertCert(tx *bolt.Tx, key, val []byte, rec *CertRecord) (bool, error) {
	certs := tx.Bucket(bucketCerts)
	if certs.Get(key) != nil {
		return false, nil
	}
	if err := certs.Put(key, val); err != nil {
		return false, err
	}
	subj := tx.Bucket(bucketCertSubject)
	exp := expiryKey(rec.NotAfter, key)
	if rec.NodeID != "" {
		if err := subj.Put(compositeKey(rec.NodeID, exp), nil); err != nil {
			return false, err
		}
	}
	if rec.SPIFFEID != "" && rec.SPIFFEID != rec.NodeID {
		if err := subj.Put(compositeKey(rec.SPIFFEID, exp), nil); err != nil {
			return false, err
		}
	}
	if err := tx.Bucket(bucketCertExpiry).Put(exp, nil); err != nil {
		return false, err
	}
	meta := tx.Bucket(bucketMeta)
	if IsCAKind(rec.Kind) {
		if err := putU64(meta, keyNCACerts, u64(meta.Get(keyNCACerts))+1); err != nil {
			return false, err
		}
	}
	return true, putU64(meta, keyNCerts, u64(meta.Get(keyNCerts))+1)
}

const expiryPrefix = 12

// expiryKey orders by NotAfter (seconds offset so pre-1970 sorts first, then
// nanoseconds), then serial.
func expiryKey(notAfter time.Time, serial []byte) []byte {
	k := binary.BigEndian.AppendUint64(make([]byte, 0, expiryPrefix+serialLen), uint64(notAfter.Unix())^(1<<63))
	k = binary.BigEndian.AppendUint32(k, uint32(notAfter.Nanosecond()))
	return append(k, serial...)
}

// ForEachUnexpired calls fn for every certificate whose NotAfter is after
// at, revoked or not, the CA's own included (IsCAKind), in NotAfter order,
// from the expiry index: the cost follows the number of live certificates,
// not every serial ever issued. fn runs inside a read transaction; its
// error stops the walk.
func (s *Store) ForEachUnexpired(at time.Time, fn func(CertRecord) error) error {
	if fn == nil {
		return fmt.Errorf("%w: nil callback", ErrInvalid)
	}
	if err := s.flushJournal(); err != nil {
		return err
	}
	return s.view("unexpired scan", func(tx *bolt.Tx) error {
		rd := newRecordDecoder()
		certs := tx.Bucket(bucketCerts)
		c := tx.Bucket(bucketCertExpiry).Cursor()
		for k, _ := c.Seek(expiryKey(at, nil)); k != nil; k, _ = c.Next() {
			if len(k) != expiryPrefix+serialLen {
				return fmt.Errorf("%w: %s: expiry index key of %d bytes", ErrCorrupt, s.path, len(k))
			}
			key := k[expiryPrefix:]
			v := certs.Get(key)
			if v == nil {
				return fmt.Errorf("%w: %s: expiry index names unknown serial %x", ErrCorrupt, s.path, key)
			}
			r, err := rd.decode(key, v)
			if err != nil {
				return s.corrupt(err)
			}
			if !r.NotAfter.After(at) {
				continue // NotAfter == at
			}
			if err := fn(r); err != nil {
				return err
			}
		}
		return nil
	})
}

func (s *Store) getCert(tx *bolt.Tx, key []byte) (CertRecord, error) {
	v := tx.Bucket(bucketCerts).Get(key)
	if v == nil {
		return CertRecord{}, fmt.Errorf("%w: %x", ErrCertNotFound, new(big.Int).SetBytes(key))
	}
	r, err := decodeCert(key, v)
	if err != nil {
		return CertRecord{}, s.corrupt(err)
	}
	return r, nil
}

// Cert returns the record for serial, or ErrCertNotFound.
func (s *Store) Cert(serial *big.Int) (CertRecord, error) {
	key, err := serialKey(serial)
	if err != nil {
		return CertRecord{}, err
	}
	if r, ok := s.pendingCert(key); ok {
		return r, nil
	}
	var r CertRecord
	err = s.view("cert", func(tx *bolt.Tx) (err error) {
		r, err = s.getCert(tx, key)
		return err
	})
	return r, err
}

// revoke marks r revoked inside tx: record, per-issuer index, log, counters.
func (s *Store) revoke(tx *bolt.Tx, key []byte, r *CertRecord, reason int, at time.Time) error {
	meta := tx.Bucket(bucketMeta)
	seq := u64(meta.Get(keyRevSeq)) + 1
	r.Status, r.Reason, r.RevokedAt, r.RevokeSeq = CertRevoked, reason, at.UTC(), seq
	val := encodeCert(r)
	if err := tx.Bucket(bucketCerts).Put(key, val); err != nil {
		return err
	}
	ib, err := tx.Bucket(bucketRevoked).CreateBucketIfNotExists([]byte(r.IssuerKeyID))
	if err != nil {
		return fmt.Errorf("store: revoked index for %s: %w", r.IssuerKeyID, err)
	}
	if err := ib.Put(key, val); err != nil {
		return err
	}
	if err := tx.Bucket(bucketRevLog).Put(binary.BigEndian.AppendUint64(nil, seq), key); err != nil {
		return err
	}
	if err := putU64(meta, keyRevSeq, seq); err != nil {
		return err
	}
	return putU64(meta, keyNRevoked, u64(meta.Get(keyNRevoked))+1)
}

func checkRevoke(reason int, at time.Time) error {
	if err := checkReason(reason); err != nil {
		return err
	}
	if at.IsZero() {
		return fmt.Errorf("%w: zero revocation time", ErrInvalid)
	}
	return nil
}

// Revoke marks serial revoked at at with an RFC 5280 reason and appends it
// to the revocation log. ErrCertNotFound, ErrAlreadyRevoked; ErrInvalid for
// the CA's own certificates (IsCAKind), which no CRL would list.
func (s *Store) Revoke(serial *big.Int, reason int, at time.Time) (CertRecord, error) {
	key, err := serialKey(serial)
	if err != nil {
		return CertRecord{}, err
	}
	if err := checkRevoke(reason, at); err != nil {
		return CertRecord{}, err
	}
	if err := s.flushJournal(); err != nil {
		return CertRecord{}, err
	}
	var r CertRecord
	err = s.update("revoke", func(tx *bolt.Tx) (err error) {
		if r, err = s.getCert(tx, key); err != nil {
			return err
		}
		if r.Status == CertRevoked {
			return fmt.Errorf("%w: %x (seq %d)", ErrAlreadyRevoked, serial, r.RevokeSeq)
		}
		if IsCAKind(r.Kind) {
			return fmt.Errorf("%w: serial %x is the CA's own %s certificate, which CRLs do not cover", ErrInvalid, serial, r.Kind)
		}
		return s.revoke(tx, key, &r, reason, at)
	})
	if err != nil {
		return CertRecord{}, err
	}
	return r, nil
}

// RevokeNode revokes, in one transaction, every valid certificate not yet
// expired at at whose NodeID or SPIFFEID is nodeID: the node's own SVIDs and
// every workload SVID issued through it. It returns the revoked records in
// serial order (none is not an error).
func (s *Store) RevokeNode(nodeID string, reason int, at time.Time) ([]CertRecord, error) {
	if err := checkID("node ID", nodeID); err != nil {
		return nil, err
	}
	if err := checkRevoke(reason, at); err != nil {
		return nil, err
	}
	if err := s.flushJournal(); err != nil {
		return nil, err
	}
	var out []CertRecord
	err := s.update("revoke node", func(tx *bolt.Tx) error {
		out = out[:0] // the transaction may not be retried, but stay safe
		return s.walkSubject(tx, nodeID, at, func(key []byte, r CertRecord) error {
			if r.Status != CertValid || IsCAKind(r.Kind) {
				return nil
			}
			if err := s.revoke(tx, key, &r, reason, at); err != nil {
				return err
			}
			out = append(out, r)
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// walkSubject calls fn, in serial order, with the key and record of every
// certificate whose NodeID or SPIFFEID is id and which is not expired at
// at, from the subject index (which orders a subject's certificates by
// NotAfter). The keys are collected first, so fn may write in tx.
func (s *Store) walkSubject(tx *bolt.Tx, id string, at time.Time, fn func(key []byte, r CertRecord) error) error {
	p := compositeKey(id, nil)
	var keys [][]byte
	c := tx.Bucket(bucketCertSubject).Cursor()
	for k, _ := c.Seek(compositeKey(id, expiryKey(at, nil))); k != nil && bytes.HasPrefix(k, p); k, _ = c.Next() {
		if len(k) != len(p)+expiryPrefix+serialLen {
			return fmt.Errorf("%w: %s: subject index key of %d bytes", ErrCorrupt, s.path, len(k))
		}
		keys = append(keys, append([]byte(nil), k[len(p)+expiryPrefix:]...))
	}
	sort.Slice(keys, func(a, b int) bool { return bytes.Compare(keys[a], keys[b]) < 0 })
	for _, key := range keys {
		r, err := s.getCert(tx, key)
		if err != nil {
			return err
		}
		if !at.Before(r.NotAfter) || (r.NodeID != id && r.SPIFFEID != id) {
			continue
		}
		if err := fn(key, r); err != nil {
			return err
		}
	}
	return nil
}

// ForEachOfSubject calls fn, in serial order, for every certificate not
// expired at at whose NodeID or SPIFFEID is id (the certificates RevokeNode
// would consider), revoked or not, from the subject index. fn runs inside
// a read transaction; its error stops the walk.
func (s *Store) ForEachOfSubject(id string, at time.Time, fn func(CertRecord) error) error {
	if fn == nil {
		return fmt.Errorf("%w: nil callback", ErrInvalid)
	}
	if err := checkID("subject ID", id); err != nil {
		return err
	}
	if err := s.flushJournal(); err != nil {
		return err
	}
	return s.view("subject scan", func(tx *bolt.Tx) error {
		return s.walkSubject(tx, id, at, func(_ []byte, r CertRecord) error { return fn(r) })
	})
}

// ForEachRevoked calls fn for every certificate issuedby issuerKeyID that
// was revoked, in serial order, from that issuer's index (no scan of the
// valid records). fn runs inside a read transaction; its error stops the walk
// and is returned.
func (s *Store) ForEachRevoked(issuerKeyID string, fn func(CertRecord) error) error {
	if err := validKeyID(issuerKeyID); err != nil {
		return err
	}
	if fn == nil {
		return fmt.Errorf("%w: nil callback", ErrInvalid)
	}
	return s.view("revoked scan", func(tx *bolt.Tx) error {
		ib := tx.Bucket(bucketRevoked).Bucket([]byte(issuerKeyID))
		if ib == nil {
			return nil
		}
		return s.eachRecord(ib, fn)
	})
}

// ForEachCert calls fn for every recorded certificate in serial order, the
// CA's own included (IsCAKind). fn runs inside a read transaction; its
// error stops the walk and is returned.
func (s *Store) ForEachCert(fn func(CertRecord) error) error {
	if fn == nil {
		return fmt.Errorf("%w: nil callback", ErrInvalid)
	}
	if err := s.flushJournal(); err != nil {
		return err
	}
	return s.view("cert scan", func(tx *bolt.Tx) error { return s.eachRecord(tx.Bucket(bucketCerts), fn) })
}

// eachRecord decodes every certificate record of b, in key (serial) order,
// and calls fn; a record that does not decode marks the store corrupt.
func (s *Store) eachRecord(b *bolt.Bucket, fn func(CertRecord) error) error {
	rd := newRecordDecoder()
	c := b.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		r, err := rd.decode(k, v)
		if err != nil {
			return s.corrupt(err)
		}
		if err := fn(r); err != nil {
			return err
		}
	}
	return nil
}

// MaxRevocationsPage caps RevocationsSince's limit.
const MaxRevocationsPage = 10000

// RevocationsSince returns up to limit revocations with RevokeSeq > seq, in
// RevokeSeq order. Sequence numbers are gap-free, so a consumer that stores
// the last one it applied never misses a revocation.
func (s *Store) RevocationsSince(seq uint64, limit int) ([]CertRecord, error) {
	if limit <= 0 || limit > MaxRevocationsPage {
		return nil, fmt.Errorf("%w: limit %d (want 1-%d)", ErrInvalid, limit, MaxRevocationsPage)
	}
	var out []CertRecord
	err := s.view("revocations since", func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketRevLog).Cursor()
		start := binary.BigEndian.AppendUint64(nil, seq+1)
		if seq == ^uint64(0) {
			return nil
		}
		for k, v := c.Seek(start); k != nil && len(out) < limit; k, v = c.Next() {
			r, err := s.getCert(tx, v)
			if err != nil {
				return fmt.Errorf("%w: revocation log %x: %v", ErrCorrupt, k, err)
			}
			out = append(out, r)
		}
		return nil
	})
	return out, err
}

// LastRevocationSeq is the RevokeSeq of the latest revocation (0: none).
func (s *Store) LastRevocationSeq() (uint64, error) {
	var seq uint64
	err := s.view("last revocation", func(tx *bolt.Tx) error {
		seq = u64(tx.Bucket(bucketMeta).Get(keyRevSeq))
		return nil
	})
	return seq, err
}
