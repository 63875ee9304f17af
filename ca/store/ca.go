package store

import (
	"bytes"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sort"
	"time"

	bolt "go.etcd.io/bbolt"
)

// CAMeta is the CA's identity, written once by the ceremony.
type CAMeta struct {
	TrustDomain   string    `json:"trust_domain"`
	RootCertDER   []byte    `json:"root_cert_der"`
	RootKeyURI    string    `json:"root_key_uri"`
	AuditKeyURI   string    `json:"audit_key_uri"`
	AuditCertDER  []byte    `json:"audit_cert_der"`
	KeyAlgorithm  string    `json:"key_algorithm"`
	InitializedAt time.Time `json:"initialized_at"`
}

// InitCA records m and the first intermediate, which must hold the active
// slot, if no CA metadata exists yet (ErrAlreadyInitialized otherwise), and
// records the serials of the root (KindRoot), the audit certificate
// (KindAuditSigner) and the intermediate (KindIntermediate) in certs/. The
// check and the writes are one transaction, so a ceremony that fails leaves
// the store as it found it. A serial already recorded fails with
// ErrSerialExists.
func (s *Store) InitCA(m CAMeta, first Intermediate) error {
	switch {
	case m.TrustDomain == "":
		return fmt.Errorf("%w: CA metadata: empty trust domain", ErrInvalid)
	case len(m.RootCertDER) == 0:
		return fmt.Errorf("%w: CA metadata: no root certificate", ErrInvalid)
	case m.RootKeyURI == "":
		return fmt.Errorf("%w: CA metadata: empty root key URI", ErrInvalid)
	case m.InitializedAt.IsZero():
		return fmt.Errorf("%w: CA metadata: zero InitializedAt", ErrInvalid)
	}
	if first.Slot != SlotActive {
		return fmt.Errorf("%w: first intermediate %s: slot %q, want %s", ErrInvalid, first.KeyID, first.Slot, SlotActive)
	}
	recs, err := metaCerts(m)
	if err != nil {
		return err
	}
	inter, interVal, err := prepareIntermediate(first)
	if err != nil {
		return err
	}
	val, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("store: encode CA metadata: %w", err)
	}
	return s.recordCA("init CA", append(recs, inter), func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		if meta.Get(keyCA) != nil {
			return ErrAlreadyInitialized
		}
		if err := s.putIntermediate(tx, first, interVal); err != nil {
			return err
		}
		return meta.Put(keyCA, val)
	})
}

// caCert is the certs/ record of one of the CA's own certificates.
type caCert struct {
	key []byte
	rec CertRecord
}

// parseCACert makes the certs/ record of a CA certificate. Its issuer is
// the authority key ID, or for a self-signed root its own key ID.
func parseCACert(what, kind string, der []byte) (caCert, error) {
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return caCert{}, fmt.Errorf("%w: %s certificate: %v", ErrInvalid, what, err)
	}
	issuer := cert.AuthorityKeyId
	if len(issuer) == 0 && bytes.Equal(cert.RawIssuer, cert.RawSubject) {
		issuer = cert.SubjectKeyId
	}
	if len(issuer) == 0 {
		return caCert{}, fmt.Errorf("%w: %s certificate names no issuer key ID", ErrInvalid, what)
	}
	rec := CertRecord{
		Serial: cert.SerialNumber, IssuerKeyID: hex.EncodeToString(issuer), Kind: kind,
		NotBefore: cert.NotBefore.UTC(), NotAfter: cert.NotAfter.UTC(), Status: CertValid,
	}
	key, err := checkRecord(&rec)
	if err != nil {
		return caCert{}, fmt.Errorf("%s certificate: %w", what, err)
	}
	return caCert{key: key, rec: rec}, nil
}

