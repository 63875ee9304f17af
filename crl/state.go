package crl

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// issuerState is the durable CRL numbering of one issuer. Full and delta
// CRLs share one number sequence (RFC 5280 §5.2.3).
type issuerState struct {
	Number     uint64    `json:"number"`      // last number used
	BaseNumber uint64    `json:"base_number"` // full CRL the deltas refer to
	BaseCutoff time.Time `json:"base_cutoff"` // revocations from here on go in the delta
}

// stateFile persists issuer states with write-to-temp, fsync, rename,
// fsync(dir): a crash leaves the old or the new file, never a torn one.
type stateFile struct {
	path string
	mu   sync.Mutex
	m    map[string]issuerState
}

const stateName = "crl-state.json"

func openState(dir string) (*stateFile, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("crl: data dir: %w", err)
	}
	s := &stateFile{path: filepath.Join(dir, stateName), m: map[string]issuerState{}}
	b, err := os.ReadFile(s.path)
	switch {
	case os.IsNotExist(err):
		return s, nil
	case err != nil:
		return nil, fmt.Errorf("crl: read state: %w", err)
	}
	if err := json.Unmarshal(b, &s.m); err != nil {
		return nil, fmt.Errorf("crl: state file %s is corrupt: %w", s.path, err)
	}
	return s, nil
}

func (s *stateFile) get(keyID string) issuerState {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.m[keyID]
}

// put records st durably before returning.
func (s *stateFile) put(keyID string, st issuerState) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	next := make(map[string]issuerState, len(s.m)+1)
	for k, v := range s.m {
		next[k] = v
	}
	next[keyID] = st
	b, err := json.MarshalIndent(next, "", "  ")
	if err != nil {
		return err
	}
	tmp := s.path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("crl: write state: %w", err)
	}
	if _, err = f.Write(b); err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, s.path)
	}
	if err == nil {
		var d *os.File
		if d, err = os.Open(filepath.Dir(s.path)); err == nil {
			err = d.Sync()
			d.Close()
		}
	}
	if err != nil {
		return fmt.Errorf("crl: write state: %w", err)
	}
	s.m = next
	return nil
}
