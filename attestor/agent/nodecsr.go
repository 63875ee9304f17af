package agent

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"fmt"
	"net/url"

	"github.com/palisade-id/palisade/attestor/verify"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// ExpectedNodeID is the SPIFFE ID the appliance gives the node whose TPM
// has this EK (TPMT_PUBLIC): spiffe://<td>/palisade/node/<EK hash>.
func ExpectedNodeID(td spiffeid.TrustDomain, ekPublic []byte) (spiffeid.ID, error) {
	ek, err := verify.ParseEKPublic(ekPublic)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("agent: EK: %w", err)
	}
	return verify.NodeID(td, ek.Hash)
}

// NewNodeCSR is the node SVID request for key naming the node's expected
// ID. The attestor still decides the ID from the EK it verified; the CA
// issues only when the request names that same ID, so a node configured
// for another trust domain or TPM is refused rather than misnamed.
func NewNodeCSR(key crypto.Signer, id spiffeid.ID) ([]byte, error) {
	u, err := url.Parse(id.String())
	if err != nil {
		return nil, err
	}
	return x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{u}}, key)
}
