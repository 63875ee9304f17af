package cawire

import (
	"github.com/palisade-id/palisade/ca"
	"github.com/palisade-id/palisade/crl"
)

// Issuers lists the CA's live intermediates for crl.Options.Issuers; the
// one in the "active" slot is served at /crl/current.crl.
func Issuers(c *ca.CA) crl.Issuers {
	return crl.IssuersFunc(func() []crl.Issuer {
		live := c.Issuers()
		out := make([]crl.Issuer, 0, len(live))
		for _, i := range live {
			out = append(out, crl.Issuer{KeyID: i.KeyID, Cert: i.Cert, Signer: i.Signer, Active: i.Slot == "active"})
		}
		return out
	})
}
