package store_test

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/palisade-id/palisade/attestor"
	"github.com/palisade-id/palisade/attestor/store"
	"github.com/palisade-id/palisade/test/crashtest"
)

// TestKill9 kills a writer mid-stream: every update the child reported as
// committed is on disk, and the file opens cleanly.
func TestKill9(t *testing.T) {
	if path, ok := crashtest.Child("ATTESTOR_STORE"); ok {
		killChild(path)
		return
	}
	path := filepath.Join(t.TempDir(), "a.db")
	last := 0
	for _, line := range crashtest.Kill(t, crashtest.Run{Name: "ATTESTOR_STORE", Arg: path, Test: "^TestKill9$", Acks: 50}) {
		n, err := strconv.Atoi(line)
		if err != nil {
			t.Fatalf("child printed %q", line)
		}
		last = max(last, n)
	}
	db, err := store.Open(path)
	if err != nil {
		t.Fatalf("reopen after kill -9: %v", err)
	}
	defer db.Close()
	rec, err := db.Node(context.Background(), "n")
	if err != nil || rec.Attestations < uint64(last) {
		t.Fatalf("after kill -9: %+v, %v; child had committed %d", rec, err, last)
	}
	entries, err := db.ManifestEntries(context.Background())
	if err != nil || len(entries) < last {
		t.Fatalf("%d manifest entries (%v), child had committed %d", len(entries), err, last)
	}
}

// killChild commits a node update and a manifest entry per step and prints
// the step once both returned.
func killChild(path string) {
	db, err := store.Open(path)
	if err != nil {
		crashtest.Fail("open", err)
	}
	ctx := context.Background()
	for i := 1; ; i++ {
		if err := db.UpdateNode(ctx, "n", func(r *attestor.NodeRecord, _ bool) error { r.Attestations = uint64(i); return nil }); err != nil {
			crashtest.Fail("update node", err)
		}
		if err := db.PutManifestEntry(ctx, attestor.ManifestEntry{ID: fmt.Sprintf("ek:%d", i), Kind: attestor.KindEKHash}); err != nil {
			crashtest.Fail("put manifest entry", err)
		}
		fmt.Println(i)
	}
}
