package cawire_test

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/palisade-id/palisade/ca/store"
	"github.com/palisade-id/palisade/crl"
	"github.com/palisade-id/palisade/crl/castore"
	"github.com/palisade-id/palisade/crl/cawire"
	"github.com/palisade-id/palisade/test/memca"
)

// TestResponderCertInCAStore: wired as palisade-server does, the delegated
// OCSP responder certificate the intermediate signs is in the CA's store
// (KindOCSPSigner, so its serial can never be issued again) and in the
// audit log, before the responder is ready.
func TestResponderCertInCAStore(t *testing.T) {
	f := memca.New(t, "example.org", memca.Discard{}, nil)
	c, st, keys, dir := f.CA, f.Store, f.Keys, t.TempDir()
	audit := &memca.Recorder{}
	svc, err := crl.New(crl.Config{DataDir: filepath.Join(dir, "crl")},
		crl.Options{Store: castore.New(st), Audit: audit, Keys: keys, Issuers: cawire.Issuers(c)})
	if err != nil {
		t.Fatal(err)
	}
	runReady(t, svc)
	active, _ := c.ActiveIssuer()
	recs := audit.OfKind("ocsp-signer.issued")
	if len(recs) != 1 {
		t.Fatalf("%d ocsp-signer.issued audit records, want 1", len(recs))
	}
	data, _ := recs[0].Data.(map[string]any)
	serial, ok := data["serial"].(string)
	if !ok || data["issuer"] != active.KeyID {
		t.Fatalf("audit record %v", recs[0])
	}
	var found []store.CertRecord
	st.ForEachCert(func(r store.CertRecord) error {
		if r.Kind == store.KindOCSPSigner {
			found = append(found, r)
		}
		return nil
	})
	if len(found) != 1 || found[0].Serial.Text(16) != serial || found[0].IssuerKeyID != active.KeyID ||
		!found[0].NotAfter.Equal(data["not_after"].(time.Time)) {
		t.Fatalf("store holds responder certificates %+v, want serial %s of issuer %s", found, serial, active.KeyID)
	}
}
