package store

import (
	"bytes"
	"math/big"
	"reflect"
	"testing"
	"time"
)

func TestCertCodec(t *testing.T) {
	full := svid(0x1234, "spiffe://example.org/web", nodeA)
	full.Status, full.Reason, full.RevokedAt, full.RevokeSeq = CertRevoked, 4, t0.Add(time.Nanosecond), 1<<40
	tests := []struct {
		name string
		rec  CertRecord
	}{
		{"valid", svid(1, "spiffe://example.org/a", nodeA)},
		{"revoked", full},
		{"empty strings", CertRecord{Serial: big.NewInt(2), IssuerKeyID: "aa", Kind: KindIntermediate, NotBefore: t0, NotAfter: t0.Add(1), Status: CertValid}},
		{"pre-1970", CertRecord{Serial: big.NewInt(3), Kind: KindOCSPSigner, NotBefore: time.Date(1960, 1, 1, 0, 0, 0, 5, time.UTC), NotAfter: t0, Status: CertValid}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			key, err := serialKey(tc.rec.Serial)
			if err != nil {
				t.Fatal(err)
			}
			got, err := decodeCert(key, encodeCert(&tc.rec))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.rec) {
				t.Fatalf("round trip\n got %+v\nwant %+v", got, tc.rec)
			}
		})
	}
	t.Run("serial key order", func(t *testing.T) {
		a, _ := serialKey(big.NewInt(255))
		b, _ := serialKey(big.NewInt(256))
		if len(a) != serialLen || bytes.Compare(a, b) >= 0 {
			t.Fatalf("keys %x, %x not ordered", a, b)
		}
	})
}

// FuzzDecodeCert: the record decoder reads bytes from disk that damage may
// have changed; it must never panic and must round-trip what it accepts.
func FuzzDecodeCert(f *testing.F) {
	r := svid(99, "spiffe://example.org/web", nodeA)
	f.Add(encodeCert(&r))
	r.Status, r.Reason, r.RevokeSeq, r.RevokedAt = CertRevoked, 1, 77, t0
	f.Add(encodeCert(&r))
	f.Add([]byte{})
	f.Add([]byte{1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})
	f.Add([]byte{2})
	key, _ := serialKey(big.NewInt(99))
	f.Fuzz(func(t *testing.T, val []byte) {
		rec, err := decodeCert(key, val)
		if err != nil {
			return
		}
		again, err := decodeCert(key, encodeCert(&rec))
		if err != nil || !reflect.DeepEqual(again, rec) {
			t.Fatalf("accepted record does not round-trip: %+v vs %+v (%v)", rec, again, err)
		}
	})
}
