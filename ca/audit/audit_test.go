package audit

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestAppendVerifyRoundTrip(t *testing.T) {
	tests := []struct {
		name    string
		curve   elliptic.Curve
		n       int
		every   int
		useCert bool
	}{
		{"p256 keys", elliptic.P256(), 25, 5, false},
		{"p256 roots", elliptic.P256(), 25, 5, true},
		{"p384 roots", elliptic.P384(), 7, 3, true},
		{"single record", elliptic.P256(), 1, 1000, false},
		{"empty log", elliptic.P256(), 0, 1000, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			key := newKey(t, tc.curve)
			opts := Options{CheckpointEvery: tc.every, Now: fixedClock()}
			vopts := VerifyOptions{Keys: []crypto.PublicKey{key.Public()}, RequireCheckpointAtEnd: tc.n > 0}
			if tc.useCert {
				pool, cert := newChain(t, key)
				opts.SignerCert = cert
				vopts = VerifyOptions{Roots: pool, RequireCheckpointAtEnd: true}
			}
			path := filepath.Join(t.TempDir(), "audit.log")
			l, err := Open(path, key, opts)
			if err != nil {
				t.Fatal(err)
			}
			var got []Record
			for i := 0; i < tc.n; i++ {
				r, err := l.Append(context.Background(), "x509svid.issued", "spiffe://example.org/ca",
					json.RawMessage(fmt.Sprintf(`{ "serial" : %d, "z":"<&>" }`, i)))
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, r)
			}
			for i, r := range got {
				if i > 0 && r.Seq <= got[i-1].Seq {
					t.Fatalf("seq not increasing: %d after %d", r.Seq, got[i-1].Seq)
				}
				if want := fmt.Sprintf(`{"serial":%d,"z":"<&>"}`, i); string(r.Data) != want {
					t.Fatalf("data stored as %s, want compacted %s", r.Data, want)
				}
			}
			seq, hash := l.Head()
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			b, _ := os.ReadFile(path)
			rep, err := verifyBytes(b, vopts)
			if tc.n == 0 {
				if !errors.Is(err, ErrTampered) && len(b) == 0 {
					// An empty log is only a problem when a checkpoint is required.
					if rep.Records != 0 {
						t.Fatalf("records = %d", rep.Records)
					}
					return
				}
			}
			if err != nil {
				t.Fatalf("verify: %v (%v)", err, rep.Problems)
			}
			wantCP := tc.n / tc.every
			if tc.n%tc.every != 0 {
				wantCP++ // final checkpoint from Close
			}
			if rep.Records != tc.n+wantCP || rep.Checkpoints != wantCP {
				t.Fatalf("records=%d checkpoints=%d, want %d and %d", rep.Records, rep.Checkpoints, tc.n+wantCP, wantCP)
			}
			if rep.LastCheckpointSeq != rep.HeadSeq || rep.HeadSeq != uint64(tc.n+wantCP) {
				t.Fatalf("last checkpoint %d, head %d", rep.LastCheckpointSeq, rep.HeadSeq)
			}
			if seq > rep.HeadSeq || (seq == rep.HeadSeq && hash != rep.HeadHash) {
				t.Fatalf("Head() = %d %s, report head %d %s", seq, hash, rep.HeadSeq, rep.HeadHash)
			}
			// Reopening continues the chain.
			l, err = Open(path, key, opts)
			if err != nil {
				t.Fatal(err)
			}
			if s, h := l.Head(); s != rep.HeadSeq || h != rep.HeadHash {
				t.Fatalf("reopened head %d %s, want %d %s", s, h, rep.HeadSeq, rep.HeadHash)
			}
			r, err := l.Append(context.Background(), "entry.deleted", "operator:uid=0", nil)
			if err != nil || r.Seq != rep.HeadSeq+1 || r.Prev != rep.HeadHash {
				t.Fatalf("append after reopen: %+v %v", r, err)
			}
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			b, _ = os.ReadFile(path)
			if _, err := verifyBytes(b, vopts); err != nil {
				t.Fatalf("verify after reopen: %v", err)
			}
		})
	}
}