// metaCerts are the certificates CAMeta holds: the root and, when set, the
// audit certificate.
func metaCerts(m CAMeta) ([]caCert, error) {
	root, err := parseCACert("root", KindRoot, m.RootCertDER)
	if err != nil {
		return nil, err
	}
	out := []caCert{root}
	if len(m.AuditCertDER) > 0 {
		a, err := parseCACert("audit", KindAuditSigner, m.AuditCertDER)
		if err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	return out, nil
}

// recordCA runs fn and records recs in certs/, in one transaction. The
// serials are claimed against concurrent RecordIssued calls meanwhile, so
// they are unique against every journaled issuance too.
func (s *Store) recordCA(what string, recs []caCert, fn func(tx *bolt.Tx) error) error {
	release, err := s.claim(recs)
	if err != nil {
		return err
	}
	defer release()
	return s.update(what, func(tx *bolt.Tx) error {
		if err := fn(tx); err != nil {
			return err
		}
		for i := range recs {
			if _, err := putCACert(tx, &recs[i]); err != nil {
				return err
			}
		}
		return nil
	})
}

// putCACert records c unless it is recorded already (same kind, issuer and
// validity: the same certificate put again). Any other record of the
// serial is ErrSerialExists.
func putCACert(tx *bolt.Tx, c *caCert) (added bool, err error) {
	if v := tx.Bucket(bucketCerts).Get(c.key); v != nil {
		old, err := decodeCert(c.key, v)
		if err != nil {
			return false, err
		}
		if old.Kind == c.rec.Kind && old.IssuerKeyID == c.rec.IssuerKeyID &&
			old.NotBefore.Equal(c.rec.NotBefore) && old.NotAfter.Equal(c.rec.NotAfter) {
			return false, nil
		}
		return false, fmt.Errorf("%w: %x (%s certificate)", ErrSerialExists, c.rec.Serial, c.rec.Kind)
	}
	return insertCert(tx, c.key, encodeCert(&c.rec), &c.rec)
}

// claim reserves the serials of recs in the issuance journal's pending set
// (never made durable there, so the applier leaves them alone): RecordIssued
// then refuses them, and a serial an issuance holds is refused here.
func (s *Store) claim(recs []caCert) (release func(), err error) {
	j := s.journal
	j.mu.Lock()
	defer j.mu.Unlock()
	for _, c := range recs {
		if _, ok := j.pending[string(c.key)]; ok {
			return nil, fmt.Errorf("%w: %x", ErrSerialExists, c.rec.Serial)
		}
	}
	for _, c := range recs {
		j.pending[string(c.key)] = &pendingRec{rec: c.rec, key: c.key}
	}
	return func() {
		j.mu.Lock()
		for _, c := range recs {
			delete(j.pending, string(c.key))
		}
		j.mu.Unlock()
	}, nil
}

// RecordCACerts records the serials of the root, the audit certificate and
// every intermediate that certs/ lacks (a store written before InitCA and
// PutIntermediate recorded them), in one transaction, and returns how many
// it added. Once they are all recorded it only reads.
func (s *Store) RecordCACerts() (int, error) {
	var all []caCert
	missing := false
	err := s.view("CA certificates", func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketMeta).Get(keyCA)
		if v == nil {
			return ErrNotInitialized
		}
		var m CAMeta
		if err := json.Unmarshal(v, &m); err != nil {
			return fmt.Errorf("%w: %s: CA metadata: %v", ErrCorrupt, s.path, err)
		}
		recs, err := metaCerts(m)
		if err != nil {
			return fmt.Errorf("%w: %s: CA metadata: %v", ErrCorrupt, s.path, err)
		}
		inters, err := s.intermediates(tx.Bucket(bucketIntermediates))
		if err != nil {
			return err
		}
		for _, i := range inters {
			c, err := parseCACert("intermediate "+i.KeyID, KindIntermediate, i.CertDER)
			if err != nil {
				return fmt.Errorf("%w: %s: %v", ErrCorrupt, s.path, err)
			}
			recs = append(recs, c)
		}
		all = recs
		certs := tx.Bucket(bucketCerts)
		for _, c := range recs {
			if certs.Get(c.key) == nil {
				missing = true
			}
		}
		return nil
	})
	if err != nil || !missing {
		return 0, err
	}
	release, err := s.claim(all)
	if err != nil {
		return 0, err
	}
	defer release()
	n := 0
	err = s.update("record CA certificates", func(tx *bolt.Tx) error {
		n = 0
		for i := range all {
			added, err := putCACert(tx, &all[i])
			if err != nil {
				return err
			}
			if added {
				n++
			}
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	return n, nil
}

// CAMeta returns the CA metadata, or ErrNotInitialized.
func (s *Store) CAMeta() (CAMeta, error) {
	var m CAMeta
	err := s.view("CA metadata", func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketMeta).Get(keyCA)
		if v == nil {
			return ErrNotInitialized
		}
		if err := json.Unmarshal(v, &m); err != nil {
			return fmt.Errorf("%w: %s: CA metadata: %v", ErrCorrupt, s.path, err)
		}
		return nil
	})
	return m, err
}

