package audit

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fuzzKey is fixed so saved corpus entries keep verifying across runs.
func fuzzKey(t testing.TB) *ecdsa.PrivateKey {
	d, _ := hex.DecodeString("a3a9ae0a5e0c2b1f3c5d8e7f60718293a4b5c6d7e8f901122334455667788990")
	k, err := ecdsa.ParseRawPrivateKey(elliptic.P256(), d)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// unsigned drops checkpoint signatures (ECDSA is randomised) so logs can be
// compared by content.
func unsigned(t *testing.T, b []byte) string {
	var out strings.Builder
	for _, line := range strings.SplitAfter(string(b), "\n") {
		if line == "" {
			continue
		}
		w := mustParse(t, line)
		w.Sig = nil
		out.WriteString(encode(w))
	}
	return out.String()
}

func FuzzVerify(f *testing.F) {
	key := fuzzKey(f)
	path := writeLog(f, key, 6, Options{CheckpointEvery: 3})
	lines := readLines(f, path)
	good := joinLines(lines)
	f.Add(good)
	f.Add([]byte{})
	f.Add([]byte("\n\n\n"))
	f.Add([]byte(strings.Join(lines[:3], "")))
	f.Add(joinLines(append([]string{lines[1]}, lines[0])))
	f.Add(bytes.Replace(good, []byte(`"i":1`), []byte(`"i":2`), 1))
	f.Add([]byte(`{"seq":1,"time":"2026-11-23T10:00:00Z","kind":"checkpoint","actor":"system","data":{"alg":"ecdsa-sha256","key_id":"00"},"prev":"` + GenesisPrev + `","hash":"` + GenesisPrev + `","sig":"AAAA","cert":"AAAA"}` + "\n"))
	opts := VerifyOptions{Keys: []crypto.PublicKey{key.Public()}, RequireCheckpointAtEnd: true}
	f.Fuzz(func(t *testing.T, data []byte) {
		rep, err := Verify(bytes.NewReader(data), opts)
		if (err != nil) != (len(rep.Problems) > 0) {
			t.Fatalf("err %v with %d problems", err, len(rep.Problems))
		}
		if err != nil && !errors.Is(err, ErrTampered) {
			t.Fatalf("error does not wrap ErrTampered: %v", err)
		}
		if err == nil && !bytes.Equal(data, good) && len(data) > 0 {
			// Anything accepted must be a chain that ends with a checkpoint
			// under our key: i.e. a prefix of the real log ending at a checkpoint.
			if !strings.HasPrefix(unsigned(t, good), unsigned(t, data)) {
				t.Fatalf("accepted a log that is not a checkpointed prefix of the real one:\n%s", data)
			}
		}
		for _, p := range rep.Problems {
			if p.Line < 0 || p.Line > rep.Lines {
				t.Fatalf("problem line %d outside 1..%d", p.Line, rep.Lines)
			}
		}
	})
}

// FuzzOpen feeds arbitrary file contents to Open: it must refuse without
// touching the file, or open, and then leave a log that verifies.
func FuzzOpen(f *testing.F) {
	key := fuzzKey(f)
	lines := readLines(f, writeLog(f, key, 4, Options{CheckpointEvery: 2}))
	good := joinLines(lines)
	f.Add(good)
	f.Add([]byte{})
	f.Add(append(append([]byte(nil), good...), `{"seq":7,"ti`...))
	f.Add(joinLines(lines[:3]))
	f.Add(joinLines(append([]string{lines[1]}, lines[0])))
	f.Add([]byte("garbage\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(t.TempDir(), "audit.log")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		l, err := Open(path, key, Options{})
		if err != nil {
			if after, _ := os.ReadFile(path); !bytes.Equal(after, data) {
				t.Fatalf("refused Open (%v) changed the file", err)
			}
			return
		}
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		after, _ := os.ReadFile(path)
		if rep, err := Verify(bytes.NewReader(after), VerifyOptions{Keys: []crypto.PublicKey{key.Public()}}); err != nil {
			t.Fatalf("log accepted by Open does not verify: %v\n%s", err, problemList(rep.Problems))
		}
	})
}
