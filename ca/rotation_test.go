package ca_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/palisade-id/palisade/ca"
	"github.com/palisade-id/palisade/ca/keystore/memkeys"
	"github.com/palisade-id/palisade/ca/store"
	"github.com/palisade-id/palisade/test/memca"
)

// faultyStore fails the intermediate writes whose error is set, before
// anything is written, as a full disk would.
type faultyStore struct {
	*store.Store
	putErr, activateErr error
	putWrites           bool // putErr comes after the write (a failed final fdatasync)
}

func (s *faultyStore) PutIntermediate(i store.Intermediate) error {
	if s.putErr != nil && !s.putWrites {
		return s.putErr
	}
	if err := s.Store.PutIntermediate(i); err != nil {
		return err
	}
	return s.putErr
}

func (s *faultyStore) ActivateIntermediate(keyID string, at time.Time) error {
	if s.activateErr != nil {
		return s.activateErr
	}
	return s.Store.ActivateIntermediate(keyID, at)
}

// slots returns the store's intermediates as "key ID slot".
func slots(t *testing.T, st ca.Store) []string {
	t.Helper()
	recs, err := st.Intermediates()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, r := range recs {
		out = append(out, r.KeyID+" "+r.Slot)
	}
	slices.Sort(out)
	return out
}

func issuerIDs(c *ca.CA) []string {
	var out []string
	for _, is := range c.Issuers() {
		out = append(out, is.KeyID+" "+is.Slot)
	}
	return out
}

// A rotation step the audit log or the store refuses changes neither the
// store, the HSM nor the running CA; the audit record always comes first,
// so no step happens unrecorded, and the retry records it exactly once.
func TestRotationStepRefused(t *testing.T) {
	errDisk := errors.New("no space left on device")
	for _, tt := range []struct {
		name     string
		activate bool // fail the activation (after a clean prepare), not the prepare
		audit    bool // fail the audit sink, else the store
		kind     string
		attempts int // records of kind the refused step leaves
	}{
		{name: "prepare, audit fails", audit: true, kind: "intermediate.prepared"},
		{name: "prepare, store fails", kind: "intermediate.prepared", attempts: 1},
		{name: "activate, audit fails", activate: true, audit: true, kind: "intermediate.activated"},
		{name: "activate, store fails", activate: true, kind: "intermediate.activated", attempts: 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			keys := memkeys.New()
			st := &faultyStore{Store: openCeremonyStore(t)}
			a := &memca.Recorder{}
			c, at := rotatingCA(t, keys, st, a)
			*at = at.Add(7 * time.Hour) // past half-life: prepare
			if tt.activate {
				if ev, err := c.Rotate(context.Background()); err != nil || ev.Prepared == "" {
					t.Fatalf("prepare: %+v %v", ev, err)
				}
				*at = at.Add(4 * time.Hour) // past 5/6: activate
			}
			storeBefore, issuersBefore, keysBefore := slots(t, st), issuerIDs(c), slices.Sorted(slices.Values(keys.Labels()))

			switch {
			case tt.audit:
				a.Fail(errDisk)
			case tt.activate:
				st.activateErr = errDisk
			default:
				st.putErr = errDisk
			}
			ev, err := c.Rotate(context.Background())
			if !errors.Is(err, errDisk) || ev.Changed() {
				t.Fatalf("refused Rotate: %+v %v, want no change and %v", ev, err, errDisk)
			}
			if got := slots(t, st); !slices.Equal(got, storeBefore) {
				t.Fatalf("store after the refused step: %v, want %v", got, storeBefore)
			}
			if got := issuerIDs(c); !slices.Equal(got, issuersBefore) {
				t.Fatalf("issuers after the refused step: %v, want %v", got, issuersBefore)
			}
			if got := slices.Sorted(slices.Values(keys.Labels())); !slices.Equal(got, keysBefore) {
				t.Fatalf("HSM keys after the refused step: %v, want %v", got, keysBefore)
			}
			if n := a.Count(tt.kind); n != tt.attempts {
				t.Fatalf("%d %s records after the refused step, want %d", n, tt.kind, tt.attempts)
			}

			a.Fail(nil)
			st.putErr, st.activateErr = nil, nil
			if ev, err = c.Rotate(context.Background()); err != nil {
				t.Fatalf("Rotate after the fault was removed: %v", err)
			}
			done := ev.Prepared
			if tt.activate {
				done = ev.Activated
			}
			if done == "" {
				t.Fatalf("Rotate after the fault was removed did not %s: %+v", tt.kind, ev)
			}
			recs := a.OfKind(tt.kind)
			if len(recs) != tt.attempts+1 {
				t.Fatalf("%d %s records after the retry, want exactly one more than %d", len(recs), tt.kind, tt.attempts)
			}
			if kid := recs[len(recs)-1].Data.(map[string]any)["key_id"]; kid != done {
				t.Fatalf("%s record names %v, want %s", tt.kind, kid, done)
			}
			if got := slots(t, st); slices.Equal(got, storeBefore) {
				t.Fatalf("retry left the store unchanged: %v", got)
			}
		})
	}
}

// A prepared generation the store reads back despite reporting an error
// names its keys: they stay, and the CA follows the store.
func TestRotationPrepareWrittenDespiteError(t *testing.T) {
	keys := memkeys.New()
	errSync := errors.New("fdatasync: input/output error")
	st := &faultyStore{Store: openCeremonyStore(t)}
	c, at := rotatingCA(t, keys, st, &memca.Recorder{})
	*at = at.Add(7 * time.Hour)
	st.putErr, st.putWrites = errSync, true
	if _, err := c.Rotate(context.Background()); !errors.Is(err, errSync) {
		t.Fatalf("Rotate: %v, want %v", err, errSync)
	}
	recs, err := st.Intermediates()
	if err != nil {
		t.Fatal(err)
	}
	var next *store.Intermediate
	for i := range recs {
		if recs[i].Slot == store.SlotNext {
			next = &recs[i]
		}
	}
	if next == nil {
		t.Fatalf("store holds no next generation: %+v", recs)
	}
	if _, err := keys.Signer(next.KeyLabel); err != nil {
		t.Fatalf("key of the stored next generation: %v", err)
	}
	if got := issuerIDs(c); len(got) != 2 {
		t.Fatalf("CA issuers %v, want active and next", got)
	}
}

// rotatingCA runs the ceremony (12 h intermediates) on keys and st and
// loads the CA auditing to a, on a clock the test moves through at.
func rotatingCA(t *testing.T, keys ca.CeremonyKeys, st ca.Store, a ca.Auditor) (*ca.CA, *time.Time) {
	t.Helper()
	cfg := ca.Config{TrustDomain: td, IntermediateTTL: 12 * time.Hour}
	at := new(time.Time)
	*at = time.Now()
	now := func() time.Time { return *at }
	if _, err := ca.Ceremony(context.Background(), cfg, keys, st, "test", auditTo(&memca.Recorder{}), now); err != nil {
		t.Fatal(err)
	}
	c, err := ca.Load(cfg, ca.Options{Keys: keys, Store: st, Audit: a, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	return c, at
}
