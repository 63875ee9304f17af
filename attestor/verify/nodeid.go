package verify

import (
	"encoding/hex"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// NodeID is the SPIFFE ID of the node whose EK hashes to ekHash:
// spiffe://<td>/palisade/node/<hex sha256 of EKpub DER (PKIX)>.
func NodeID(td spiffeid.TrustDomain, ekHash [32]byte) (spiffeid.ID, error) {
	id, err := spiffeid.FromSegments(td, "palisade", "node", hex.EncodeToString(ekHash[:]))
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("verify: node ID: %w", err)
	}
	return id, nil
}