// tamperLog is 18 records with a checkpoint every 5: seqs 1-5, cp 6, 7-11,
// cp 12, 13-17, cp 18, 19-21, final cp 22. Line i holds seq i.
func tamperLog(t *testing.T) ([]string, *ecdsa.PrivateKey) {
	key := newKey(t, elliptic.P256())
	path := writeLog(t, key, 18, Options{CheckpointEvery: 5})
	lines := readLines(t, path)
	if len(lines) != 22 || mustParse(t, lines[5]).Kind != KindCheckpoint || mustParse(t, lines[21]).Kind != KindCheckpoint {
		t.Fatalf("unexpected fixture layout: %d lines", len(lines))
	}
	return lines, key
}

func TestVerifyDetectsTampering(t *testing.T) {
	other := newKey(t, elliptic.P256())
	tests := []struct {
		name      string
		mutate    func(t *testing.T, lines []string) []string
		wrongKey  bool
		requireCP bool
		want      Problem // Detail ignored
		maxProbs  int
	}{
		{"edit a data byte", func(t *testing.T, l []string) []string {
			l[6] = strings.Replace(l[6], `"i":5`, `"i":9`, 1)
			return l
		}, false, false, Problem{Seq: 7, Line: 7, Kind: ProblemEdited}, 1},
		{"edit with own hash recomputed", func(t *testing.T, l []string) []string {
			w := mustParse(t, l[6])
			w.Actor = "operator:uid=1000"
			rehash(w)
			l[6] = encode(w)
			return l
		}, false, false, Problem{Seq: 7, Line: 7, Kind: ProblemEdited}, 1},
		{"edit the kind", func(t *testing.T, l []string) []string {
			l[2] = strings.Replace(l[2], "entry.created", "entry.deleted", 1)
			return l
		}, false, false, Problem{Seq: 3, Line: 3, Kind: ProblemEdited}, 1},
		{"drop a line", func(t *testing.T, l []string) []string {
			return append(l[:6:6], l[7:]...)
		}, false, false, Problem{Seq: 7, Line: 7, Kind: ProblemDropped}, 1},
		{"drop three lines", func(t *testing.T, l []string) []string {
			return append(l[:1:1], l[4:]...)
		}, false, false, Problem{Seq: 2, Line: 2, Kind: ProblemDropped}, 1},
		{"drop the first line", func(t *testing.T, l []string) []string {
			return l[1:]
		}, false, false, Problem{Seq: 1, Line: 1, Kind: ProblemDropped}, 1},
		{"swap two lines", func(t *testing.T, l []string) []string {
			l[7], l[8] = l[8], l[7]
			return l
		}, false, false, Problem{Seq: 9, Line: 8, Kind: ProblemReordered}, 1},
		{"move a line far back", func(t *testing.T, l []string) []string {
			moved := l[2]
			l = append(l[:2:2], l[3:]...)
			return append(l[:10:10], append([]string{moved}, l[10:]...)...)
		}, false, false, Problem{Seq: 3, Line: 11, Kind: ProblemReordered}, 1},
		{"insert a forged line before the original", func(t *testing.T, l []string) []string {
			prev := mustParse(t, l[6])
			f := &wire{Seq: 8, Time: prev.Time, Kind: "entry.deleted", Actor: "operator:uid=0", Prev: prev.Hash}
			rehash(f)
			return append(l[:7:7], append([]string{encode(f)}, l[7:]...)...)
		}, false, false, Problem{Seq: 8, Line: 8, Kind: ProblemInserted}, 1},
		{"insert a forged line after the original", func(t *testing.T, l []string) []string {
			prev := mustParse(t, l[6])
			f := &wire{Seq: 8, Time: prev.Time, Kind: "entry.deleted", Actor: "operator:uid=0", Prev: prev.Hash}
			rehash(f)
			return append(l[:8:8], append([]string{encode(f)}, l[8:]...)...)
		}, false, false, Problem{Seq: 8, Line: 9, Kind: ProblemInserted}, 1},
		{"insert a forged record with a future seq", func(t *testing.T, l []string) []string {
			prev := mustParse(t, l[3])
			f := &wire{Seq: 500, Time: prev.Time, Kind: "entry.deleted", Actor: "operator:uid=0", Prev: prev.Hash}
			rehash(f)
			return append(l[:4:4], append([]string{encode(f)}, l[4:]...)...)
		}, false, false, Problem{Seq: 500, Line: 5, Kind: ProblemInserted}, 1},
		{"move a line far ahead", func(t *testing.T, l []string) []string {
			moved := l[14]
			l = append(l[:14:14], l[15:]...)
			return append(l[:2:2], append([]string{moved}, l[2:]...)...)
		}, false, false, Problem{Seq: 15, Line: 3, Kind: ProblemReordered}, 1},
		{"duplicate a line", func(t *testing.T, l []string) []string {
			return append(l[:4:4], append([]string{l[3]}, l[4:]...)...)
		}, false, false, Problem{Seq: 4, Line: 5, Kind: ProblemInserted}, 1},
		{"rewrite the tail with recomputed hashes", func(t *testing.T, l []string) []string {
			prev := ""
			for i := 12; i < len(l); i++ {
				w := mustParse(t, l[i])
				if i == 12 {
					w.Data = json.RawMessage(`{"i":999}`)
				} else {
					w.Prev = prev
				}
				rehash(w)
				prev = w.Hash
				l[i] = encode(w)
			}
			return l
		}, false, false, Problem{Seq: 18, Line: 18, Kind: ProblemBadSignature}, 2},
		{"rewrite the tail and strip checkpoints", func(t *testing.T, l []string) []string {
			return l[:19] // records 20-21 and cp 22 gone: the tail ends unsigned
		}, false, true, Problem{Seq: 19, Line: 19, Kind: ProblemTruncated}, 1},
		{"wrong signer key", func(t *testing.T, l []string) []string {
			return l
		}, true, false, Problem{Seq: 6, Line: 6, Kind: ProblemBadSignature}, 4},
		{"forged signature", func(t *testing.T, l []string) []string {
			w := mustParse(t, l[11])
			w.Sig[len(w.Sig)-1] ^= 1
			l[11] = encode(w)
			return l
		}, false, false, Problem{Seq: 12, Line: 12, Kind: ProblemBadSignature}, 1},
		{"torn last line", func(t *testing.T, l []string) []string {
			l[21] = l[21][:40]
			return l
		}, false, false, Problem{Seq: 0, Line: 22, Kind: ProblemTruncated}, 1},
		{"non-canonical whitespace", func(t *testing.T, l []string) []string {
			l[4] = strings.Replace(l[4], `"seq":5,`, `"seq": 5,`, 1)
			return l
		}, false, false, Problem{Seq: 0, Line: 5, Kind: ProblemMalformed}, 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			lines, key := tamperLog(t)
			orig := joinLines(lines)
			mut := joinLines(tc.mutate(t, append([]string(nil), lines...)))
			if bytes.Equal(orig, mut) && !tc.wrongKey {
				t.Fatal("mutation changed nothing")
			}
			opts := VerifyOptions{Keys: []crypto.PublicKey{key.Public()}, RequireCheckpointAtEnd: tc.requireCP}
			if tc.wrongKey {
				opts.Keys = []crypto.PublicKey{other.Public()}
			}
			rep, err := verifyBytes(mut, opts)
			if !errors.Is(err, ErrTampered) {
				t.Fatalf("err = %v, want ErrTampered; problems %v", err, rep.Problems)
			}
			t.Logf("problems:\n%s", problemList(rep.Problems))
			found := false
			for _, p := range rep.Problems {
				if p.Seq == tc.want.Seq && p.Line == tc.want.Line && p.Kind == tc.want.Kind {
					found = true
				}
			}
			if !found || len(rep.Problems) > tc.maxProbs {
				t.Fatalf("want %s at seq %d line %d (at most %d problems), got:\n%s", tc.want.Kind, tc.want.Seq, tc.want.Line, tc.maxProbs, problemList(rep.Problems))
			}
			if !strings.Contains(err.Error(), rep.Problems[0].Kind) {
				t.Fatalf("error %q does not name the first problem", err)
			}
		})
	}
}

