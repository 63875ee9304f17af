package store

import (
	"errors"
	"math/big"
	"reflect"
	"sync"
	"testing"
	"time"
)

func TestRecordIssued(t *testing.T) {
	s := openTest(t)
	max := new(big.Int).Sub(new(big.Int).Lsh(big.NewInt(1), 160), big.NewInt(1))
	tests := []struct {
		name   string
		mutate func(*CertRecord)
		want   error
	}{
		{name: "ok"},
		{name: "20-byte serial", mutate: func(r *CertRecord) { r.Serial = max }},
		{name: "server SVID", mutate: func(r *CertRecord) { r.Serial, r.Kind = big.NewInt(5), KindServerSVID }},
		{name: "server SVID without SPIFFE ID", mutate: func(r *CertRecord) { r.Serial, r.Kind, r.SPIFFEID = big.NewInt(9), KindServerSVID, "" }, want: ErrInvalid},
		{name: "zero status defaults to valid", mutate: func(r *CertRecord) { r.Serial = big.NewInt(3); r.Status = 0 }},
		{name: "intermediate without SPIFFE ID", mutate: func(r *CertRecord) {
			r.Serial, r.Kind, r.SPIFFEID, r.NodeID = big.NewInt(4), KindIntermediate, "", ""
		}},
		{name: "same serial", want: ErrSerialExists},
		{name: "nil serial", mutate: func(r *CertRecord) { r.Serial = nil }, want: ErrInvalid},
		{name: "zero serial", mutate: func(r *CertRecord) { r.Serial = big.NewInt(0) }, want: ErrInvalid},
		{name: "negative serial", mutate: func(r *CertRecord) { r.Serial = big.NewInt(-5) }, want: ErrInvalid},
		{name: "21-byte serial", mutate: func(r *CertRecord) { r.Serial = new(big.Int).Lsh(big.NewInt(1), 160) }, want: ErrInvalid},
		{name: "empty SPIFFE ID", mutate: func(r *CertRecord) { r.Serial, r.SPIFFEID = big.NewInt(9), "" }, want: ErrInvalid},
		{name: "bad kind", mutate: func(r *CertRecord) { r.Serial, r.Kind = big.NewInt(9), "svid" }, want: ErrInvalid},
		{name: "no issuer", mutate: func(r *CertRecord) { r.Serial, r.IssuerKeyID = big.NewInt(9), "" }, want: ErrInvalid},
		{name: "inverted validity", mutate: func(r *CertRecord) { r.Serial, r.NotAfter = big.NewInt(9), t0.Add(-time.Second) }, want: ErrInvalid},
		{name: "born revoked", mutate: func(r *CertRecord) { r.Serial, r.Status = big.NewInt(9), CertRevoked }, want: ErrInvalid},
		{name: "revocation fields", mutate: func(r *CertRecord) { r.Serial, r.RevokeSeq = big.NewInt(9), 4 }, want: ErrInvalid},
		{name: "NUL in node ID", mutate: func(r *CertRecord) { r.Serial, r.NodeID = big.NewInt(9), "a\x00b" }, want: ErrInvalid},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rec := svid(1, "spiffe://example.org/web", nodeA)
			if tc.mutate != nil {
				tc.mutate(&rec)
			}
			// Every record counts, an intermediate's as a CA certificate.
			total := func() uint64 { st := stats(t, s); return st.Certs + st.CACerts }
			before := total()
			err := s.RecordIssued(rec)
			wantErr(t, err, tc.want)
			after := total()
			if tc.want != nil {
				if after != before {
					t.Fatalf("failed record changed the count %d → %d", before, after)
				}
				if errors.Is(err, ErrInvalid) && rec.Serial != nil && rec.Serial.Sign() > 0 && rec.Serial.BitLen() <= 160 {
					_, cerr := s.Cert(rec.Serial)
					wantErr(t, cerr, ErrCertNotFound)
				}
				return
			}
			if after != before+1 {
				t.Fatalf("count %d → %d", before, after)
			}
			got, err := s.Cert(rec.Serial)
			if err != nil {
				t.Fatal(err)
			}
			if rec.Status == 0 {
				rec.Status = CertValid
			}
			if !reflect.DeepEqual(got, rec) {
				t.Fatalf("Cert = %+v\nwant   %+v", got, rec)
			}
		})
	}
}

func TestCert(t *testing.T) {
	s := openTest(t)
	mustRecord(t, s, svid(7, "spiffe://example.org/a", nodeA))
	tests := []struct {
		name   string
		serial *big.Int
		want   error
	}{
		{"found", big.NewInt(7), nil},
		{"missing", big.NewInt(8), ErrCertNotFound},
		{"nil", nil, ErrInvalid},
		{"negative", big.NewInt(-7), ErrInvalid},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := s.Cert(tc.serial)
			wantErr(t, err, tc.want)
			if err == nil && got.Serial.Cmp(tc.serial) != 0 {
				t.Fatalf("serial %v", got.Serial)
			}
		})
	}
}

