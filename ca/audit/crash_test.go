package audit

import (
	"bufio"
	"context"
	"crypto"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/palisade-id/palisade/test/crashtest"
)

// crashChild appends from several goroutines forever and prints each
// acknowledged seq and hash.
func crashChild(arg string) {
	path, keyHex, _ := strings.Cut(arg, "|")
	der, _ := hex.DecodeString(keyHex)
	key, err := x509.ParseECPrivateKey(der)
	if err != nil {
		crashtest.Fail("key", err)
	}
	l, err := Open(path, key, Options{CheckpointEvery: 50, SegmentBytes: 96 << 10})
	if err != nil {
		crashtest.Fail("open", err)
	}
	out := bufio.NewWriter(os.Stdout)
	var mu sync.Mutex
	for w := 0; w < 8; w++ {
		go func() {
			for i := 0; ; i++ {
				r, err := l.Append(context.Background(), "x509svid.issued", "worker:"+strconv.Itoa(w), map[string]int{"i": i})
				if err != nil {
					crashtest.Fail("append", err)
				}
				mu.Lock()
				fmt.Fprintf(out, "ack %d %s\n", r.Seq, r.Hash)
				out.Flush()
				mu.Unlock()
			}
		}()
	}
	select {}
}

// TestKill9 SIGKILLs an appending process three times, mid-stream, then
// checks the chain verifies and every acknowledged record is stored as
// acknowledged.
func TestKill9(t *testing.T) {
	if arg, ok := crashtest.Child("AUDIT"); ok {
		crashChild(arg)
		return
	}
	key := newKey(t, elliptic.P256())
	der, _ := x509.MarshalECPrivateKey(key)
	path := filepath.Join(t.TempDir(), "audit.log")
	acked := map[uint64]string{}
	for round := 0; round < 3; round++ {
		// Killed while other goroutines are inside Append.
		lines := crashtest.Kill(t, crashtest.Run{Name: "AUDIT", Arg: path + "|" + hex.EncodeToString(der),
			Test: "^TestKill9$", Acks: 300 + 500*round})
		for _, line := range lines {
			f := strings.Fields(line)
			if len(f) != 3 || f[0] != "ack" {
				t.Fatalf("child printed %q", line)
			}
			seq, err := strconv.ParseUint(f[1], 10, 64)
			if err != nil {
				t.Fatalf("child printed %q", line)
			}
			acked[seq] = f[2]
		}
	}
	l, err := Open(path, key, Options{})
	if err != nil {
		t.Fatalf("reopen after kill -9: %v", err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	segs, err := Segments(path)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := VerifyChain(segs, VerifyOptions{Keys: []crypto.PublicKey{key.Public()}, RequireCheckpointAtEnd: true})
	if err != nil {
		t.Fatalf("verify after kill -9: %v\n%s", err, problemList(rep.Problems))
	}
	stored := map[uint64]string{}
	for _, seg := range segs {
		for _, line := range readLines(t, seg) {
			w := mustParse(t, line)
			stored[w.Seq] = w.Hash
		}
	}
	for seq, hash := range acked {
		if stored[seq] != hash {
			t.Fatalf("acknowledged seq %d lost or changed after kill -9", seq)
		}
	}
	t.Logf("%d acknowledged appends over 3 kills, %d records stored in %d segments", len(acked), len(stored), len(segs))
}