func problemList(ps []Problem) string {
	var b strings.Builder
	for _, p := range ps {
		b.WriteString("  " + p.String() + "\n")
	}
	return b.String()
}

func TestVerifyBadInput(t *testing.T) {
	key := newKey(t, elliptic.P256())
	good := readLines(t, writeLog(t, key, 3, Options{}))
	tests := []struct {
		name  string
		input string
		kind  string
		line  int
	}{
		{"garbage", "not json at all\n", ProblemMalformed, 1},
		{"binary", "\x00\xff\xfe{\n", ProblemMalformed, 1},
		{"empty line", good[0] + "\n" + good[1], ProblemMalformed, 2},
		{"huge line", good[0] + `{"seq":2,"data":"` + strings.Repeat("A", MaxLineBytes+10) + "\"}\n" + good[1], ProblemMalformed, 2},
		{"huge line without newline", strings.Repeat("A", 3*MaxLineBytes), ProblemMalformed, 1},
		{"unknown field", strings.Replace(good[0], `{"seq":1,`, `{"seq":1,"x":1,`, 1), ProblemMalformed, 1},
		{"duplicate field", strings.Replace(good[0], `{"seq":1,`, `{"seq":1,"seq":1,`, 1), ProblemMalformed, 1},
		{"seq zero", strings.Replace(good[0], `{"seq":1,`, `{"seq":0,`, 1), ProblemMalformed, 1},
		{"negative seq", strings.Replace(good[0], `{"seq":1,`, `{"seq":-1,`, 1), ProblemMalformed, 1},
		{"local time zone", strings.Replace(good[0], `Z"`, `+00:00"`, 1), ProblemMalformed, 1},
		{"escaped html", strings.Replace(good[0], `"actor":"operator`, `"actor":"\u006fperator`, 1), ProblemMalformed, 1},
		{"data not compact", strings.Replace(good[0], `"data":{"i":0`, `"data":{ "i":0`, 1), ProblemMalformed, 1},
		{"sig on a plain record", strings.Replace(good[0], `}`+"\n", `,"sig":"AAAA"}`+"\n", 1), ProblemMalformed, 1},
		{"upper-case hash", strings.Replace(good[0], `"prev":"0000`, `"prev":"000A`, 1), ProblemMalformed, 1},
		{"max seq", strings.Replace(good[0], `{"seq":1,`, `{"seq":18446744073709551615,`, 1), ProblemMalformed, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rep, err := verifyBytes([]byte(tc.input), VerifyOptions{Keys: []crypto.PublicKey{key.Public()}})
			if !errors.Is(err, ErrTampered) {
				t.Fatalf("err = %v, want ErrTampered", err)
			}
			for _, p := range rep.Problems {
				if p.Kind == tc.kind && p.Line == tc.line {
					return
				}
			}
			t.Fatalf("want %s at line %d, got:\n%s", tc.kind, tc.line, problemList(rep.Problems))
		})
	}
	t.Run("no trust anchors", func(t *testing.T) {
		_, err := verifyBytes(joinLines(good), VerifyOptions{})
		if err == nil || errors.Is(err, ErrTampered) {
			t.Fatalf("err = %v, want a configuration error", err)
		}
	})
	t.Run("read error", func(t *testing.T) {
		_, err := Verify(&failReader{data: joinLines(good)}, VerifyOptions{Keys: []crypto.PublicKey{key.Public()}})
		if err == nil || errors.Is(err, ErrTampered) {
			t.Fatalf("err = %v, want the read error", err)
		}
	})
}

