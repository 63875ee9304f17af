package store

import (
	"math/big"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

func TestDbgSubj(t *testing.T) {
	s := openTest(t)
	mustRecord(t, s, svid(2, "spiffe://example.org/a", nodeA))
	s.flushJournal()
	s.view("x", func(tx *bolt.Tx) error {
		tx.Bucket(bucketCertSubject).ForEach(func(k, v []byte) error { t.Logf("subj %q", k); return nil })
		tx.Bucket(bucketCerts).ForEach(func(k, v []byte) error { t.Logf("cert %x", k); return nil })
		return nil
	})
	r, err := s.Cert(big.NewInt(2)); t.Logf("%+v %v", r, err)
	got, err := s.RevokeNode(nodeA, 1, t0.Add(time.Minute))
	t.Log(got, err)
}
