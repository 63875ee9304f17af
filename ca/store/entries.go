package store

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Selector is a workload or node property an entry matches (SPIRE's model).
type Selector struct {
	Type  string `json:"type"`
	Value string `json:"value"`
}

// Entry is a registration entry: workloads under ParentID matching all
// Selectors get SPIFFEID.
type Entry struct {
	ID             string        `json:"id"`
	SPIFFEID       string        `json:"spiffe_id"`
	ParentID       string        `json:"parent_id"`
	Selectors      []Selector    `json:"selectors"`
	X509TTL        time.Duration `json:"x509_ttl"`
	JWTTTL         time.Duration `json:"jwt_ttl"`
	DNSNames       []string      `json:"dns_names,omitempty"`
	CreatedAt      time.Time     `json:"created_at"`
	RevisionNumber int64         `json:"revision_number"`
}

// EntryFilter selects entries; empty fields match anything.
type EntryFilter struct {
	ParentID string
	SPIFFEID string
}

const maxIDLen = 2048

func checkID(what, id string) error {
	switch {
	case id == "":
		return fmt.Errorf("%w: empty %s", ErrInvalid, what)
	case len(id) > maxIDLen:
		return fmt.Errorf("%w: %s longer than %d bytes", ErrInvalid, what, maxIDLen)
	case strings.IndexByte(id, 0) >= 0:
		return fmt.Errorf("%w: %s contains NUL", ErrInvalid, what)
	}
	return nil
}

func checkSPIFFEID(what, id string) error {
	if err := checkID(what, id); err != nil {
		return err
	}
	if !strings.HasPrefix(id, "spiffe://") || len(id) == len("spiffe://") {
		return fmt.Errorf("%w: %s %q is not a spiffe:// URI", ErrInvalid, what, id)
	}
	return nil
}

func checkEntryID(id string) error {
	if id == "" || len(id) > 64 {
		return fmt.Errorf("%w: entry ID %q must be 1-64 characters", ErrInvalid, id)
	}
	for _, c := range id {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '-' || c == '_') {
			return fmt.Errorf("%w: entry ID %q: only letters, digits, '-' and '_'", ErrInvalid, id)
		}
	}
	return nil
}

// normalize validates e and sorts and dedups its selectors, so equal
// entries have equal keys.
func normalizeEntry(e *Entry) error {
	if e.ID != "" {
		if err := checkEntryID(e.ID); err != nil {
			return err
		}
	}
	if err := checkSPIFFEID("entry SPIFFE ID", e.SPIFFEID); err != nil {
		return err
	}
	if err := checkSPIFFEID("entry parent ID", e.ParentID); err != nil {
		return err
	}
	if len(e.Selectors) == 0 {
		return fmt.Errorf("%w: entry %s has no selectors", ErrInvalid, e.SPIFFEID)
	}
	for _, sel := range e.Selectors {
		if sel.Type == "" || sel.Value == "" {
			return fmt.Errorf("%w: entry %s: selector %q:%q has an empty type or value", ErrInvalid, e.SPIFFEID, sel.Type, sel.Value)
		}
		if strings.ContainsRune(sel.Type, ':') || strings.IndexByte(sel.Type+sel.Value, 0) >= 0 {
			return fmt.Errorf("%w: entry %s: selector type %q contains ':' or NUL", ErrInvalid, e.SPIFFEID, sel.Type)
		}
	}
	switch {
	case e.X509TTL < 0:
		return fmt.Errorf("%w: entry %s: negative X509 TTL", ErrInvalid, e.SPIFFEID)
	case e.JWTTTL < 0:
		return fmt.Errorf("%w: entry %s: negative JWT TTL", ErrInvalid, e.SPIFFEID)
	case e.RevisionNumber < 0:
		return fmt.Errorf("%w: entry %s: negative revision number", ErrInvalid, e.SPIFFEID)
	}
	for _, d := range e.DNSNames {
		if d == "" || strings.ContainsAny(d, " \x00/") {
			return fmt.Errorf("%w: entry %s: DNS name %q", ErrInvalid, e.SPIFFEID, d)
		}
	}
	sels := append([]Selector(nil), e.Selectors...)
	sort.Slice(sels, func(a, b int) bool {
		if sels[a].Type != sels[b].Type {
			return sels[a].Type < sels[b].Type
		}
		return sels[a].Value < sels[b].Value
	})
	out := sels[:1]
	for _, sel := range sels[1:] {
		if sel != out[len(out)-1] {
			out = append(out, sel)
		}
	}
	e.Selectors = out
	e.DNSNames = append([]string(nil), e.DNSNames...)
	return nil
}

// entryKey identifies an entry's content: SPIFFE ID, parent and selectors.
func entryKey(e *Entry) []byte {
	h := sha256.New()
	for _, s := range []string{e.SPIFFEID, e.ParentID} {
		h.Write([]byte(s))
		h.Write([]byte{0})
	}
	for _, sel := range e.Selectors {
		h.Write([]byte(sel.Type))
		h.Write([]byte{':'})
		h.Write([]byte(sel.Value))
		h.Write([]byte{0})
	}
	return h.Sum(nil)
}