type failReader struct{ data []byte }

func (r *failReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, errors.New("disk on fire")
	}
	n := copy(p, r.data[:min(len(r.data), 10)])
	r.data = r.data[n:]
	return n, nil
}

func TestOpenRecovery(t *testing.T) {
	tests := []struct {
		name     string
		tail     func(lines []string) string
		wantErr  error
		recovers bool
	}{
		{"torn partial line", func(l []string) string { return `{"seq":22,"time":"2026-11` }, nil, true},
		{"torn zero-filled block", func(l []string) string { return string(make([]byte, 4096)) }, nil, true},
		{"clean", func(l []string) string { return "" }, nil, false},
		{"unterminated tail too long for a torn write", func(l []string) string { return strings.Repeat("x", maxTornBytes+1) }, ErrCorrupt, false},
		{"tampered complete last line", func(l []string) string { return strings.Replace(l[0], `"seq":1`, `"seq":22`, 1) }, ErrTampered, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			key := newKey(t, elliptic.P256())
			path := writeLog(t, key, 10, Options{CheckpointEvery: 4})
			lines := readLines(t, path)
			tail := tc.tail(lines)
			f, _ := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
			f.WriteString(tail)
			f.Close()
			before, _ := os.ReadFile(path)
			l, err := Open(path, key, Options{})
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("Open err = %v, want %v", err, tc.wantErr)
				}
				if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
					t.Fatal("refused Open changed the file")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			seq, _ := l.Head()
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			after := readLines(t, path)
			b, _ := os.ReadFile(path)
			rep, err := verifyBytes(b, VerifyOptions{Keys: []crypto.PublicKey{key.Public()}, RequireCheckpointAtEnd: true})
			if err != nil {
				t.Fatalf("verify after recovery: %v\n%s", err, problemList(rep.Problems))
			}
			if !tc.recovers {
				if len(after) != len(lines) {
					t.Fatalf("clean open added %d lines", len(after)-len(lines))
				}
				return
			}
			rec := mustParse(t, after[len(lines)])
			if rec.Kind != KindRecovered || uint64(len(lines))+1 != seq {
				t.Fatalf("line after the old tail is %s (seq %d), want %s; head %d", rec.Kind, rec.Seq, KindRecovered, seq)
			}
			var d struct {
				Offset, Bytes int64
				SavedAs       string `json:"saved_as"`
			}
			json.Unmarshal(rec.Data, &d)
			if d.Bytes != int64(len(tail)) || d.Offset != int64(len(joinLines(lines))) {
				t.Fatalf("recovered record says %+v, cut %d bytes at %d", d, len(tail), len(joinLines(lines)))
			}
			if saved, err := os.ReadFile(filepath.Join(filepath.Dir(path), d.SavedAs)); err != nil || string(saved) != tail {
				t.Fatalf("torn tail not preserved in %q: %v", d.SavedAs, err)
			}
		})
	}
}

