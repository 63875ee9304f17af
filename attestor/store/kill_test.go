package store_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"

	"github.com/palisade-id/palisade/attestor"
	"github.com/palisade-id/palisade/attestor/store"
)

const childEnv = "ATTESTOR_STORE_KILL_CHILD"

// TestKill9 kills a writer mid-stream: every update the child reported as
// committed is on disk, and the file opens cleanly.
func TestKill9(t *testing.T) {
	if path := os.Getenv(childEnv); path != "" {
		killChild(path)
		return
	}
	path := filepath.Join(t.TempDir(), "a.db")
	cmd := exec.Command(os.Args[0], "-test.run=^TestKill9$")
	cmd.Env = append(os.Environ(), childEnv+"="+path)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(out)
	last := 0
	for sc.Scan() {
		if n, err := strconv.Atoi(sc.Text()); err == nil {
			last = n
		}
		if last >= 50 {
			break
		}
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	_ = cmd.Wait()
	if last < 50 {
		t.Fatalf("child committed only %d updates", last)
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

func killChild(path string) {
	db, err := store.Open(path)
	if err != nil {
		fmt.Println("open:", err)
		os.Exit(1)
	}
	ctx := context.Background()
	for i := 1; ; i++ {
		_ = db.UpdateNode(ctx, "n", func(r *attestor.NodeRecord, _ bool) error { r.Attestations = uint64(i); return nil })
		_ = db.PutManifestEntry(ctx, attestor.ManifestEntry{ID: fmt.Sprintf("ek:%d", i), Kind: attestor.KindEKHash})
		fmt.Println(i)
	}
}
