package castore

import (
	"errors"
	"math/big"
	"path/filepath"
	"testing"
	"time"

	"github.com/palisade-id/palisade/ca/store"
	"github.com/palisade-id/palisade/crl"
)

func TestAdapter(t *testing.T) {
	st, err := store.Open(filepath.Join(t.TempDir(), "ca.db"), store.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	now := time.Now().UTC().Truncate(time.Second)
	rec := func(n int64, node string, notAfter time.Time) store.CertRecord {
		return store.CertRecord{Serial: big.NewInt(n), SPIFFEID: "spiffe://example.org/w", NodeID: node,
			IssuerKeyID: "abcd", Kind: store.KindX509SVID, NotBefore: now.Add(-2 * time.Hour), NotAfter: notAfter}
	}
	for _, r := range []store.CertRecord{
		rec(1, "spiffe://example.org/node/a", now.Add(time.Hour)),
		rec(2, "spiffe://example.org/node/a", now.Add(time.Hour)),
		rec(3, "spiffe://example.org/node/b", now.Add(time.Hour)),
		rec(4, "", now.Add(-time.Hour)),
	} {
		if err := st.RecordIssued(r); err != nil {
			t.Fatal(err)
		}
	}
	// The CA's own certificates: on no CRL, never revocable, so not found
	// (the revocation service then gets the store's refusal before it
	// audits anything).
	if err := st.RecordIssued(store.CertRecord{Serial: big.NewInt(77), IssuerKeyID: "ef01", Kind: store.KindIntermediate,
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour), NodeID: "spiffe://example.org/node/a"}); err != nil {
		t.Fatal(err)
	}
	s := New(st)
	for _, sn := range []int64{99, 77} {
		if _, found, err := s.Status(big.NewInt(sn)); found || err != nil {
			t.Fatalf("status of %d: %v %v, want not found", sn, found, err)
		}
	}
	if _, _, err := s.Revoke(big.NewInt(77), 1, now); !errors.Is(err, store.ErrInvalid) {
		t.Fatalf("revoke the CA's own certificate: %v, want ErrInvalid", err)
	}
	var ofNode []int64
	if err := s.ForEachOfNode("spiffe://example.org/node/a", now, func(c crl.CertInfo) error {
		ofNode = append(ofNode, c.Serial.Int64())
		return nil
	}); err != nil || len(ofNode) != 2 || ofNode[0] != 1 || ofNode[1] != 2 {
		t.Fatalf("certificates of node a: %v %v, want [1 2]", ofNode, err)
	}
	ci, changed, err := s.Revoke(big.NewInt(3), 1, now)
	if err != nil || !changed || !ci.Revoked || !ci.RevokedAt.Equal(now) {
		t.Fatalf("revoke: %+v %v", ci, err)
	}
	again, changed, err := s.Revoke(big.NewInt(3), 4, now.Add(time.Minute))
	if err != nil || changed || !again.RevokedAt.Equal(now) || again.Reason != 1 {
		t.Fatalf("second revoke: %+v %v", again, err)
	}
	if _, _, err := s.Revoke(big.NewInt(99), 1, now); !errors.Is(err, store.ErrCertNotFound) {
		t.Fatalf("unknown revoke: %v", err)
	}
	got, err := s.RevokeNode("spiffe://example.org/node/a", 9, now.Add(time.Second))
	if err != nil || len(got) != 2 {
		t.Fatalf("node: %d %v", len(got), err)
	}
	var all, since []int64
	s.ForEachRevoked("abcd", time.Time{}, func(c crl.CertInfo) error { all = append(all, c.Serial.Int64()); return nil })
	s.ForEachRevoked("abcd", now.Add(time.Second), func(c crl.CertInfo) error { since = append(since, c.Serial.Int64()); return nil })
	if len(all) != 3 || len(since) != 2 {
		t.Fatalf("revoked: all %v since %v", all, since)
	}
	var live []int64
	s.ForEachUnexpired(now, func(c crl.CertInfo) error { live = append(live, c.Serial.Int64()); return nil })
	if len(live) != 3 {
		t.Fatalf("unexpired: %v", live)
	}
}

func TestRecordResponderCert(t *testing.T) {
	st, err := store.Open(filepath.Join(t.TempDir(), "ca.db"), store.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	now := time.Now().UTC().Truncate(time.Second)
	s := New(st)
	rc := crl.ResponderCert{Serial: big.NewInt(7), IssuerKeyID: "abcd", NotBefore: now, NotAfter: now.Add(72 * time.Hour)}
	if err := s.RecordResponderCert(rc); err != nil {
		t.Fatal(err)
	}
	r, err := st.Cert(rc.Serial)
	if err != nil {
		t.Fatal(err)
	}
	if r.Kind != store.KindOCSPSigner || r.IssuerKeyID != "abcd" || !r.NotAfter.Equal(rc.NotAfter) || r.Status != store.CertValid {
		t.Fatalf("recorded %+v", r)
	}
	// Serials are unique across everything the CA signed.
	if err := st.RecordIssued(store.CertRecord{Serial: big.NewInt(8), SPIFFEID: "spiffe://example.org/w", IssuerKeyID: "abcd",
		Kind: store.KindX509SVID, NotBefore: now, NotAfter: now.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	for _, n := range []int64{7, 8} {
		rc.Serial = big.NewInt(n)
		if err := s.RecordResponderCert(rc); !errors.Is(err, crl.ErrSerialExists) || !errors.Is(err, store.ErrSerialExists) {
			t.Fatalf("serial %d recorded again: %v, want crl.ErrSerialExists", n, err)
		}
	}
	// Not an SVID: never pre-signed for OCSP.
	s.ForEachUnexpired(now, func(c crl.CertInfo) error {
		if c.Serial.Int64() == 7 {
			t.Error("responder certificate listed for pre-signing")
		}
		return nil
	})
}
