package store_test

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/palisade-id/palisade/attestor"
	"github.com/palisade-id/palisade/attestor/store"
)

func TestStore(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "a.db")
	db, err := store.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	e := attestor.ManifestEntry{ID: "ek:aa", Kind: attestor.KindEKHash, EKHash: "aa", Class: "worker"}
	if err := db.PutManifestEntry(ctx, e); err != nil {
		t.Fatal(err)
	}
	if err := db.DeleteManifestEntry(ctx, "ek:bb"); !errors.Is(err, attestor.ErrNotFound) {
		t.Fatalf("delete missing: %v", err)
	}
	if err := db.PutPolicy(ctx, 2, []byte("v2")); err != nil {
		t.Fatal(err)
	}
	for _, v := range []uint64{1, 2} {
		if err := db.PutPolicy(ctx, v, []byte("old")); !errors.Is(err, attestor.ErrPolicyVersion) {
			t.Fatalf("policy version %d: err = %v", v, err)
		}
	}
	now := time.Now().UTC().Truncate(time.Second)
	if err := db.UpdateNode(ctx, "n1", func(r *attestor.NodeRecord, exists bool) error {
		if exists {
			t.Fatal("new record exists")
		}
		r.FirstAttested, r.Attestations = now, 1
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// An aborted update changes nothing.
	boom := errors.New("abort")
	if err := db.UpdateNode(ctx, "n1", func(r *attestor.NodeRecord, _ bool) error {
		r.Attestations = 99
		return boom
	}); !errors.Is(err, boom) {
		t.Fatalf("abort: %v", err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	// Everything survives a reopen.
	db, err = store.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	entries, _ := db.ManifestEntries(ctx)
	if len(entries) != 1 || entries[0].ID != e.ID || entries[0].Class != e.Class {
		t.Fatalf("manifest %+v", entries)
	}
	if p, _ := db.Policy(ctx); string(p) != "v2" {
		t.Fatalf("policy %q", p)
	}
	rec, err := db.Node(ctx, "n1")
	if err != nil || rec.Attestations != 1 || !rec.FirstAttested.Equal(now) || rec.ID != "n1" {
		t.Fatalf("node %+v, %v", rec, err)
	}
	if _, err := db.Node(ctx, "n2"); !errors.Is(err, attestor.ErrNotFound) {
		t.Fatalf("missing node: %v", err)
	}
}