// Intermediate slots (SPIRE's model): one active signs, one next is
// prepared ahead of activation, the rest are retired but still published
// until they expire.
const (
	SlotActive  = "active"
	SlotNext    = "next"
	SlotRetired = "retired"
)

// Intermediate is one intermediate CA generation.
type Intermediate struct {
	KeyID       string    `json:"key_id"` // lowercase hex SKI
	KeyLabel    string    `json:"key_label,omitempty"`
	KeyURI      string    `json:"key_uri"`
	CertDER     []byte    `json:"cert_der"`
	Slot        string    `json:"slot"`
	NotBefore   time.Time `json:"not_before"`
	NotAfter    time.Time `json:"not_after"`
	CreatedAt   time.Time `json:"created_at"`
	ActivatedAt time.Time `json:"activated_at"`
}

func validKeyID(id string) error {
	if id == "" {
		return fmt.Errorf("%w: empty key ID", ErrInvalid)
	}
	if len(id) > 128 || len(id)%2 != 0 {
		return fmt.Errorf("%w: key ID %q is not a hex SKI", ErrInvalid, id)
	}
	for _, c := range id {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return fmt.Errorf("%w: key ID %q is not lowercase hex", ErrInvalid, id)
		}
	}
	return nil
}

// PutIntermediate creates or replaces the record for i.KeyID and records
// its certificate's serial (KindIntermediate) in certs/, in one
// transaction; a serial recorded for anything else fails with
// ErrSerialExists. At most one intermediate holds the active slot and one
// the next slot: putting a second fails with ErrSlotOccupied (rotate with
// ActivateIntermediate instead).
func (s *Store) PutIntermediate(i Intermediate) error {
	cert, val, err := prepareIntermediate(i)
	if err != nil {
		return err
	}
	return s.recordCA("put intermediate", []caCert{cert}, func(tx *bolt.Tx) error {
		return s.putIntermediate(tx, i, val)
	})
}

// prepareIntermediate validates i and encodes its record and certs/ entry.
func prepareIntermediate(i Intermediate) (caCert, []byte, error) {
	if err := validKeyID(i.KeyID); err != nil {
		return caCert{}, nil, err
	}
	switch {
	case i.Slot != SlotActive && i.Slot != SlotNext && i.Slot != SlotRetired:
		return caCert{}, nil, fmt.Errorf("%w: intermediate %s: slot %q (want active, next or retired)", ErrInvalid, i.KeyID, i.Slot)
	case len(i.CertDER) == 0:
		return caCert{}, nil, fmt.Errorf("%w: intermediate %s: no certificate", ErrInvalid, i.KeyID)
	case i.KeyURI == "":
		return caCert{}, nil, fmt.Errorf("%w: intermediate %s: empty key URI", ErrInvalid, i.KeyID)
	case !i.NotAfter.After(i.NotBefore):
		return caCert{}, nil, fmt.Errorf("%w: intermediate %s: NotAfter %s is not after NotBefore %s", ErrInvalid, i.KeyID, i.NotAfter, i.NotBefore)
	}
	cert, err := parseCACert("intermediate "+i.KeyID, KindIntermediate, i.CertDER)
	if err != nil {
		return caCert{}, nil, err
	}
	val, err := json.Marshal(i)
	if err != nil {
		return caCert{}, nil, fmt.Errorf("store: encode intermediate: %w", err)
	}
	return cert, val, nil
}

// putIntermediate writes i's record inside tx, enforcing one holder per
// active and next slot.
func (s *Store) putIntermediate(tx *bolt.Tx, i Intermediate, val []byte) error {
	b := tx.Bucket(bucketIntermediates)
	if i.Slot != SlotRetired {
		all, err := s.intermediates(b)
		if err != nil {
			return err
		}
		for _, o := range all {
			if o.Slot == i.Slot && o.KeyID != i.KeyID {
				return fmt.Errorf("%w: %s slot is held by %s", ErrSlotOccupied, i.Slot, o.KeyID)
			}
		}
	}
	return b.Put([]byte(i.KeyID), val)
}

