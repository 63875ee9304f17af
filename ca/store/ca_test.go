package store

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"math/big"
	"path/filepath"
	"reflect"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// testCA signs test certificates under one root.
type testCA struct {
	root *x509.Certificate
	key  *ecdsa.PrivateKey

	mu     sync.Mutex
	serial int64
	inters map[string][]byte
}

var (
	testCAOnce sync.Once
	theTestCA  *testCA
)

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func newTestCA() *testCA {
	testCAOnce.Do(func() {
		key := must(ecdsa.GenerateKey(elliptic.P256(), rand.Reader))
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test root"},
			NotBefore: t0.Add(-time.Hour), NotAfter: t0.Add(10 * 365 * 24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
			KeyUsage: x509.KeyUsageCertSign}
		root := must(x509.ParseCertificate(must(x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key))))
		theTestCA = &testCA{root: root, key: key, serial: 1000, inters: map[string][]byte{}}
	})
	return theTestCA
}

// cert returns a certificate with serial (0: a fresh one) and validity,
// signed by the root.
func (c *testCA) cert(serial int64, isCA bool, nb, na time.Time) []byte {
	if serial == 0 {
		c.mu.Lock()
		c.serial++
		serial = c.serial
		c.mu.Unlock()
	}
	key := must(ecdsa.GenerateKey(elliptic.P256(), rand.Reader))
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "test"},
		NotBefore: nb, NotAfter: na, IsCA: isCA, BasicConstraintsValid: true}
	return must(x509.CreateCertificate(rand.Reader, tmpl, c.root, key.Public(), c.key))
}

func (c *testCA) keyID() string { return hex.EncodeToString(c.root.SubjectKeyId) }

func (c *testCA) meta() CAMeta {
	return CAMeta{TrustDomain: "example.org", RootCertDER: c.root.Raw, RootKeyURI: "pkcs11:object=root",
		AuditKeyURI: "pkcs11:object=audit", AuditCertDER: c.cert(2, false, t0, t0.Add(time.Hour)),
		KeyAlgorithm: "ec-p384", InitializedAt: t0}
}

func TestInitCA(t *testing.T) {
	good := newTestCA().meta()
	tests := []struct {
		name   string
		mutate func(*CAMeta)
		first  func(*Intermediate)
		want   error
	}{
		{name: "no trust domain", mutate: func(m *CAMeta) { m.TrustDomain = "" }, want: ErrInvalid},
		{name: "no root", mutate: func(m *CAMeta) { m.RootCertDER = nil }, want: ErrInvalid},
		{name: "root not a certificate", mutate: func(m *CAMeta) { m.RootCertDER = []byte{0x30, 1} }, want: ErrInvalid},
		{name: "no root key", mutate: func(m *CAMeta) { m.RootKeyURI = "" }, want: ErrInvalid},
		{name: "no time", mutate: func(m *CAMeta) { m.InitializedAt = time.Time{} }, want: ErrInvalid},
		{name: "first intermediate not active", first: func(i *Intermediate) { i.Slot = SlotNext }, want: ErrInvalid},
		{name: "first intermediate invalid", first: func(i *Intermediate) { i.CertDER = nil }, want: ErrInvalid},
		{name: "first intermediate reuses the root's serial", first: func(i *Intermediate) { i.CertDER = newTestCA().root.Raw }, want: ErrSerialExists},
		{name: "ok", want: nil},
		{name: "second init", mutate: func(m *CAMeta) { m.TrustDomain = "other.org" }, want: ErrAlreadyInitialized},
	}
	s := openTest(t)
	if _, err := s.CAMeta(); err == nil {
		t.Fatal("CAMeta on a new store succeeded")
	} else {
		wantErr(t, err, ErrNotInitialized)
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := good
			if tc.mutate != nil {
				tc.mutate(&m)
			}
			first := inter("aa", SlotActive, t0)
			if tc.first != nil {
				tc.first(&first)
			}
			wantErr(t, s.InitCA(m, first), tc.want)
			got, err := s.CAMeta()
			inters, ierr := s.Intermediates()
			if ierr != nil {
				t.Fatal(ierr)
			}
			if tc.name == "ok" || tc.name == "second init" {
				if err != nil || !reflect.DeepEqual(got, good) {
					t.Fatalf("CAMeta = %+v, %v; want %+v", got, err, good)
				}
				if len(inters) != 1 || inters[0].KeyID != "aa" || inters[0].Slot != SlotActive {
					t.Fatalf("intermediates = %+v, want aa active", inters)
				}
			} else {
				// A refused init leaves nothing a retry would trip over.
				wantErr(t, err, ErrNotInitialized)
				if st := stats(t, s); len(inters) != 0 || st.CACerts != 0 {
					t.Fatalf("refused init left %d intermediates and %d CA certificates", len(inters), st.CACerts)
				}
			}
		})
	}
}

