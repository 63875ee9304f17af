package store

import (
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

// InitCA records m if no CA metadata exists yet (ErrAlreadyInitialized
// otherwise); the check and the write are one transaction.
func (s *Store) InitCA(m CAMeta) error {
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
	val, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("store: encode CA metadata: %w", err)
	}
	return s.update("init CA", func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		if meta.Get(keyCA) != nil {
			return ErrAlreadyInitialized
		}
		return meta.Put(keyCA, val)
	})
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

// PutIntermediate creates or replaces the record for i.KeyID. At most one
// intermediate holds the active slot and one the next slot: putting a second
// fails with ErrSlotOccupied (rotate with ActivateIntermediate instead).
func (s *Store) PutIntermediate(i Intermediate) error {
	if err := validKeyID(i.KeyID); err != nil {
		return err
	}
	switch {
	case i.Slot != SlotActive && i.Slot != SlotNext && i.Slot != SlotRetired:
		return fmt.Errorf("%w: intermediate %s: slot %q (want active, next or retired)", ErrInvalid, i.KeyID, i.Slot)
	case len(i.CertDER) == 0:
		return fmt.Errorf("%w: intermediate %s: no certificate", ErrInvalid, i.KeyID)
	case i.KeyURI == "":
		return fmt.Errorf("%w: intermediate %s: empty key URI", ErrInvalid, i.KeyID)
	case !i.NotAfter.After(i.NotBefore):
		return fmt.Errorf("%w: intermediate %s: NotAfter %s is not after NotBefore %s", ErrInvalid, i.KeyID, i.NotAfter, i.NotBefore)
	}
	val, err := json.Marshal(i)
	if err != nil {
		return fmt.Errorf("store: encode intermediate: %w", err)
	}
	return s.update("put intermediate", func(tx *bolt.Tx) error {
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
	})
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
