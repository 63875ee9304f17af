package cawire

import (
	"context"
	"math/big"

	"github.com/palisade-id/palisade/ca"
	"github.com/palisade-id/palisade/ca/store"
	"github.com/palisade-id/palisade/crl"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// NodeIssuer has the CA issue node SVIDs; it returns a chain only once its
// certificate is durably recorded.
type NodeIssuer struct{ CA *ca.CA }

// IssueNodeSVID implements attestor.NodeIssuer.
func (n NodeIssuer) IssueNodeSVID(ctx context.Context, id spiffeid.ID, csrDER []byte) ([][]byte, error) {
	csr, err := ca.ParseCSR(csrDER, n.CA.TrustDomain())
	if err != nil {
		return nil, err
	}
	svid, err := n.CA.SignX509SVID(ctx, ca.X509Request{CSR: csr, ID: id, Kind: store.KindNodeSVID, NodeID: id.String(), Actor: id.String()})
	if err != nil {
		return nil, err
	}
	out := make([][]byte, 0, len(svid.Certificates))
	for _, c := range svid.Certificates {
		out = append(out, c.Raw)
	}
	return out, nil
}

// Revoker revokes, durably and audited, through the revocation service.
type Revoker struct{ Svc *crl.Service }

// RevokeNode implements attestor.Revoker.
func (r Revoker) RevokeNode(ctx context.Context, nodeID string, reason int) (int, error) {
	return r.Svc.RevokeNode(ctx, "attestor", nodeID, reason)
}

// Revoke implements attestor.Revoker.
func (r Revoker) Revoke(ctx context.Context, serial *big.Int, reason int) error {
	_, err := r.Svc.Revoke(ctx, "attestor", serial, reason)
	return err
}
