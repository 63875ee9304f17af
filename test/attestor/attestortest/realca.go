package attestortest

import (
	"context"

	"github.com/palisade-id/palisade/attestor/cawire"
	"github.com/palisade-id/palisade/ca"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// CAIssuer is palisade-server's NodeIssuer (cawire.NodeIssuer) with hooks:
// Before and After, if set, run around the signing, so a test can
// interleave other work there.
type CAIssuer struct {
	CA            *ca.CA
	Before, After func()
}

// IssueNodeSVID implements attestor.NodeIssuer.
func (i *CAIssuer) IssueNodeSVID(ctx context.Context, id spiffeid.ID, csrDER []byte) ([][]byte, error) {
	if i.Before != nil {
		i.Before()
	}
	chain, err := cawire.NodeIssuer{CA: i.CA}.IssueNodeSVID(ctx, id, csrDER)
	if err == nil && i.After != nil {
		i.After()
	}
	return chain, err
}
