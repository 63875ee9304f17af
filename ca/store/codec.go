package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/big"
	"math/bits"
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
	rd  *recordDecoder
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
	s := d.rd.str(d.b[:n])
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
	return (*recordDecoder)(nil).decode(key, val)
}

// recordDecoder amortises allocation over a scan of many records (a CRL
// build streams every revoked record of an issuer): the IDs repeat, so they
// are interned, and serials are carved from slabs. The nil decoder
// allocates per record.
type recordDecoder struct {
	intern map[string]string
	ints   []big.Int
	words  []big.Word
}

const (
	slab        = 1024
	wordsPerSer = (serialLen + bits.UintSize/8 - 1) / (bits.UintSize / 8)
	maxInterned = 1 << 16
)

func newRecordDecoder() *recordDecoder {
	rd := &recordDecoder{intern: make(map[string]string)}
	for _, k := range []string{KindX509SVID, KindNodeSVID, KindServerSVID, KindIntermediate, KindOCSPSigner} {
		rd.intern[k] = k
	}
	return rd
}

func (rd *recordDecoder) str(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	if rd == nil {
		return string(b)
	}
	if s, ok := rd.intern[string(b)]; ok {
		return s
	}
	s := string(b)
	if len(rd.intern) < maxInterned {
		rd.intern[s] = s
	}
	return s
}

func (rd *recordDecoder) serial(key []byte) *big.Int {
	if rd == nil {
		return new(big.Int).SetBytes(key)
	}
	if len(rd.ints) == 0 {
		rd.ints = make([]big.Int, slab)
		rd.words = make([]big.Word, slab*wordsPerSer)
	}
	z := &rd.ints[0]
	rd.ints = rd.ints[1:]
	z.SetBits(rd.words[:0:wordsPerSer])
	rd.words = rd.words[wordsPerSer:]
	return z.SetBytes(key)
}

func (rd *recordDecoder) decode(key, val []byte) (CertRecord, error) {
	if len(key) != serialLen {
		return CertRecord{}, fmt.Errorf("%w: serial key is %d bytes, want %d", ErrCorrupt, len(key), serialLen)
	}
	d := decoder{b: val, rd: rd}
	if f := d.byte(); d.err == nil && f != certFormatV1 {
		return CertRecord{}, fmt.Errorf("%w: serial %x: unknown record format %d", ErrCorrupt, key, f)
	}
	r := CertRecord{Serial: rd.serial(key)}
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
