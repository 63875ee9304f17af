package store

import (
	"reflect"
	"testing"
	"time"
)

func TestInitCA(t *testing.T) {
	good := CAMeta{TrustDomain: "example.org", RootCertDER: []byte{0x30, 1}, RootKeyURI: "pkcs11:object=root", KeyAlgorithm: "ec-p384", InitializedAt: t0}
	tests := []struct {
		name   string
		mutate func(*CAMeta)
		want   error
	}{
		{name: "no trust domain", mutate: func(m *CAMeta) { m.TrustDomain = "" }, want: ErrInvalid},
		{name: "no root", mutate: func(m *CAMeta) { m.RootCertDER = nil }, want: ErrInvalid},
		{name: "no root key", mutate: func(m *CAMeta) { m.RootKeyURI = "" }, want: ErrInvalid},
		{name: "no time", mutate: func(m *CAMeta) { m.InitializedAt = time.Time{} }, want: ErrInvalid},
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
			wantErr(t, s.InitCA(m), tc.want)
			got, err := s.CAMeta()
			if tc.name == "ok" || tc.name == "second init" {
				if err != nil || !reflect.DeepEqual(got, good) {
					t.Fatalf("CAMeta = %+v, %v; want %+v", got, err, good)
				}
			} else {
				wantErr(t, err, ErrNotInitialized)
			}
		})
	}
}

func inter(id, slot string, nb time.Time) Intermediate {
	return Intermediate{KeyID: id, KeyLabel: "inter-" + id, KeyURI: "pkcs11:object=inter-" + id, CertDER: []byte{0x30, 2}, Slot: slot, NotBefore: nb, NotAfter: nb.Add(24 * time.Hour), CreatedAt: nb}
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
