package crl

import (
	"bytes"
	"crypto/x509"
	"math/big"
	"testing"
	"time"

	"github.com/palisade-id/palisade/test/testca"
)

type testEntry struct {
	serial *big.Int
	at     time.Time
	reason int
}

func walkOf(es []testEntry) Walk {
	return func(fn func(*big.Int, time.Time, int) error) error {
		for _, e := range es {
			if err := fn(e.serial, e.at, e.reason); err != nil {
				return err
			}
		}
		return nil
	}
}

func TestEncodeCRLParses(t *testing.T) {
	ca := testca.New(t, "example.org")
	now := time.Now().Truncate(time.Second)
	big1 := new(big.Int).Lsh(big.NewInt(1), 159) // high bit set in 20 octets → leading zero
	tests := []struct {
		name    string
		entries []testEntry
		delta   uint64
		fresh   string
	}{
		{"empty", nil, 0, ""},
		{"one", []testEntry{{big.NewInt(1), now, 1}}, 0, "http://127.0.0.1:1/crl/x-delta.crl"},
		{"reasons and widths", []testEntry{
			{big.NewInt(0), now, 0}, {big.NewInt(128), now.Add(-time.Hour), 5},
			{big1, now, 9}, {testca.Serial(t), time.Date(2051, 1, 2, 3, 4, 5, 0, time.UTC), 4},
		}, 0, ""},
		{"delta", []testEntry{{big.NewInt(77), now, 10}}, 41, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			der, err := EncodeCRL(CRLTemplate{
				Issuer: ca.Intermediate(), Signer: ca.IssuerSigner(), Number: 42,
				ThisUpdate: now, NextUpdate: now.Add(time.Hour), DeltaBase: tc.delta, FreshestURL: tc.fresh,
			}, len(tc.entries), walkOf(tc.entries))
			if err != nil {
				t.Fatal(err)
			}
			rl, err := x509.ParseRevocationList(der)
			if err != nil {
				t.Fatalf("parse: %v", err)
			}
			if err := rl.CheckSignatureFrom(ca.Intermediate()); err != nil {
				t.Fatalf("signature: %v", err)
			}
			if rl.Number.Int64() != 42 || !rl.ThisUpdate.Equal(now) || !rl.NextUpdate.Equal(now.Add(time.Hour)) {
				t.Fatalf("number/times: %v %v %v", rl.Number, rl.ThisUpdate, rl.NextUpdate)
			}
			if !bytes.Equal(rl.AuthorityKeyId, ca.Intermediate().SubjectKeyId) {
				t.Fatal("AKI mismatch")
			}
			if len(rl.RevokedCertificateEntries) != len(tc.entries) {
				t.Fatalf("entries: got %d want %d", len(rl.RevokedCertificateEntries), len(tc.entries))
			}
			for i, e := range rl.RevokedCertificateEntries {
				w := tc.entries[i]
				if e.SerialNumber.Cmp(w.serial) != 0 || !e.RevocationTime.Equal(w.at.UTC()) || e.ReasonCode != w.reason {
					t.Fatalf("entry %d: got %v %v %d want %v %v %d", i, e.SerialNumber, e.RevocationTime, e.ReasonCode, w.serial, w.at, w.reason)
				}
			}
			gotDelta, gotFresh := false, false
			for _, x := range rl.Extensions {
				if x.Id.Equal([]int{2, 5, 29, 27}) {
					gotDelta = x.Critical
				}
				if x.Id.Equal([]int{2, 5, 29, 46}) {
					gotFresh = bytes.Contains(x.Value, []byte(tc.fresh))
				}
			}
			if gotDelta != (tc.delta != 0) || gotFresh != (tc.fresh != "") {
				t.Fatalf("delta ext %v fresh ext %v", gotDelta, gotFresh)
			}
		})
	}
}

func TestEncodeCRLRejectsBadSerial(t *testing.T) {
	ca := testca.New(t, "example.org")
	for _, s := range []*big.Int{big.NewInt(-1), new(big.Int).Lsh(big.NewInt(1), 170)} {
		_, err := EncodeCRL(CRLTemplate{Issuer: ca.Intermediate(), Signer: ca.IssuerSigner(), Number: 1, ThisUpdate: time.Now()},
			1, walkOf([]testEntry{{s, time.Now(), 0}}))
		if err == nil {
			t.Fatalf("serial %v accepted", s)
		}
	}
}