func TestConcurrentAppend(t *testing.T) {
	key := newKey(t, elliptic.P256())
	path := filepath.Join(t.TempDir(), "audit.log")
	l, err := Open(path, key, Options{CheckpointEvery: 97})
	if err != nil {
		t.Fatal(err)
	}
	const workers, each = 16, 150
	var mu sync.Mutex
	got := map[uint64]Record{}
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				r, err := l.Append(context.Background(), "x509svid.issued", fmt.Sprintf("worker:%d", w), map[string]int{"i": i})
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				got[r.Seq] = r
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if len(got) != workers*each {
		t.Fatalf("%d distinct seqs for %d appends", len(got), workers*each)
	}
	lines := readLines(t, path)
	seqs := make([]uint64, 0, len(got))
	for s := range got {
		seqs = append(seqs, s)
	}
	sort.Slice(seqs, func(i, j int) bool { return seqs[i] < seqs[j] })
	for i, line := range lines {
		w := mustParse(t, line)
		if w.Seq != uint64(i+1) {
			t.Fatalf("line %d has seq %d", i+1, w.Seq)
		}
		if r, ok := got[w.Seq]; ok && (r.Hash != w.Hash || r.Kind != w.Kind) {
			t.Fatalf("seq %d: returned record differs from the stored line", w.Seq)
		} else if !ok && w.Kind != KindCheckpoint {
			t.Fatalf("seq %d (%s) was not returned to any caller", w.Seq, w.Kind)
		}
	}
	b, _ := os.ReadFile(path)
	if rep, err := verifyBytes(b, VerifyOptions{Keys: []crypto.PublicKey{key.Public()}, RequireCheckpointAtEnd: true}); err != nil {
		t.Fatalf("verify: %v\n%s", err, problemList(rep.Problems))
	}
}

