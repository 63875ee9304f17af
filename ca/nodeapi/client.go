package nodeapi

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/palisade-id/palisade/ca/tlspolicy"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

// ClientTLS returns a client configuration that presents the caller's SVID
// (getCert may return nil for unauthenticated calls such as attestation) and
// accepts only a server whose X509-SVID for want verifies against roots.
func ClientTLS(td spiffeid.TrustDomain, roots []*x509.Certificate, want spiffeid.ID,
	getCert func(*tls.CertificateRequestInfo) (*tls.Certificate, error)) *tls.Config {
	b := x509bundle.FromX509Authorities(td, roots)
	return tlspolicy.Apply(&tls.Config{
		// Standard hostname verification does not apply to SPIFFE IDs; the
		// chain and ID are checked below.
		InsecureSkipVerify: true,
		GetClientCertificate: func(cri *tls.CertificateRequestInfo) (*tls.Certificate, error) {
			if getCert == nil {
				return &tls.Certificate{}, nil
			}
			return getCert(cri)
		},
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) == 0 {
				return errors.New("nodeapi: server presented no certificate")
			}
			id, _, err := x509svid.ParseAndVerify(raw, b)
			if err != nil {
				return fmt.Errorf("nodeapi: server SVID: %w", err)
			}
			if id != want {
				return fmt.Errorf("nodeapi: server is %s, want %s", id, want)
			}
			return nil
		},
	})
}

// Dial connects to palisade-server's node API at addr.
func Dial(addr string, td spiffeid.TrustDomain, roots []*x509.Certificate,
	getCert func(*tls.CertificateRequestInfo) (*tls.Certificate, error), opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	want, err := spiffeid.FromPath(td, ServerPath)
	if err != nil {
		return nil, err
	}
	opts = append([]grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(ClientTLS(td, roots, want, getCert)))}, opts...)
	return grpc.NewClient(addr, opts...)
}
