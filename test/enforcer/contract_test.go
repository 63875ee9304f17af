//go:build integration

package enforcer

import (
	"github.com/palisade-id/palisade/crl"
	"github.com/palisade-id/palisade/enforcer"
)

// The revocation package's checker is what cmd/palisade-agent passes as
// enforcer.Deps.Revocation; this breaks the build if the two drift apart.
var _ enforcer.RevocationChecker = (*crl.Checker)(nil)
