package verify_test

import (
	"bytes"
	"errors"
	"testing"

	"github.com/palisade-id/palisade/attestor/verify"
	"github.com/palisade-id/palisade/attestor/verify/verifytest"
)

func TestEventLog(t *testing.T) {
	n := &verifytest.Node{PCRs: map[uint32][]byte{}}
	n.Measure(0, 0x80000008, []byte("firmware volume"))
	n.Measure(7, 0x80000001, []byte("SecureBoot=1"))
	n.Measure(4, 0x80000003, []byte("shim"))
	n.Measure(4, 0x80000003, []byte("grub"))
	raw := n.EventLog()
	quoted := map[uint32][]byte{0: n.PCR(0), 4: n.PCR(4), 7: n.PCR(7), 10: bytes.Repeat([]byte{5}, 32)}
	tampered := bytes.Clone(raw)
	tampered[len(tampered)-1] ^= 1 // event data changes, digest does not: still replays
	wrongPCR4 := map[uint32][]byte{0: n.PCR(0), 4: n.PCR(0), 7: n.PCR(7)}

	tests := []struct {
		name      string
		raw       []byte
		quoted    map[uint32][]byte
		parseErr  error
		replayErr error
	}{
		{"replays to the quote", raw, quoted, nil, nil},
		{"quote disagrees with log", raw, wrongPCR4, nil, verify.ErrEventLog},
		{"event data is not what is measured", tampered, quoted, nil, nil},
		{"truncated", raw[:len(raw)-3], quoted, verify.ErrEventLog, nil},
		{"header only", raw[:40], quoted, verify.ErrEventLog, nil},
		{"SHA-1 log", append([]byte{0, 0, 0, 0, 3, 0, 0, 0}, make([]byte, 24)...), quoted, verify.ErrEventLog, nil},
		{"huge", make([]byte, verify.MaxEventLogSize+1), quoted, verify.ErrTooLarge, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			log, err := verify.ParseEventLog(tc.raw)
			if !errors.Is(err, tc.parseErr) {
				t.Fatalf("parse err = %v, want %v", err, tc.parseErr)
			}
			if err != nil {
				return
			}
			if len(log.Events) != 4 {
				t.Fatalf("%d events", len(log.Events))
			}
			if err := log.Replay(tc.quoted); !errors.Is(err, tc.replayErr) {
				t.Fatalf("replay err = %v, want %v", err, tc.replayErr)
			}
		})
	}
}

func FuzzParseEventLog(f *testing.F) {
	n := &verifytest.Node{PCRs: map[uint32][]byte{}}
	n.Measure(0, 8, []byte("fw"))
	n.Measure(7, 1, []byte("sb"))
	f.Add(n.EventLog())
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, raw []byte) {
		log, err := verify.ParseEventLog(raw)
		if err != nil {
			return
		}
		for _, e := range log.Events {
			if len(e.SHA256) != 32 || e.PCR > verify.MaxPCR {
				t.Fatalf("accepted event %+v", e)
			}
		}
		_ = log.Replay(map[uint32][]byte{0: make([]byte, 32)})
	})
}
