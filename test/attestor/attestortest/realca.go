package attestortest

import (
	"context"
	"math/big"

	"github.com/palisade-id/palisade/ca"
	"github.com/palisade-id/palisade/ca/store"
	"github.com/palisade-id/palisade/crl"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// CAIssuer is palisade-server's NodeIssuer: the real CA, which records
// each certificate durably before returning it. Before and After, if set,
// run around the signing, so a test can interleave other work there.
type CAIssuer struct {
	CA            *ca.CA
	Before, After func()
}

// IssueNodeSVID implements attestor.NodeIssuer.
func (i *CAIssuer) IssueNodeSVID(ctx context.Context, id spiffeid.ID, csrDER []byte) ([][]byte, error) {
	if i.Before != nil {
		i.Before()
	}
	csr, err := ca.ParseCSR(csrDER, i.CA.TrustDomain())
	if err != nil {
		return nil, err
	}
	svid, err := i.CA.SignX509SVID(ctx, ca.X509Request{CSR: csr, ID: id, Kind: store.KindNodeSVID, NodeID: id.String(), Actor: id.String()})
	if err != nil {
		return nil, err
	}
	if i.After != nil {
		i.After()
	}
	out := make([][]byte, 0, len(svid.Certificates))
	for _, c := range svid.Certificates {
		out = append(out, c.Raw)
	}
	return out, nil
}

// CRLRevoker is palisade-server's Revoker: the real revocation service,
// which revokes durably and audits.
type CRLRevoker struct{ Svc *crl.Service }

// RevokeNode implements attestor.Revoker.
func (r CRLRevoker) RevokeNode(ctx context.Context, nodeID string, reason int) (int, error) {
	return r.Svc.RevokeNode(ctx, "attestor", nodeID, reason)
}

// Revoke implements attestor.Revoker.
func (r CRLRevoker) Revoke(ctx context.Context, serial *big.Int, reason int) error {
	_, err := r.Svc.Revoke(ctx, "attestor", serial, reason)
	return err
}
