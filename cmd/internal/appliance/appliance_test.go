package appliance

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/palisade-id/palisade/ca"
	"github.com/palisade-id/palisade/ca/store"
	"github.com/palisade-id/palisade/cmd/internal/config"
	"github.com/palisade-id/palisade/test/softhsm"
)

var errDisk = errors.New("injected: no space left on device")

// initFails is a store whose InitCA fails, after committing when commit is
// set (the error a failed final fdatasync reports).
type initFails struct {
	*store.Store
	commit bool
}

func (s initFails) InitCA(meta store.CAMeta, inter store.Intermediate) error {
	if s.commit {
		if err := s.Store.InitCA(meta, inter); err != nil {
			return err
		}
	}
	return errDisk
}

// A ceremony refused before the store committed must leave nothing that
// refuses the retry; once the store has committed, the audit log stays.
func TestCeremonyStoreFailure(t *testing.T) {
	first := softhsm.NewToken(t)
	// Every token before the module is first loaded (see softhsm.Another).
	second, err := first.Another("palisade-test-2")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		tok     *softhsm.Token
		commit  bool
		wantLog bool
	}{
		{"refused before commit", first, false, false},
		{"error after commit", second, true, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			cfg, err := config.Parse(fmt.Appendf(nil, "hsm:\n  token: %q\ndata_dir: %s\nca:\n  trust_domain: example.org\n",
				tc.tok.TokenURI(), dir))
			if err != nil {
				t.Fatal(err)
			}
			tok, err := OpenHSM(cfg)
			if err != nil {
				t.Fatal(err)
			}
			st, err := OpenStore(cfg)
			if err != nil {
				tok.Close()
				t.Fatal(err)
			}
			_, err = ceremony(context.Background(), cfg, "test", tok, initFails{st, tc.commit})
			st.Close()
			tok.Close()
			if !errors.Is(err, errDisk) {
				t.Fatalf("ceremony: %v, want the store's error", err)
			}
			_, serr := os.Stat(cfg.Audit.Path)
			if gotLog := serr == nil; gotLog != tc.wantLog {
				t.Fatalf("audit log present: %v (%v), want %v", gotLog, serr, tc.wantLog)
			}
			if tc.wantLog {
				// The store names the keys: they must still be there.
				tok, err := OpenHSM(cfg)
				if err != nil {
					t.Fatal(err)
				}
				defer tok.Close()
				if _, err := tok.Signer(ca.RootKeyLabel); err != nil {
					t.Fatalf("root key after a commit the store holds: %v", err)
				}
				return
			}
			if serr != nil && !errors.Is(serr, fs.ErrNotExist) {
				t.Fatal(serr)
			}
			if ents, _ := os.ReadDir(dir); len(ents) != 1 || ents[0].Name() != filepath.Base(cfg.StorePath()) {
				t.Fatalf("data_dir after the refused ceremony: %v, want only the empty store", ents)
			}
			// The retry needs no operator clean-up: no log, no keys left.
			res, err := Ceremony(context.Background(), cfg, "test")
			if err != nil {
				t.Fatalf("retry: %v", err)
			}
			if res.Root == nil || res.Intermediate == nil {
				t.Fatalf("retry result: %+v", res)
			}
			if _, err := os.Stat(cfg.Audit.Path); err != nil {
				t.Fatalf("retry left no audit log: %v", err)
			}
			if _, err := Ceremony(context.Background(), cfg, "test"); !errors.Is(err, ca.ErrAlreadyInitialized) {
				t.Fatalf("third run: %v, want ErrAlreadyInitialized", err)
			}
		})
	}
}