func TestRevoke(t *testing.T) {
	s := openTest(t)
	mustRecord(t, s, svid(1, "spiffe://example.org/a", nodeA), svid(2, "spiffe://example.org/b", nodeA))
	at := t0.Add(10 * time.Minute)
	tests := []struct {
		name    string
		serial  *big.Int
		reason  int
		at      time.Time
		want    error
		wantSeq uint64
	}{
		{name: "nil serial", reason: 1, at: at, want: ErrInvalid},
		{name: "bad reason", serial: big.NewInt(1), reason: 7, at: at, want: ErrInvalid},
		{name: "negative reason", serial: big.NewInt(1), reason: -1, at: at, want: ErrInvalid},
		{name: "zero time", serial: big.NewInt(1), reason: 1, want: ErrInvalid},
		{name: "unknown", serial: big.NewInt(3), reason: 1, at: at, want: ErrCertNotFound},
		{name: "revoke 2", serial: big.NewInt(2), reason: 1, at: at, wantSeq: 1},
		{name: "revoke 1", serial: big.NewInt(1), reason: 4, at: at, wantSeq: 2},
		{name: "again", serial: big.NewInt(1), reason: 1, at: at, want: ErrAlreadyRevoked},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before, _ := s.LastRevocationSeq()
			r, err := s.Revoke(tc.serial, tc.reason, tc.at)
			wantErr(t, err, tc.want)
			last, _ := s.LastRevocationSeq()
			if err != nil {
				if last != before {
					t.Fatalf("failed revoke moved the sequence %d → %d", before, last)
				}
				return
			}
			if r.Status != CertRevoked || r.RevokeSeq != tc.wantSeq || r.Reason != tc.reason || !r.RevokedAt.Equal(tc.at) || last != tc.wantSeq {
				t.Fatalf("Revoke = %+v (last seq %d), want seq %d", r, last, tc.wantSeq)
			}
			stored, err := s.Cert(tc.serial)
			if err != nil || !reflect.DeepEqual(stored, r) {
				t.Fatalf("Cert after revoke = %+v, %v; want %+v", stored, err, r)
			}
		})
	}
	if st := stats(t, s); st.Certs != 2 || st.Revoked != 2 {
		t.Fatalf("Stats = %+v", st)
	}
}

// nodeFixture records node A's own SVID (1), two of its workloads (2, 3;
// 3 revoked, recorded before 1), node B's workload (4), an expired one of
// node A (5) and a node whose ID extends node A's (6).
func nodeFixture(t *testing.T) *Store {
	t.Helper()
	s := openTest(t)
	nodeSVID := svid(1, nodeA, "")
	nodeSVID.Kind = KindNodeSVID
	expired := svid(5, "spiffe://example.org/old", nodeA)
	expired.NotBefore, expired.NotAfter = t0.Add(-2*time.Hour), t0.Add(-time.Hour)
	mustRecord(t, s,
		svid(3, "spiffe://example.org/b", nodeA),
		nodeSVID,
		svid(2, "spiffe://example.org/a", nodeA),
		svid(4, "spiffe://example.org/c", nodeB),
		expired,
		svid(6, "spiffe://example.org/d", nodeA+"x"), // shares a prefix with nodeA
	)
	if _, err := s.Revoke(big.NewInt(3), 1, t0); err != nil {
		t.Fatal(err)
	}
	return s
}

func TestRevokeNode(t *testing.T) {
	s := nodeFixture(t)
	tests := []struct {
		name   string
		node   string
		reason int
		want   error
		serial []int64
	}{
		{name: "empty node", node: "", reason: 1, want: ErrInvalid},
		{name: "bad reason", node: nodeA, reason: 11, want: ErrInvalid},
		{name: "node A", node: nodeA, reason: 1, serial: []int64{1, 2}},
		{name: "node A again", node: nodeA, reason: 1, serial: nil},
		{name: "unknown node", node: "spiffe://example.org/none", reason: 1, serial: nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := s.RevokeNode(tc.node, tc.reason, t0.Add(time.Minute))
			wantErr(t, err, tc.want)
			var serials []int64
			for _, r := range got {
				serials = append(serials, r.Serial.Int64())
				if r.Status != CertRevoked || r.Reason != tc.reason {
					t.Errorf("returned record %+v not revoked", r)
				}
			}
			if !reflect.DeepEqual(serials, tc.serial) {
				t.Fatalf("revoked %v, want %v", serials, tc.serial)
			}
		})
	}
	for serial, want := range map[int64]CertStatus{1: CertRevoked, 2: CertRevoked, 3: CertRevoked, 4: CertValid, 5: CertValid, 6: CertValid} {
		r, err := s.Cert(big.NewInt(serial))
		if err != nil || r.Status != want {
			t.Errorf("serial %d: status %v, %v; want %v", serial, r.Status, err, want)
		}
	}
	if last, _ := s.LastRevocationSeq(); last != 3 {
		t.Errorf("LastRevocationSeq = %d, want 3", last)
	}
}