func newEntryID() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("store: entry ID: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}

// PrepareEntry validates e and returns it as CreateEntry would store it:
// ID assigned (128 random bits in hex) unless given, selectors sorted and
// deduplicated, CreatedAt defaulted to now. CreateEntry stores the result
// unchanged, so a caller can record it (audit) before the write.
func PrepareEntry(e Entry) (Entry, error) {
	if err := normalizeEntry(&e); err != nil {
		return Entry{}, err
	}
	if e.ID == "" {
		id, err := newEntryID()
		if err != nil {
			return Entry{}, err
		}
		e.ID = id
	}
	if e.CreatedAt.IsZero() {
		e.CreatedAt = time.Now().UTC()
	}
	return e, nil
}

// CreateEntry stores e and returns it as stored (see PrepareEntry).
// ErrEntryExists if an entry with the same SPIFFE ID, parent ID and selector
// set (or the same ID) exists.
func (s *Store) CreateEntry(e Entry) (Entry, error) {
	e, err := PrepareEntry(e)
	if err != nil {
		return Entry{}, err
	}
	val, err := json.Marshal(e)
	if err != nil {
		return Entry{}, fmt.Errorf("store: encode entry: %w", err)
	}
	key := entryKey(&e)
	err = s.update("create entry", func(tx *bolt.Tx) error {
		byKey := tx.Bucket(bucketEntryKey)
		if id := byKey.Get(key); id != nil {
			return fmt.Errorf("%w: %s (parent %s) as %s", ErrEntryExists, e.SPIFFEID, e.ParentID, id)
		}
		entries := tx.Bucket(bucketEntries)
		if entries.Get([]byte(e.ID)) != nil {
			return fmt.Errorf("%w: ID %s", ErrEntryExists, e.ID)
		}
		if err := entries.Put([]byte(e.ID), val); err != nil {
			return err
		}
		if err := byKey.Put(key, []byte(e.ID)); err != nil {
			return err
		}
		if err := tx.Bucket(bucketEntryParent).Put(compositeKey(e.ParentID, []byte(e.ID)), nil); err != nil {
			return err
		}
		return tx.Bucket(bucketEntrySPIFFEID).Put(compositeKey(e.SPIFFEID, []byte(e.ID)), nil)
	})
	if err != nil {
		return Entry{}, err
	}
	return e, nil
}

func (s *Store) getEntry(tx *bolt.Tx, id string) (Entry, error) {
	v := tx.Bucket(bucketEntries).Get([]byte(id))
	if v == nil {
		return Entry{}, fmt.Errorf("%w: %s", ErrEntryNotFound, id)
	}
	var e Entry
	if err := json.Unmarshal(v, &e); err != nil {
		return Entry{}, fmt.Errorf("%w: %s: entry %s: %v", ErrCorrupt, s.path, id, err)
	}
	return e, nil
}

// Entry returns the entry with that ID, or ErrEntryNotFound.
func (s *Store) Entry(id string) (Entry, error) {
	if err := checkEntryID(id); err != nil {
		return Entry{}, err
	}
	var e Entry
	err := s.view("entry", func(tx *bolt.Tx) (err error) {
		e, err = s.getEntry(tx, id)
		return err
	})
	return e, err
}

// DeleteEntry removes the entry and its index keys, returning what was removed.
func (s *Store) DeleteEntry(id string) (Entry, error) {
	if err := checkEntryID(id); err != nil {
		return Entry{}, err
	}
	var e Entry
	err := s.update("delete entry", func(tx *bolt.Tx) (err error) {
		if e, err = s.getEntry(tx, id); err != nil {
			return err
		}
		for _, del := range []struct {
			b []byte
			k []byte
		}{
			{bucketEntries, []byte(id)},
			{bucketEntryKey, entryKey(&e)},
			{bucketEntryParent, compositeKey(e.ParentID, []byte(id))},
			{bucketEntrySPIFFEID, compositeKey(e.SPIFFEID, []byte(id))},
		} {
			if err := tx.Bucket(del.b).Delete(del.k); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return Entry{}, err
	}
	return e, nil
}

// ListEntries returns the matching entries ordered by ID. A ParentID or
// SPIFFEID filter is answered from its index.
func (s *Store) ListEntries(f EntryFilter) ([]Entry, error) {
	if f.ParentID != "" {
		if err := checkID("parent ID filter", f.ParentID); err != nil {
			return nil, err
		}
	}
	if f.SPIFFEID != "" {
		if err := checkID("SPIFFE ID filter", f.SPIFFEID); err != nil {
			return nil, err
		}
	}
	var out []Entry
	err := s.view("list entries", func(tx *bolt.Tx) error {
		match := func(e Entry) {
			if (f.ParentID == "" || e.ParentID == f.ParentID) && (f.SPIFFEID == "" || e.SPIFFEID == f.SPIFFEID) {
				out = append(out, e)
			}
		}
		var index []byte
		var prefix string
		switch {
		case f.ParentID != "":
			index, prefix = bucketEntryParent, f.ParentID
		case f.SPIFFEID != "":
			index, prefix = bucketEntrySPIFFEID, f.SPIFFEID
		default:
			return tx.Bucket(bucketEntries).ForEach(func(k, v []byte) error {
				var e Entry
				if err := json.Unmarshal(v, &e); err != nil {
					return fmt.Errorf("%w: %s: entry %s: %v", ErrCorrupt, s.path, k, err)
				}
				match(e)
				return nil
			})
		}
		p := compositeKey(prefix, nil)
		c := tx.Bucket(index).Cursor()
		for k, _ := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, _ = c.Next() {
			e, err := s.getEntry(tx, string(k[len(p):]))
			if err != nil {
				return fmt.Errorf("%w: %s: index %s points at a missing entry: %v", ErrCorrupt, s.path, index, err)
			}
			match(e)
		}
		return nil
	})
	return out, err
}