func TestAppendRejectsBadInput(t *testing.T) {
	key := newKey(t, elliptic.P256())
	l, err := Open(filepath.Join(t.TempDir(), "audit.log"), key, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	tests := []struct {
		name, kind, actor string
		data              any
	}{
		{"reserved checkpoint kind", KindCheckpoint, "system", nil},
		{"reserved audit kind", "audit.recovered", "system", nil},
		{"empty kind", "", "system", nil},
		{"empty actor", "entry.created", "", nil},
		{"invalid utf8 actor", "entry.created", "op\xff", nil},
		{"long kind", strings.Repeat("k", MaxKindBytes+1), "system", nil},
		{"raw data not json", "entry.created", "system", json.RawMessage(`{"a":`)},
		{"raw data with invalid utf8", "entry.created", "system", json.RawMessage("\"\xff\"")},
		{"unmarshalable data", "entry.created", "system", func() {}},
		{"data too large", "entry.created", "system", strings.Repeat("d", MaxDataBytes)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := l.Append(context.Background(), tc.kind, tc.actor, tc.data)
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("err = %v, want ErrInvalid", err)
			}
			if seq, _ := l.Head(); seq != 0 {
				t.Fatalf("rejected append changed the head to %d", seq)
			}
		})
	}
}

func TestLifecycle(t *testing.T) {
	key := newKey(t, elliptic.P256())
	path := filepath.Join(t.TempDir(), "audit.log")
	l, err := Open(path, key, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Open(path, key, Options{}); err == nil {
		t.Fatal("second Open of a locked log succeeded")
	}
	cp, err := l.Checkpoint(context.Background())
	if err != nil || cp.Kind != KindCheckpoint || cp.Seq != 1 || len(cp.Sig) == 0 {
		t.Fatalf("checkpoint %+v %v", cp, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := l.Append(ctx, "entry.created", "system", nil); !errors.Is(err, context.Canceled) {
		// The request may win the race to the committer; it must then be durable.
		if err != nil {
			t.Fatalf("append with cancelled ctx: %v", err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Append(context.Background(), "entry.created", "system", nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("append after close: %v", err)
	}
	if err := l.Close(); !errors.Is(err, ErrClosed) {
		t.Fatalf("second close: %v", err)
	}
	t.Run("wrong signer cert", func(t *testing.T) {
		_, cert := newChain(t, newKey(t, elliptic.P256()))
		if _, err := Open(filepath.Join(t.TempDir(), "a.log"), key, Options{SignerCert: cert}); err == nil {
			t.Fatal("Open accepted a certificate for another key")
		}
	})
	t.Run("checkpoint interval", func(t *testing.T) {
		p := filepath.Join(t.TempDir(), "a.log")
		l, err := Open(p, key, Options{CheckpointInterval: 20 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		if _, err := l.Append(context.Background(), "entry.created", "system", nil); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(10 * time.Second)
		for {
			if seq, _ := l.Head(); seq == 2 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("no timed checkpoint")
			}
			time.Sleep(5 * time.Millisecond)
		}
		if w := mustParse(t, readLines(t, p)[1]); w.Kind != KindCheckpoint {
			t.Fatalf("record 2 is %s", w.Kind)
		}
	})
}

func TestVerifyRoots(t *testing.T) {
	key := newKey(t, elliptic.P256())
	pool, cert := newChain(t, key)
	otherPool, _ := newChain(t, newKey(t, elliptic.P256()))
	future := func() time.Time { return time.Date(2101, 1, 1, 0, 0, 0, 0, time.UTC) }
	tests := []struct {
		name    string
		roots   *x509.CertPool
		now     func() time.Time
		noCert  bool
		wantErr bool
	}{
		{"chains to roots", pool, nil, false, false},
		{"other roots", otherPool, nil, false, true},
		{"certificate expired at checkpoint time", pool, future, false, true},
		{"no certificate embedded", pool, nil, true, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			opts := Options{CheckpointEvery: 4, SignerCert: cert, Now: tc.now}
			if tc.noCert {
				opts.SignerCert = nil
			}
			b, _ := os.ReadFile(writeLog(t, key, 9, opts))
			rep, err := verifyBytes(b, VerifyOptions{Roots: tc.roots, RequireCheckpointAtEnd: true})
			if !tc.wantErr {
				if err != nil || rep.Checkpoints != 3 {
					t.Fatalf("err %v, %d checkpoints\n%s", err, rep.Checkpoints, problemList(rep.Problems))
				}
				return
			}
			if !errors.Is(err, ErrTampered) || rep.Problems[0].Kind != ProblemBadSignature || rep.Problems[0].Seq != 5 {
				t.Fatalf("want bad-signature at seq 5, got %v\n%s", err, problemList(rep.Problems))
			}
		})
	}
}