// inter is the intermediate id; the same id has the same certificate.
func inter(id, slot string, nb time.Time) Intermediate {
	c := newTestCA()
	c.mu.Lock()
	der, ok := c.inters[id]
	c.mu.Unlock()
	if !ok {
		der = c.cert(0, true, nb, nb.Add(24*time.Hour))
		c.mu.Lock()
		c.inters[id] = der
		c.mu.Unlock()
	}
	return Intermediate{KeyID: id, KeyLabel: "inter-" + id, KeyURI: "pkcs11:object=inter-" + id, CertDER: der, Slot: slot, NotBefore: nb, NotAfter: nb.Add(24 * time.Hour), CreatedAt: nb}
}

func TestIntermediates(t *testing.T) {
	s := openTest(t)
	type step struct {
		name string
		run  func() error
		want error
	}
	steps := []step{
		{"bad key id", func() error { return s.PutIntermediate(inter("XYZ", SlotActive, t0)) }, ErrInvalid},
		{"empty key id", func() error { return s.PutIntermediate(inter("", SlotActive, t0)) }, ErrInvalid},
		{"bad slot", func() error { return s.PutIntermediate(inter("aa", "spare", t0)) }, ErrInvalid},
		{"no cert", func() error { i := inter("aa", SlotActive, t0); i.CertDER = nil; return s.PutIntermediate(i) }, ErrInvalid},
		{"bad validity", func() error { i := inter("aa", SlotActive, t0); i.NotAfter = t0; return s.PutIntermediate(i) }, ErrInvalid},
		{"put active", func() error { return s.PutIntermediate(inter("aa", SlotActive, t0)) }, nil},
		{"second active", func() error { return s.PutIntermediate(inter("bb", SlotActive, t0.Add(time.Hour))) }, ErrSlotOccupied},
		{"put next", func() error { return s.PutIntermediate(inter("bb", SlotNext, t0.Add(time.Hour))) }, nil},
		{"second next", func() error { return s.PutIntermediate(inter("cc", SlotNext, t0.Add(2*time.Hour))) }, ErrSlotOccupied},
		{"activate unknown", func() error { return s.ActivateIntermediate("dd", t0) }, ErrIntermediateNotFound},
		{"activate zero time", func() error { return s.ActivateIntermediate("bb", time.Time{}) }, ErrInvalid},
		{"activate next", func() error { return s.ActivateIntermediate("bb", t0.Add(20*time.Hour)) }, nil},
		{"activate active again", func() error { return s.ActivateIntermediate("bb", t0.Add(21*time.Hour)) }, nil},
		{"activate retired", func() error { return s.ActivateIntermediate("aa", t0.Add(22*time.Hour)) }, ErrIntermediateRetired},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) { wantErr(t, st.run(), st.want) })
	}
	got, err := s.Intermediates()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].KeyID != "aa" || got[1].KeyID != "bb" {
		t.Fatalf("Intermediates = %+v", got)
	}
	if got[0].Slot != SlotRetired || got[1].Slot != SlotActive {
		t.Errorf("slots = %s, %s; want retired, active", got[0].Slot, got[1].Slot)
	}
	if !got[1].ActivatedAt.Equal(t0.Add(20 * time.Hour)) {
		t.Errorf("ActivatedAt = %s, want the first activation", got[1].ActivatedAt)
	}
	if got[1].KeyLabel != "inter-bb" || got[1].KeyURI != "pkcs11:object=inter-bb" {
		t.Errorf("round trip lost fields: %+v", got[1])
	}
	if n := stats(t, s).Intermediates; n != 2 {
		t.Errorf("Stats.Intermediates = %d", n)
	}
}

