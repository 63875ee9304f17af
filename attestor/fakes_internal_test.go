package attestor

import (
	"context"
	"encoding/hex"
	"fmt"
	"sync"
	"testing"

	"github.com/palisade-id/palisade/attestor/verify"
	"github.com/palisade-id/palisade/attestor/verify/verifytest"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// memStore is an in-memory Store for internal tests and benchmarks (the
// bbolt store imports this package).
type memStore struct {
	mu       sync.Mutex
	manifest map[string]ManifestEntry
	policy   []byte
	version  uint64
	nodes    map[string]NodeRecord
}

func newMemStore() *memStore {
	return &memStore{manifest: map[string]ManifestEntry{}, nodes: map[string]NodeRecord{}}
}

func (m *memStore) PutManifestEntry(_ context.Context, e ManifestEntry) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.manifest[e.ID] = e
	return nil
}
func (m *memStore) DeleteManifestEntry(_ context.Context, id string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.manifest[id]; !ok {
		return ErrNotFound
	}
	delete(m.manifest, id)
	return nil
}
func (m *memStore) ManifestEntries(context.Context) ([]ManifestEntry, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []ManifestEntry
	for _, e := range m.manifest {
		out = append(out, e)
	}
	return out, nil
}
func (m *memStore) PutPolicy(_ context.Context, v uint64, raw []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if v <= m.version {
		return ErrPolicyVersion
	}
	m.version, m.policy = v, raw
	return nil
}
func (m *memStore) Policy(context.Context) ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.policy, nil
}
func (m *memStore) Node(_ context.Context, id string) (NodeRecord, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	r, ok := m.nodes[id]
	if !ok {
		return NodeRecord{}, ErrNotFound
	}
	return r, nil
}
func (m *memStore) Nodes(context.Context) ([]NodeRecord, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []NodeRecord
	for _, r := range m.nodes {
		out = append(out, r)
	}
	return out, nil
}
func (m *memStore) UpdateNode(_ context.Context, id string, fn func(*NodeRecord, bool) error) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	r, ok := m.nodes[id]
	if err := fn(&r, ok); err != nil {
		return err
	}
	m.nodes[id] = r
	return nil
}

type staticIssuer struct{ chain [][]byte }

func (s staticIssuer) IssueNodeSVID(context.Context, spiffeid.ID, []byte) ([][]byte, error) {
	return s.chain, nil
}

type countingAuditor struct {
	mu sync.Mutex
	n  map[string]int
}

func (a *countingAuditor) Append(_ context.Context, kind, _ string, _ any) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.n == nil {
		a.n = map[string]int{}
	}
	a.n[kind]++
	return nil
}

var (
	benchNodeOnce sync.Once
	benchNode     *verifytest.Node
)

func sharedNode() *verifytest.Node {
	benchNodeOnce.Do(func() {
		n, err := verifytest.NewNode()
		if err != nil {
			panic(err)
		}
		n.Extend(7, []byte("boot"))
		benchNode = n
	})
	return benchNode
}

// newTestService returns a Service admitting sharedNode as class "worker".
func newTestService(tb testing.TB) (*Service, *memStore, *countingAuditor) {
	tb.Helper()
	n := sharedNode()
	st := newMemStore()
	aud := &countingAuditor{}
	s, err := New(context.Background(), spiffeid.RequireTrustDomainFromString("example.org"), Config{},
		Deps{Store: st, Issuer: staticIssuer{chain: [][]byte{{0x30}}}, Auditor: aud})
	if err != nil {
		tb.Fatal(err)
	}
	h, _ := verify.HashPublicKey(&n.EKKey.PublicKey)
	e, err := ParseManifestInput([]byte(hex.EncodeToString(h[:])), "worker", "")
	if err != nil {
		tb.Fatal(err)
	}
	ctx := context.Background()
	if _, err := s.AddManifestEntry(ctx, "t", e); err != nil {
		tb.Fatal(err)
	}
	pol := fmt.Sprintf("version: 1\nclasses:\n  worker:\n    pcrs:\n      0: [%q]\n      7: [%q]\n",
		hex.EncodeToString(n.PCR(0)), hex.EncodeToString(n.PCR(7)))
	if _, err := s.SetPCRPolicy(ctx, "t", []byte(pol)); err != nil {
		tb.Fatal(err)
	}
	return s, st, aud
}
