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
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const (
	crashEnvPath = "PALISADE_AUDIT_CRASH_PATH"
	crashEnvKey  = "PALISADE_AUDIT_CRASH_KEY"
)

// TestCrashChild is the child half of TestKill9: it appends from several
// goroutines forever and prints each acknowledged seq.
func TestCrashChild(t *testing.T) {
	path := os.Getenv(crashEnvPath)
	if path == "" {
		t.Skip("child process of TestKill9 only")
	}
	der, _ := hex.DecodeString(os.Getenv(crashEnvKey))
	key, err := x509.ParseECPrivateKey(der)
	if err != nil {
		t.Fatal(err)
	}
	l, err := Open(path, key, Options{CheckpointEvery: 50, SegmentBytes: 96 << 10})
	if err != nil {
		fmt.Printf("open error: %v\n", err)
		os.Exit(3)
	}
	out := bufio.NewWriter(os.Stdout)
	var mu sync.Mutex
	for w := 0; w < 8; w++ {
		go func() {
			for i := 0; ; i++ {
				r, err := l.Append(context.Background(), "x509svid.issued", "worker:"+strconv.Itoa(w), map[string]int{"i": i})
				if err != nil {
					fmt.Printf("append error: %v\n", err)
					os.Exit(3)
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

func TestKill9(t *testing.T) {
	if os.Getenv(crashEnvPath) != "" {
		t.Skip("in child")
	}
	key := newKey(t, elliptic.P256())
	der, _ := x509.MarshalECPrivateKey(key)
	path := filepath.Join(t.TempDir(), "audit.log")
	acked := map[uint64]string{}
	for round := 0; round < 3; round++ {
		crashOnce(t, path, der, round, acked)
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

func crashOnce(t *testing.T, path string, keyDER []byte, round int, acked map[uint64]string) {
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), crashEnvPath+"="+path, crashEnvKey+"="+hex.EncodeToString(keyDER))
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	sc := bufio.NewScanner(stdout)
	n := 0
	want := 300 + 500*round
	deadline := time.AfterFunc(60*time.Second, func() { cmd.Process.Kill() })
	defer deadline.Stop()
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 3 || f[0] != "ack" {
			if strings.HasPrefix(sc.Text(), "open error") || strings.HasPrefix(sc.Text(), "append error") {
				t.Fatalf("child: %s", sc.Text())
			}
			continue
		}
		seq, err := strconv.ParseUint(f[1], 10, 64)
		if err != nil {
			t.Fatalf("child printed %q", sc.Text())
		}
		acked[seq] = f[2]
		if n++; n == want {
			// Kill mid-stream: other goroutines are inside Append.
			if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
		}
	}
	cmd.Wait()
	if n < want {
		t.Fatalf("child acknowledged only %d appends before exiting", n)
	}
}
