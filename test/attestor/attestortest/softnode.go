package attestortest

import (
	"sync"
	"testing"

	"github.com/palisade-id/palisade/attestor/verify/verifytest"
)

// softNodes are made once per test binary: RSA EK generation is slow.
var softNodes struct {
	mu    sync.Mutex
	nodes []*verifytest.Node
}

// SoftNode returns the i-th software node of the test binary (nodes with
// different i have different keys), as a copy with its own PCRs, all zero,
// and no event log, so that what one test measures does not leak into
// another.
func SoftNode(t testing.TB, i int) *verifytest.Node {
	t.Helper()
	softNodes.mu.Lock()
	defer softNodes.mu.Unlock()
	for len(softNodes.nodes) <= i {
		n, err := verifytest.NewNode()
		if err != nil {
			t.Fatal(err)
		}
		softNodes.nodes = append(softNodes.nodes, n)
	}
	n := *softNodes.nodes[i]
	n.PCRs, n.Log = map[uint32][]byte{}, nil
	return &n
}