func TestCACertsRecorded(t *testing.T) {
	tca := newTestCA()
	path := filepath.Join(t.TempDir(), "ca.db")
	s, err := Open(path, Options{NoSync: true, ApplyInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = s.Close() }()
	m := tca.meta()
	audit, _ := x509.ParseCertificate(m.AuditCertDER)
	i1 := Intermediate{KeyID: "aa", KeyURI: "pkcs11:object=aa", Slot: SlotActive, NotBefore: t0, NotAfter: t0.Add(24 * time.Hour),
		CertDER: tca.cert(0, true, t0, t0.Add(24*time.Hour))}
	if err := s.InitCA(m, i1); err != nil {
		t.Fatal(err)
	}
	c1, _ := x509.ParseCertificate(i1.CertDER)
	for _, want := range []struct {
		serial *big.Int
		kind   string
		cert   *x509.Certificate
	}{
		{tca.root.SerialNumber, KindRoot, tca.root},
		{audit.SerialNumber, KindAuditSigner, audit},
		{c1.SerialNumber, KindIntermediate, c1},
	} {
		r, err := s.Cert(want.serial)
		if err != nil {
			t.Fatalf("%s serial %v not recorded: %v", want.kind, want.serial, err)
		}
		if r.Kind != want.kind || r.IssuerKeyID != tca.keyID() || r.Status != CertValid ||
			!r.NotAfter.Equal(want.cert.NotAfter) || r.SPIFFEID != "" || r.NodeID != "" {
			t.Fatalf("%s record %+v", want.kind, r)
		}
	}
	// Putting the same intermediate again (retiring it) records nothing new.
	i1.Slot = SlotRetired
	if err := s.PutIntermediate(i1); err != nil {
		t.Fatalf("re-put: %v", err)
	}
	if st := stats(t, s); st.Certs != 0 || st.CACerts != 3 {
		t.Fatalf("Stats = %+v, want 0 issued and 3 CA certificates", st)
	}

	// Serials are unique across SVIDs and CA certificates, whichever came first.
	wantErr(t, s.RecordIssued(svid(c1.SerialNumber.Int64(), "spiffe://example.org/w", "")), ErrSerialExists)
	mustRecord(t, s, svid(77, "spiffe://example.org/w", nodeA)) // journaled, not applied yet
	i2 := Intermediate{KeyID: "bb", KeyURI: "pkcs11:object=bb", Slot: SlotNext, NotBefore: t0, NotAfter: t0.Add(24 * time.Hour),
		CertDER: tca.cert(77, true, t0, t0.Add(24*time.Hour))}
	wantErr(t, s.PutIntermediate(i2), ErrSerialExists)
	i2.CertDER = tca.cert(c1.SerialNumber.Int64(), true, t0, t0.Add(48*time.Hour))
	wantErr(t, s.PutIntermediate(i2), ErrSerialExists)
	if got, _ := s.Intermediates(); len(got) != 1 {
		t.Fatalf("a refused intermediate was stored: %+v", got)
	}
	mustRecord(t, s, svid(78, "spiffe://example.org/w", nodeA))
	again := i1
	again.Slot = SlotActive
	wantErr(t, s.InitCA(m, again), ErrAlreadyInitialized)

	// Revocation leaves CA certificates alone.
	_, err = s.Revoke(c1.SerialNumber, 1, t0)
	wantErr(t, err, ErrInvalid)
	if r, _ := s.Cert(c1.SerialNumber); r.Status != CertValid {
		t.Fatalf("intermediate revoked: %+v", r)
	}
	got, err := s.RevokeNode(nodeA, 1, t0)
	if err != nil || len(got) != 2 {
		t.Fatalf("RevokeNode = %d records, %v; want the 2 SVIDs", len(got), err)
	}
	if st := stats(t, s); st.Certs != 2 || st.CACerts != 3 || st.Revoked != 2 {
		t.Fatalf("Stats = %+v", st)
	}
	var kinds []string
	if err := s.ForEachRevoked(tca.keyID(), func(r CertRecord) error { kinds = append(kinds, r.Kind); return nil }); err != nil || len(kinds) != 0 {
		t.Fatalf("revoked under the root: %v %v", kinds, err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// The counters agree with a recount.
	s, err = Open(path, Options{NoSync: true, Verify: true})
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
}

func TestRecordCACerts(t *testing.T) {
	tca := newTestCA()
	path := filepath.Join(t.TempDir(), "ca.db")
	s, err := Open(path, Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.RecordCACerts()
	wantErr(t, err, ErrNotInitialized)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// A store as an earlier release wrote it: metadata and intermediates,
	// no certs/ records for them.
	m := tca.meta()
	i1 := inter("c1", SlotRetired, t0)
	i2 := inter("c2", SlotActive, t0.Add(time.Hour))
	rawUpdate(t, path, func(tx *bolt.Tx) error {
		v, _ := json.Marshal(m)
		if err := tx.Bucket(bucketMeta).Put(keyCA, v); err != nil {
			return err
		}
		for _, i := range []Intermediate{i1, i2} {
			v, _ := json.Marshal(i)
			if err := tx.Bucket(bucketIntermediates).Put([]byte(i.KeyID), v); err != nil {
				return err
			}
		}
		return nil
	})
	s, err = Open(path, Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = s.Close() }()
	if n, err := s.RecordCACerts(); err != nil || n != 4 {
		t.Fatalf("RecordCACerts = %d, %v; want 4", n, err)
	}
	if n, err := s.RecordCACerts(); err != nil || n != 0 {
		t.Fatalf("second RecordCACerts = %d, %v; want 0", n, err)
	}
	c2, _ := x509.ParseCertificate(i2.CertDER)
	if r, err := s.Cert(c2.SerialNumber); err != nil || r.Kind != KindIntermediate {
		t.Fatalf("intermediate record %+v %v", r, err)
	}
	if st := stats(t, s); st.CACerts != 4 || st.Certs != 0 {
		t.Fatalf("Stats = %+v", st)
	}
}

func TestBundleSequence(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ca.db")
	s, err := Open(path, Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	a, b := []byte("contents A"), []byte("contents B")
	steps := []struct {
		contents []byte
		first    uint64
		want     uint64
	}{
		{a, 4, 4}, {a, 9, 4}, {b, 0, 5}, {b, 0, 5}, {a, 0, 6},
	}
	for i, st := range steps {
		if got, err := s.BundleSequence(st.contents, st.first); err != nil || got != st.want {
			t.Fatalf("step %d: %d, %v; want %d", i, got, err, st.want)
		}
	}
	_, err = s.BundleSequence(nil, 0)
	wantErr(t, err, ErrInvalid)
	_, err = s.BundleSequence(make([]byte, 65), 0)
	wantErr(t, err, ErrInvalid)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = Open(path, Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = s.Close() }()
	if got, err := s.BundleSequence(a, 0); err != nil || got != 6 {
		t.Fatalf("after reopen, same contents: %d, %v; want 6", got, err)
	}
	if got, err := s.BundleSequence(b, 0); err != nil || got != 7 {
		t.Fatalf("after reopen, new contents: %d, %v; want 7", got, err)
	}
	fresh := openTest(t)
	if got, err := fresh.BundleSequence(a, 0); err != nil || got != 1 {
		t.Fatalf("fresh store: %d, %v; want 1", got, err)
	}
}