func TestForEachOfSubject(t *testing.T) {
	s := nodeFixture(t)
	tests := []struct {
		name   string
		id     string
		want   error
		serial []int64
	}{
		{name: "node and its workloads, revoked included", id: nodeA, serial: []int64{1, 2, 3}},
		{name: "workload ID", id: "spiffe://example.org/c", serial: []int64{4}},
		{name: "unknown", id: "spiffe://example.org/none"},
		{name: "empty", id: "", want: ErrInvalid},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var serials []int64
			err := s.ForEachOfSubject(tc.id, t0.Add(time.Minute), func(r CertRecord) error {
				serials = append(serials, r.Serial.Int64())
				return nil
			})
			wantErr(t, err, tc.want)
			if !reflect.DeepEqual(serials, tc.serial) {
				t.Fatalf("listed %v, want %v", serials, tc.serial)
			}
		})
	}
}

func TestForEachRevokedAndLog(t *testing.T) {
	s := openTest(t)
	var recs []CertRecord
	for i := int64(1); i <= 20; i++ {
		r := svid(i*1000003, "spiffe://example.org/w", nodeA)
		if i%2 == 0 {
			r.IssuerKeyID = issuerB
		}
		recs = append(recs, r)
	}
	mustRecord(t, s, recs...)
	// Revoke in descending serial order so log order differs from serial order.
	for i := len(recs) - 1; i >= 0; i-- {
		if i%3 == 0 {
			if _, err := s.Revoke(recs[i].Serial, 1, t0); err != nil {
				t.Fatal(err)
			}
		}
	}
	t.Run("per issuer", func(t *testing.T) {
		for _, issuer := range []string{issuerA, issuerB, "ffff"} {
			var got []*big.Int
			err := s.ForEachRevoked(issuer, func(r CertRecord) error {
				if r.IssuerKeyID != issuer || r.Status != CertRevoked {
					t.Errorf("record %+v under issuer %s", r, issuer)
				}
				got = append(got, r.Serial)
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			var want []*big.Int
			for i, r := range recs {
				if i%3 == 0 && r.IssuerKeyID == issuer {
					want = append(want, r.Serial)
				}
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("issuer %s: revoked %v, want %v", issuer, got, want)
			}
		}
	})
	t.Run("bad input", func(t *testing.T) {
		wantErr(t, s.ForEachRevoked("", func(CertRecord) error { return nil }), ErrInvalid)
		wantErr(t, s.ForEachRevoked(issuerA, nil), ErrInvalid)
		wantErr(t, s.ForEachCert(nil), ErrInvalid)
	})
	t.Run("callback error stops", func(t *testing.T) {
		stop := errors.New("stop")
		n := 0
		err := s.ForEachRevoked(issuerA, func(CertRecord) error { n++; return stop })
		if !errors.Is(err, stop) || n != 1 {
			t.Fatalf("err %v after %d calls", err, n)
		}
	})
	t.Run("all certs in serial order", func(t *testing.T) {
		var prev *big.Int
		n := 0
		err := s.ForEachCert(func(r CertRecord) error {
			if prev != nil && prev.Cmp(r.Serial) >= 0 {
				t.Fatalf("order: %v after %v", r.Serial, prev)
			}
			prev = r.Serial
			n++
			return nil
		})
		if err != nil || n != len(recs) {
			t.Fatalf("ForEachCert: %d records, %v", n, err)
		}
	})
	t.Run("log", func(t *testing.T) {
		tests := []struct {
			name  string
			since uint64
			limit int
			want  []uint64
			err   error
		}{
			{"from start", 0, 100, []uint64{1, 2, 3, 4, 5, 6, 7}, nil},
			{"paged", 2, 3, []uint64{3, 4, 5}, nil},
			{"tail", 7, 10, nil, nil},
			{"beyond", 1 << 63, 10, nil, nil},
			{"max", ^uint64(0), 10, nil, nil},
			{"zero limit", 0, 0, nil, ErrInvalid},
			{"huge limit", 0, MaxRevocationsPage + 1, nil, ErrInvalid},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				got, err := s.RevocationsSince(tc.since, tc.limit)
				wantErr(t, err, tc.err)
				var seqs []uint64
				for _, r := range got {
					seqs = append(seqs, r.RevokeSeq)
				}
				if !reflect.DeepEqual(seqs, tc.want) {
					t.Fatalf("seqs %v, want %v", seqs, tc.want)
				}
			})
		}
		first, _ := s.RevocationsSince(0, 1)
		if first[0].Serial.Cmp(recs[18].Serial) != 0 {
			t.Errorf("first revocation is %v, want %v (log order is revocation order)", first[0].Serial, recs[18].Serial)
		}
	})
}

