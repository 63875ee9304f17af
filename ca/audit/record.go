package audit

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strconv"
	"time"
	"unicode/utf8"
)

// Record is one line of the log.
type Record struct {
	Seq   uint64          `json:"seq"`  // 1-based, contiguous
	Time  time.Time       `json:"time"` // UTC, RFC 3339 with nanoseconds
	Kind  string          `json:"kind"`
	Actor string          `json:"actor"`
	Data  json.RawMessage `json:"data,omitempty"` // compact JSON, hashed byte for byte
	Prev  string          `json:"prev"`           // Hash of record Seq-1; GenesisPrev for seq 1
	Hash  string          `json:"hash"`           // hex SHA-256 of the canonical encoding (see hashRecord)
	// Checkpoint records only (Kind == KindCheckpoint): ASN.1 ECDSA signature
	// over checkpointDigest(Seq, Hash), and the signer's certificate (DER).
	// Neither is covered by Hash; the signature covers Hash.
	Sig  []byte `json:"sig,omitempty"`
	Cert []byte `json:"cert,omitempty"`
}

// Reserved kinds; Append refuses them and anything under "audit.".
const (
	KindCheckpoint = "checkpoint"
	KindRecovered  = "audit.recovered"
	// KindContinued opens a segment: its Prev is the head of the previous
	// segment, so the chain runs across files.
	KindContinued = "audit.continued"
	// KindReanchored records that the anchor was moved to a log that no
	// longer reached it (see Reanchor); its actor is the operator.
	KindReanchored = "audit.reanchored"
)

// GenesisPrev is the Prev of record 1.
var GenesisPrev = hex.EncodeToString(make([]byte, sha256.Size))

// Limits keep a single line bounded so Verify can cap what it reads.
const (
	MaxKindBytes  = 128
	MaxActorBytes = 2048
	MaxDataBytes  = 64 << 10
	// MaxLineBytes bounds an encoded line (including checkpoint certificate).
	MaxLineBytes = 128 << 10
)

const hashDomain = "palisade-audit-record-v1\x00"

// hashRecord computes the record hash: SHA-256 over a length-prefixed binary
// encoding of seq, time, kind, actor, data and prev. Length prefixes make the
// encoding injective; it does not depend on JSON formatting, and Data is
// hashed exactly as stored (it is compacted before it is stored).
func hashRecord(seq uint64, timeStr, kind, actor string, data []byte, prev string) string {
	h := sha256.New()
	var n [8]byte
	h.Write([]byte(hashDomain))
	binary.BigEndian.PutUint64(n[:], seq)
	h.Write(n[:])
	for _, f := range [...]string{timeStr, kind, actor} {
		binary.BigEndian.PutUint32(n[:4], uint32(len(f)))
		h.Write(n[:4])
		h.Write([]byte(f))
	}
	binary.BigEndian.PutUint32(n[:4], uint32(len(data)))
	h.Write(n[:4])
	h.Write(data)
	binary.BigEndian.PutUint32(n[:4], uint32(len(prev)))
	h.Write(n[:4])
	h.Write([]byte(prev))
	var sum [sha256.Size]byte
	return hex.EncodeToString(h.Sum(sum[:0]))
}

func formatTime(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }

// wire is a line as parsed, with the time kept as its exact string so the
// hash is recomputed over the stored bytes.
type wire struct {
	Seq   uint64          `json:"seq"`
	Time  string          `json:"time"`
	Kind  string          `json:"kind"`
	Actor string          `json:"actor"`
	Data  json.RawMessage `json:"data,omitempty"`
	Prev  string          `json:"prev"`
	Hash  string          `json:"hash"`
	Sig   []byte          `json:"sig,omitempty"`
	Cert  []byte          `json:"cert,omitempty"`
}

// appendLine encodes w as one canonical JSON line. The writer and Verify both
// use it: Verify re-encodes every parsed line and requires identical bytes,
// so any byte edit that JSON parsing would otherwise normalise away is seen.
func appendLine(b []byte, w *wire) []byte {
	b = append(b, `{"seq":`...)
	b = strconv.AppendUint(b, w.Seq, 10)
	b = append(b, `,"time":`...)
	b = appendString(b, w.Time)
	b = append(b, `,"kind":`...)
	b = appendString(b, w.Kind)
	b = append(b, `,"actor":`...)
	b = appendString(b, w.Actor)
	if w.Data != nil {
		b = append(b, `,"data":`...)
		b = append(b, w.Data...)
	}
	b = append(b, `,"prev":`...)
	b = appendString(b, w.Prev)
	b = append(b, `,"hash":`...)
	b = appendString(b, w.Hash)
	if w.Sig != nil {
		b = append(b, `,"sig":"`...)
		b = base64.StdEncoding.AppendEncode(b, w.Sig)
		b = append(b, '"')
	}
	if w.Cert != nil {
		b = append(b, `,"cert":"`...)
		b = base64.StdEncoding.AppendEncode(b, w.Cert)
		b = append(b, '"')
	}
	return append(b, "}\n"...)
}

const hexDigits = "0123456789abcdef"

// appendString writes s as a JSON string. s must be valid UTF-8 (checked by
// Append; Verify's byte comparison rejects anything else).
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' {
			continue
		}
		b = append(b, s[start:i]...)
		switch c {
		case '"', '\\':
			b = append(b, '\\', c)
		case '\n':
			b = append(b, '\\', 'n')
		case '\r':
			b = append(b, '\\', 'r')
		case '\t':
			b = append(b, '\\', 't')
		default:
			b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
		}
		start = i + 1
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// parseLine decodes one line (without its newline) and checks it is in
// canonical form. It does not check the hash.
func parseLine(line []byte) (*wire, error) {
	var w wire
	if err := json.Unmarshal(line, &w); err != nil {
		return nil, fmt.Errorf("not a JSON record: %w", err)
	}
	if w.Seq == 0 {
		return nil, fmt.Errorf("seq 0 or missing")
	}
	if !utf8.ValidString(w.Kind) || !utf8.ValidString(w.Actor) {
		return nil, fmt.Errorf("invalid UTF-8")
	}
	if w.Data != nil {
		if bytes.Equal(w.Data, []byte("null")) {
			return nil, fmt.Errorf("data is null")
		}
		var c bytes.Buffer
		if err := json.Compact(&c, w.Data); err != nil || !bytes.Equal(c.Bytes(), w.Data) {
			return nil, fmt.Errorf("data is not compact JSON")
		}
	}
	if _, err := parseTime(w.Time); err != nil {
		return nil, err
	}
	if !isHexHash(w.Hash) || !isHexHash(w.Prev) {
		return nil, fmt.Errorf("hash or prev is not 64 lowercase hex digits")
	}
	if re := appendLine(nil, &w); !bytes.Equal(re[:len(re)-1], line) {
		return nil, fmt.Errorf("not in canonical encoding (extra, missing or re-encoded fields)")
	}
	return &w, nil
}

func parseTime(s string) (time.Time, error) {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("bad time: %w", err)
	}
	if formatTime(t) != s {
		return time.Time{}, fmt.Errorf("time %q is not canonical UTC RFC 3339", s)
	}
	return t, nil
}

func isHexHash(s string) bool {
	if len(s) != 2*sha256.Size {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

func (w *wire) record() Record {
	t, _ := parseTime(w.Time)
	return Record{Seq: w.Seq, Time: t, Kind: w.Kind, Actor: w.Actor, Data: w.Data,
		Prev: w.Prev, Hash: w.Hash, Sig: w.Sig, Cert: w.Cert}
}
