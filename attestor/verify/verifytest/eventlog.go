package verifytest

import (
	"crypto/sha1"
	"crypto/sha256"
	"encoding/binary"
)

// LogEvent is one firmware measurement in a synthetic event log.
type LogEvent struct {
	PCR, Type uint32
	Data      []byte
}

// Measure extends PCR i with data's SHA-256 and records the event in the
// node's event log, as firmware does.
func (n *Node) Measure(pcr, typ uint32, data []byte) {
	n.Extend(pcr, data)
	n.Log = append(n.Log, LogEvent{pcr, typ, data})
}

// EventLog encodes the node's log in the TCG crypto-agile format with
// SHA-1 and SHA-256 banks.
func (n *Node) EventLog() []byte { return EncodeEventLog(n.Log) }

// EncodeEventLog encodes events in the TCG crypto-agile format.
func EncodeEventLog(events []LogEvent) []byte {
	le := binary.LittleEndian
	var spec []byte
	spec = append(spec, "Spec ID Event03\x00"...)
	spec = le.AppendUint32(spec, 0)      // platform class
	spec = append(spec, 0, 2, 0, 2)      // version 2.0, errata, uintnSize
	spec = le.AppendUint32(spec, 2)      // algorithms
	spec = le.AppendUint16(spec, 0x0004) // SHA-1
	spec = le.AppendUint16(spec, 20)
	spec = le.AppendUint16(spec, 0x000b) // SHA-256
	spec = le.AppendUint16(spec, 32)
	spec = append(spec, 0) // vendor info size

	var out []byte
	out = le.AppendUint32(out, 0)
	out = le.AppendUint32(out, 3) // EV_NO_ACTION
	out = append(out, make([]byte, 20)...)
	out = le.AppendUint32(out, uint32(len(spec)))
	out = append(out, spec...)
	for _, e := range events {
		s1 := sha1.Sum(e.Data)
		s256 := sha256.Sum256(e.Data)
		out = le.AppendUint32(out, e.PCR)
		out = le.AppendUint32(out, e.Type)
		out = le.AppendUint32(out, 2)
		out = le.AppendUint16(out, 0x0004)
		out = append(out, s1[:]...)
		out = le.AppendUint16(out, 0x000b)
		out = append(out, s256[:]...)
		out = le.AppendUint32(out, uint32(len(e.Data)))
		out = append(out, e.Data...)
	}
	return out
}