// Concurrent issuance and revocation: every revocation lands exactly once
// and counters, indexes and log agree.
func TestConcurrentRecordRevoke(t *testing.T) {
	s := openTest(t)
	const workers, per = 8, 60
	var wg sync.WaitGroup
	errs := make(chan error, workers*per*2)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range per {
				r := svid(int64(w*per+i+1), "spiffe://example.org/w", nodeA)
				if err := s.RecordIssued(r); err != nil {
					errs <- err
					continue
				}
				if i%2 == 0 {
					if _, err := s.Revoke(r.Serial, 1, t0); err != nil {
						errs <- err
					}
				}
			}
		}()
	}
	// A node revocation racing with issuance must not fail or double-revoke.
	wg.Add(1)
	var nodeRevoked int
	go func() {
		defer wg.Done()
		time.Sleep(5 * time.Millisecond)
		got, err := s.RevokeNode(nodeA, 9, t0.Add(time.Minute))
		if err != nil {
			errs <- err
		}
		nodeRevoked = len(got)
	}()
	wg.Wait()
	close(errs)
	for err := range errs {
		if !errors.Is(err, ErrAlreadyRevoked) {
			t.Fatal(err)
		}
	}
	st := stats(t, s)
	var revoked uint64
	if err := s.ForEachRevoked(issuerA, func(CertRecord) error { revoked++; return nil }); err != nil {
		t.Fatal(err)
	}
	last, _ := s.LastRevocationSeq()
	if st.Certs != workers*per || st.Revoked != revoked || last != revoked {
		t.Fatalf("stats %+v, revoked index %d, last seq %d (node revoked %d)", st, revoked, last, nodeRevoked)
	}
	log, err := s.RevocationsSince(0, MaxRevocationsPage)
	if err != nil || uint64(len(log)) != revoked {
		t.Fatalf("log has %d entries, %v; want %d", len(log), err, revoked)
	}
	for i, r := range log {
		if r.RevokeSeq != uint64(i+1) {
			t.Fatalf("log gap at %d: seq %d", i, r.RevokeSeq)
		}
	}
}

func TestForEachUnexpired(t *testing.T) {
	s := openTest(t)
	// NotAfter spread around t0, recorded out of order.
	offsets := []time.Duration{3 * time.Hour, -time.Hour, 30 * time.Minute, time.Second, 0, -time.Second, 2 * time.Hour, 500 * time.Millisecond}
	for i, off := range offsets {
		r := svid(int64(100-i), "spiffe://example.org/w", nodeA)
		r.NotBefore, r.NotAfter = t0.Add(-4*time.Hour), t0.Add(off)
		mustRecord(t, s, r)
	}
	if _, err := s.Revoke(big.NewInt(100), 1, t0); err != nil { // NotAfter t0+3h
		t.Fatal(err)
	}
	tests := []struct {
		name string
		at   time.Time
		want []time.Duration // NotAfter offsets, in order
	}{
		{"at t0", t0, []time.Duration{500 * time.Millisecond, time.Second, 30 * time.Minute, 2 * time.Hour, 3 * time.Hour}},
		{"before all", t0.Add(-24 * time.Hour), []time.Duration{-time.Hour, -time.Second, 0, 500 * time.Millisecond, time.Second, 30 * time.Minute, 2 * time.Hour, 3 * time.Hour}},
		{"after all", t0.Add(24 * time.Hour), nil},
		{"exactly at an expiry", t0.Add(2 * time.Hour), []time.Duration{3 * time.Hour}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var got []time.Duration
			err := s.ForEachUnexpired(tc.at, func(r CertRecord) error {
				got = append(got, r.NotAfter.Sub(t0))
				if r.NotAfter.Equal(t0.Add(3*time.Hour)) && r.Status != CertRevoked {
					t.Errorf("revoked record %v reported %v", r.Serial, r.Status)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("NotAfter offsets %v, want %v", got, tc.want)
			}
		})
	}
	wantErr(t, s.ForEachUnexpired(t0, nil), ErrInvalid)
}
