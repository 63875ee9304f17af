package store

import (
	"errors"
	"math/big"
	"path/filepath"
	"testing"
	"time"
)

var t0 = time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)

const (
	issuerA = "0a0b0c0d"
	issuerB = "1a1b1c1d"
	nodeA   = "spiffe://example.org/spire/agent/tpm/aaaa"
	nodeB   = "spiffe://example.org/spire/agent/tpm/bbbb"
)

func openTest(t testing.TB) *Store {
	t.Helper()
	s, err := Open(filepath.Join(t.TempDir(), "ca.db"), Options{NoSync: true})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func svid(serial int64, spiffeID, node string) CertRecord {
	return CertRecord{
		Serial:      big.NewInt(serial),
		SPIFFEID:    spiffeID,
		NodeID:      node,
		EntryID:     "e1",
		IssuerKeyID: issuerA,
		Kind:        KindX509SVID,
		NotBefore:   t0,
		NotAfter:    t0.Add(time.Hour),
		Status:      CertValid,
	}
}

func mustRecord(t testing.TB, s *Store, recs ...CertRecord) {
	t.Helper()
	for _, r := range recs {
		if err := s.RecordIssued(r); err != nil {
			t.Fatalf("RecordIssued(%v): %v", r.Serial, err)
		}
	}
}

func wantErr(t testing.TB, got, want error) {
	t.Helper()
	if want == nil {
		if got != nil {
			t.Fatalf("unexpected error: %v", got)
		}
		return
	}
	if !errors.Is(got, want) {
		t.Fatalf("error = %v, want %v", got, want)
	}
}

func stats(t testing.TB, s *Store) Stats {
	t.Helper()
	st, err := s.Stats()
	if err != nil {
		t.Fatalf("Stats: %v", err)
	}
	return st
}
