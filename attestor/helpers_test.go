package attestor_test

import (
	"crypto/x509"

	"github.com/palisade-id/palisade/attestor/agent"
	"github.com/palisade-id/palisade/test/testca"
)

func x509Opts(ca *testca.CA, res *agent.Result) x509.VerifyOptions {
	inter := x509.NewCertPool()
	for _, c := range res.Chain[1:] {
		inter.AddCert(c)
	}
	return x509.VerifyOptions{Roots: ca.Pool(), Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
}