func (s *Store) intermediates(b *bolt.Bucket) ([]Intermediate, error) {
	var out []Intermediate
	err := b.ForEach(func(k, v []byte) error {
		var i Intermediate
		if err := json.Unmarshal(v, &i); err != nil {
			return fmt.Errorf("%w: %s: intermediate %s: %v", ErrCorrupt, s.path, k, err)
		}
		out = append(out, i)
		return nil
	})
	return out, err
}

// Intermediates returns every generation, oldest first (by NotBefore, then key ID).
func (s *Store) Intermediates() ([]Intermediate, error) {
	var out []Intermediate
	err := s.view("intermediates", func(tx *bolt.Tx) (err error) {
		out, err = s.intermediates(tx.Bucket(bucketIntermediates))
		return err
	})
	sort.SliceStable(out, func(a, b int) bool {
		if !out[a].NotBefore.Equal(out[b].NotBefore) {
			return out[a].NotBefore.Before(out[b].NotBefore)
		}
		return out[a].KeyID < out[b].KeyID
	})
	return out, err
}

// ActivateIntermediate moves keyID into the active slot at time at and the
// previous active one to retired, in one transaction. Activating the
// already-active generation is a no-op; a retired one is refused.
func (s *Store) ActivateIntermediate(keyID string, at time.Time) error {
	if err := validKeyID(keyID); err != nil {
		return err
	}
	if at.IsZero() {
		return fmt.Errorf("%w: zero activation time", ErrInvalid)
	}
	return s.update("activate intermediate", func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketIntermediates)
		all, err := s.intermediates(b)
		if err != nil {
			return err
		}
		var target *Intermediate
		for k := range all {
			if all[k].KeyID == keyID {
				target = &all[k]
			}
		}
		switch {
		case target == nil:
			return fmt.Errorf("%w: %s", ErrIntermediateNotFound, keyID)
		case target.Slot == SlotActive:
			return nil
		case target.Slot == SlotRetired:
			return fmt.Errorf("%w: %s", ErrIntermediateRetired, keyID)
		}
		for k := range all {
			i := &all[k]
			switch {
			case i.KeyID == keyID:
				i.Slot, i.ActivatedAt = SlotActive, at
			case i.Slot == SlotActive:
				i.Slot = SlotRetired
			default:
				continue
			}
			val, err := json.Marshal(i)
			if err != nil {
				return fmt.Errorf("store: encode intermediate: %w", err)
			}
			if err := b.Put([]byte(i.KeyID), val); err != nil {
				return err
			}
		}
		return nil
	})
}

// maxBundleContents bounds BundleSequence's contents (a digest).
const maxBundleContents = 64

// BundleSequence returns the trust bundle's sequence number for contents, a
// digest of the bundle's authorities: the recorded number while contents
// are unchanged, otherwise the next one (first, or 1, when none is recorded
// yet), recorded with contents in the same transaction. The number thus
// changes exactly when the contents do, and only upwards, across restarts.
func (s *Store) BundleSequence(contents []byte, first uint64) (uint64, error) {
	if len(contents) == 0 || len(contents) > maxBundleContents {
		return 0, fmt.Errorf("%w: bundle contents digest of %d bytes (want 1-%d)", ErrInvalid, len(contents), maxBundleContents)
	}
	// lookup reports the recorded number, and whether it is for contents.
	lookup := func(tx *bolt.Tx) (uint64, bool, error) {
		v := tx.Bucket(bucketMeta).Get(keyBundle)
		if v == nil {
			return 0, false, nil
		}
		if len(v) < 8 {
			return 0, false, fmt.Errorf("%w: %s: bundle sequence record of %d bytes", ErrCorrupt, s.path, len(v))
		}
		return binary.BigEndian.Uint64(v), bytes.Equal(v[8:], contents), nil
	}
	var seq uint64
	var same bool
	err := s.view("bundle sequence", func(tx *bolt.Tx) (err error) {
		seq, same, err = lookup(tx)
		return err
	})
	if err != nil || same {
		return seq, err
	}
	err = s.update("bump bundle sequence", func(tx *bolt.Tx) error {
		old, same, err := lookup(tx)
		if err != nil || same {
			seq = old
			return err
		}
		switch {
		case old > 0:
			seq = old + 1
		case first > 0:
			seq = first
		default:
			seq = 1
		}
		return tx.Bucket(bucketMeta).Put(keyBundle, append(binary.BigEndian.AppendUint64(nil, seq), contents...))
	})
	if err != nil {
		return 0, err
	}
	return seq, nil
}
