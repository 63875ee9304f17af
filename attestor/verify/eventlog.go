package verify

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
)

// Event log limits: firmware logs are tens of KiB.
const (
	MaxEventLogSize = 192 << 10
	MaxEvents       = 8192
	maxEventData    = 64 << 10
)

// ErrEventLog reports a malformed event log or one that does not replay to
// the quoted PCR values.
var ErrEventLog = errors.New("verify: event log")

// Event is one measurement from a TCG PC Client crypto-agile event log.
type Event struct {
	PCR    uint32
	Type   uint32
	SHA256 []byte // the SHA-256 bank digest extended into PCR
	Data   []byte
}

const (
	evNoAction   = 0x3
	algSHA256    = 0x000b
	specIDSig    = "Spec ID Event03\x00"
	startupLocal = "StartupLocality\x00"
)

type reader struct {
	b   []byte
	err error
}

func (r *reader) take(n int) []byte {
	if r.err != nil {
		return nil
	}
	if n < 0 || n > len(r.b) {
		r.err = fmt.Errorf("%w: truncated", ErrEventLog)
		return nil
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

func (r *reader) u16() uint16 {
	if b := r.take(2); b != nil {
		return binary.LittleEndian.Uint16(b)
	}
	return 0
}

func (r *reader) u32() uint32 {
	if b := r.take(4); b != nil {
		return binary.LittleEndian.Uint32(b)
	}
	return 0
}

// EventLog is a parsed crypto-agile event log (SHA-256 bank).
type EventLog struct {
	Events []Event
	// locality is the startup locality (initial value of PCR 0's last byte).
	locality byte
}

// ParseEventLog parses a TCG PC Client crypto-agile event log (as in
// /sys/kernel/security/tpm0/binary_bios_measurements). The log must
// declare the SHA-256 bank in its Spec ID event.
func ParseEventLog(raw []byte) (*EventLog, error) {
	if len(raw) > MaxEventLogSize {
		return nil, fmt.Errorf("%w: %d bytes (max %d)", ErrTooLarge, len(raw), MaxEventLogSize)
	}
	r := &reader{b: raw}
	// Header: a SHA-1 format event holding the Spec ID event.
	if pcr, typ := r.u32(), r.u32(); r.err == nil && (pcr != 0 || typ != evNoAction) {
		return nil, fmt.Errorf("%w: first event is not the Spec ID event", ErrEventLog)
	}
	r.take(20)
	spec := &reader{b: r.take(int(r.u32()))}
	if r.err != nil {
		return nil, r.err
	}
	if string(spec.take(len(specIDSig))) != specIDSig {
		return nil, fmt.Errorf("%w: not a crypto-agile log (Spec ID Event03 missing)", ErrEventLog)
	}
	spec.take(4 + 4) // platformClass, version, errata, uintnSize
	nAlg := spec.u32()
	if spec.err != nil || nAlg == 0 || nAlg > 16 {
		return nil, fmt.Errorf("%w: bad algorithm count", ErrEventLog)
	}
	sizes := map[uint16]int{}
	for range nAlg {
		id, size := spec.u16(), spec.u16()
		if size == 0 || size > 64 {
			return nil, fmt.Errorf("%w: bad digest size %d for algorithm 0x%x", ErrEventLog, size, id)
		}
		sizes[id] = int(size)
	}
	if spec.err != nil {
		return nil, spec.err
	}
	if sizes[algSHA256] != sha256.Size {
		return nil, fmt.Errorf("%w: no SHA-256 bank", ErrEventLog)
	}
	log := &EventLog{}
	for len(r.b) > 0 {
		if len(log.Events) >= MaxEvents {
			return nil, fmt.Errorf("%w: more than %d events", ErrTooLarge, MaxEvents)
		}
		var e Event
		e.PCR, e.Type = r.u32(), r.u32()
		count := r.u32()
		if r.err == nil && (count == 0 || count > 16) {
			return nil, fmt.Errorf("%w: bad digest count %d", ErrEventLog, count)
		}
		for range count {
			id := r.u16()
			size, ok := sizes[id]
			if r.err == nil && !ok {
				return nil, fmt.Errorf("%w: digest of undeclared algorithm 0x%x", ErrEventLog, id)
			}
			d := r.take(size)
			if id == algSHA256 {
				e.SHA256 = d
			}
		}
		n := r.u32()
		if r.err == nil && n > maxEventData {
			return nil, fmt.Errorf("%w: event of %d bytes", ErrEventLog, n)
		}
		e.Data = r.take(int(n))
		if r.err != nil {
			return nil, r.err
		}
		if e.PCR > MaxPCR {
			return nil, fmt.Errorf("%w: PCR %d out of range", ErrEventLog, e.PCR)
		}
		if e.Type == evNoAction {
			if e.PCR == 0 && bytes.HasPrefix(e.Data, []byte(startupLocal)) && len(e.Data) > len(startupLocal) {
				log.locality = e.Data[len(startupLocal)]
			}
			continue // not extended
		}
		if e.SHA256 == nil {
			return nil, fmt.Errorf("%w: event without a SHA-256 digest", ErrEventLog)
		}
		log.Events = append(log.Events, e)
	}
	return log, nil
}

// Replay extends the log's SHA-256 digests and checks that every PCR the
// log measures equals its quoted value. PCRs the log does not touch are not
// constrained by it (the OS may extend them); PCRs the log touches but the
// quote does not cover are ignored.
func (l *EventLog) Replay(quoted map[uint32][]byte) error {
	pcrs := map[uint32][]byte{}
	for _, e := range l.Events {
		cur, ok := pcrs[e.PCR]
		if !ok {
			cur = make([]byte, sha256.Size)
			if e.PCR == 0 {
				cur[sha256.Size-1] = l.locality
			}
		}
		h := sha256.New()
		h.Write(cur)
		h.Write(e.SHA256)
		pcrs[e.PCR] = h.Sum(nil)
	}
	for i := uint32(0); i <= MaxPCR; i++ {
		want, measured := pcrs[i]
		got, q := quoted[i]
		if measured && q && subtle.ConstantTimeCompare(want, got) != 1 {
			return fmt.Errorf("%w: replay of PCR %d gives %x, quoted %x", ErrEventLog, i, want, got)
		}
	}
	return nil
}
