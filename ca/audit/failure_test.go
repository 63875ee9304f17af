package audit

import (
	"context"
	"crypto"
	"crypto/elliptic"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
)

// flakySigner fails while broken is set, like an HSM that went away.
type flakySigner struct {
	crypto.Signer
	broken atomic.Bool
}

func (s *flakySigner) Sign(r io.Reader, d []byte, o crypto.SignerOpts) ([]byte, error) {
	if s.broken.Load() {
		return nil, errors.New("CKR_DEVICE_REMOVED")
	}
	return s.Signer.Sign(r, d, o)
}

func TestSignerFailure(t *testing.T) {
	key := newKey(t, elliptic.P256())
	s := &flakySigner{Signer: key}
	path := filepath.Join(t.TempDir(), "audit.log")
	l, err := Open(path, s, Options{CheckpointEvery: 3})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	s.broken.Store(true)
	if _, err := l.Checkpoint(ctx); err == nil {
		t.Fatal("Checkpoint succeeded with a failing signer")
	}
	for i := 0; i < 4; i++ {
		if _, err := l.Append(ctx, "entry.created", "system", nil); err != nil {
			t.Fatalf("append must not depend on the checkpoint signer: %v", err)
		}
	}
	if l.CheckpointErr() == nil {
		t.Fatal("CheckpointErr is nil after a failed automatic checkpoint")
	}
	if seq, _ := l.Head(); seq != 4 {
		t.Fatalf("head %d, want 4 records and no checkpoint", seq)
	}
	s.broken.Store(false)
	for i := 0; i < 3; i++ {
		if _, err := l.Append(ctx, "entry.created", "system", nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.CheckpointErr(); err != nil {
		t.Fatalf("CheckpointErr after recovery: %v", err)
	}
	s.broken.Store(true)
	if _, err := l.Append(ctx, "entry.created", "system", nil); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err == nil {
		t.Fatal("Close hid a failed final checkpoint")
	}
	b, _ := os.ReadFile(path)
	rep, err := verifyBytes(b, VerifyOptions{Keys: []crypto.PublicKey{key.Public()}})
	if err != nil || rep.Checkpoints != 1 || rep.HeadSeq != 9 {
		t.Fatalf("verify: %v, %d checkpoints, head %d\n%s", err, rep.Checkpoints, rep.HeadSeq, problemList(rep.Problems))
	}
	if _, err := verifyBytes(b, VerifyOptions{Keys: []crypto.PublicKey{key.Public()}, RequireCheckpointAtEnd: true}); !errors.Is(err, ErrTampered) {
		t.Fatalf("unsigned tail accepted with RequireCheckpointAtEnd: %v", err)
	}
}

func TestWriteFailureIsSticky(t *testing.T) {
	key := newKey(t, elliptic.P256())
	path := filepath.Join(t.TempDir(), "audit.log")
	l, err := Open(path, key, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := l.Append(ctx, "entry.created", "system", nil); err != nil {
		t.Fatal(err)
	}
	seq, hash := l.Head()
	l.f.Close() // the disk goes away under the log
	for i := 0; i < 2; i++ {
		if _, err := l.Append(ctx, "entry.created", "system", nil); !errors.Is(err, ErrClosed) {
			t.Fatalf("append %d after a write failure: %v, want ErrClosed", i, err)
		}
	}
	if s, h := l.Head(); s != seq || h != hash {
		t.Fatalf("head moved to %d after failed writes", s)
	}
	if err := l.Close(); err == nil {
		t.Fatal("Close of a failed log returned nil")
	}
	l, err = Open(path, key, Options{})
	if err != nil {
		t.Fatalf("reopen after write failure: %v", err)
	}
	if s, _ := l.Head(); s != seq {
		t.Fatalf("reopened head %d, want %d", s, seq)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
}
