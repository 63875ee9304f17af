package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"time"
)

const certFormatV1 = 1

// serialKey is the 20-byte big-endian key of a serial. Serials must be
// positive and fit RFC 5280's 20 octets.
func serialKey(serial *big.Int) ([]byte, error) {
	if serial == nil {
		return nil, fmt.Errorf("%w: nil serial", ErrInvalid)
	}
	if serial.Sign() <= 0 {
		return nil, fmt.Errorf("%w: serial %s is not positive", ErrInvalid, serial)
	}
	if serial.BitLen() > 8*serialLen {
		return nil, fmt.Errorf("%w: serial %x is longer than %d octets", ErrInvalid, serial, serialLen)
	}
	return serial.FillBytes(make([]byte, serialLen)), nil
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func appendTime(b []byte, t time.Time) []byte {
	b = binary.AppendVarint(b, t.Unix())
	return binary.AppendUvarint(b, uint64(t.Nanosecond()))
}

// encodeCert is the binary v1 record (schema.go); the serial is the key.
func encodeCert(r *CertRecord) []byte {
	b := make([]byte, 0, 64+len(r.SPIFFEID)+len(r.NodeID)+len(r.EntryID)+len(r.IssuerKeyID)+len(r.Kind))
	b = append(b, certFormatV1)
	b = appendString(b, r.SPIFFEID)
	b = appendString(b, r.NodeID)
	b = appendString(b, r.EntryID)
	b = appendString(b, r.IssuerKeyID)
	b = appendString(b, r.Kind)
	b = appendTime(b, r.NotBefore)
	b = appendTime(b, r.NotAfter)
	b = append(b, byte(r.Status))
	b = binary.AppendUvarint(b, uint64(r.Reason))
	b = appendTime(b, r.RevokedAt)
	return binary.AppendUvarint(b, r.RevokeSeq)
}

var errShort = errors.New("truncated")

type decoder struct {
	b   []byte
	err error
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.err = errShort
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) varint() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.err = errShort
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) byte() byte {
	if d.err != nil || len(d.b) == 0 {
		d.err = errShort
		return 0
	}
	c := d.b[0]
	d.b = d.b[1:]
	return c
}

func (d *decoder) string() string {
	n := d.uvarint()
	if d.err != nil {
		return ""
	}
	if n > uint64(len(d.b)) {
		d.err = errShort
		return ""
	}
	s := string(d.b[:n])
	d.b = d.b[n:]
	return s
}

func (d *decoder) time() time.Time {
	sec := d.varint()
	nsec := d.uvarint()
	if d.err != nil {
		return time.Time{}
	}
	if nsec >= 1e9 {
		d.err = fmt.Errorf("nanoseconds %d out of range", nsec)
		return time.Time{}
	}
	return time.Unix(sec, int64(nsec)).UTC()
}

// decodeCert parses a record stored under key. The bytes are copied: bbolt's
// memory is only valid inside the transaction.
func decodeCert(key, val []byte) (CertRecord, error) {
	if len(key) != serialLen {
		return CertRecord{}, fmt.Errorf("%w: serial key is %d bytes, want %d", ErrCorrupt, len(key), serialLen)
	}
	d := decoder{b: val}
	if f := d.byte(); d.err == nil && f != certFormatV1 {
		return CertRecord{}, fmt.Errorf("%w: serial %x: unknown record format %d", ErrCorrupt, key, f)
	}
	r := CertRecord{Serial: new(big.Int).SetBytes(key)}
	r.SPIFFEID = d.string()
	r.NodeID = d.string()
	r.EntryID = d.string()
	r.IssuerKeyID = d.string()
	r.Kind = d.string()
	r.NotBefore = d.time()
	r.NotAfter = d.time()
	r.Status = CertStatus(d.byte())
	r.Reason = int(d.uvarint())
	r.RevokedAt = d.time()
	r.RevokeSeq = d.uvarint()
	if d.err == nil && len(d.b) != 0 {
		d.err = fmt.Errorf("%d trailing bytes", len(d.b))
	}
	if d.err == nil && r.Status != CertValid && r.Status != CertRevoked {
		d.err = fmt.Errorf("status %d", r.Status)
	}
	if d.err != nil {
		return CertRecord{}, fmt.Errorf("%w: serial %x: bad record: %v", ErrCorrupt, key, d.err)
	}
	return r, nil
}

// corrupt puts the file name into a record-level ErrCorrupt from decodeCert.
func (s *Store) corrupt(err error) error {
	msg, ok := strings.CutPrefix(err.Error(), ErrCorrupt.Error()+": ")
	if !ok {
		return err
	}
	return fmt.Errorf("%w: %s: %s", ErrCorrupt, s.path, msg)
}
