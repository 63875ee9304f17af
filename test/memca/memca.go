// Package memca runs the real CA (package ca) on in-memory keys and a bbolt
// store in t.TempDir(), for unit tests of the CA's consumers: the admin and
// node APIs, revocation wiring. Tests of the HSM path use SoftHSM2 instead.
package memca

import (
	"context"
	"crypto"
	"crypto/x509"
	"path/filepath"
	"testing"

	"github.com/palisade-id/palisade/ca"
	"github.com/palisade-id/palisade/ca/keystore/memkeys"
	"github.com/palisade-id/palisade/ca/store"
)

// Fixture is an initialised CA and what it runs on.
type Fixture struct {
	CA     *ca.CA
	Store  *store.Store
	Keys   *memkeys.Store
	Config ca.Config
}

// Discard is an audit sink that keeps nothing.
type Discard struct{}

// Append implements ca.Auditor.
func (Discard) Append(context.Context, string, string, any) error { return nil }

// New runs the key ceremony for trustDomain and loads the CA with audit as
// its audit sink (ceremony records included); edit, if given, adjusts the
// options before the load (e.g. CRL and OCSP URLs).
func New(t testing.TB, trustDomain string, audit ca.Auditor, edit func(*ca.Options)) *Fixture {
	t.Helper()
	st, err := store.Open(filepath.Join(t.TempDir(), "ca.db"), store.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	f := &Fixture{Store: st, Keys: memkeys.New(), Config: ca.Config{TrustDomain: trustDomain}}
	if _, err := ca.Ceremony(context.Background(), f.Config, f.Keys, st, "test", func(crypto.Signer, *x509.Certificate) (ca.Auditor, error) {
		return audit, nil
	}, nil); err != nil {
		t.Fatal(err)
	}
	opts := ca.Options{Keys: f.Keys, Store: st, Audit: audit}
	if edit != nil {
		edit(&opts)
	}
	if f.CA, err = ca.Load(f.Config, opts); err != nil {
		t.Fatal(err)
	}
	return f
}
