package agent

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"

	"github.com/palisade-id/palisade/ca/nodeapi"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

// MaxMessageBytes caps what the node accepts from the server (an SVID chain).
const MaxMessageBytes = 256 << 10

// ClientTLSConfig is the node's TLS configuration for the attestation
// endpoint: the server must present an X509-SVID for serverID that chains
// to roots (the trust bundle provisioned at install): identity is a SPIFFE
// ID, never a host name. The node presents no certificate.
func ClientTLSConfig(roots []*x509.Certificate, serverID spiffeid.ID) *tls.Config {
	return nodeapi.ClientTLS(serverID.TrustDomain(), roots, serverID, nil)
}

// Dial connects to the attestation endpoint at addr (host:port).
func Dial(addr string, tlsCfg *tls.Config, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	base := []grpc.DialOption{
		grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(MaxMessageBytes)),
	}
	cc, err := grpc.NewClient("passthrough:///"+addr, append(base, opts...)...)
	if err != nil {
		return nil, fmt.Errorf("agent: dial %s: %w", addr, err)
	}
	return cc, nil
}
