package agent

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"time"

	"github.com/palisade-id/palisade/ca/nodeapi"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
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

// keepaliveParams pings a silent connection during an attestation. Time is
// gRPC's default server minimum (5m, only with a stream open): a client
// pinging more often than a server's keepalive.EnforcementPolicy permits is
// sent GOAWAY "too_many_pings", and 5m is within any such policy the
// appliance has had. That is too slow to save a renewal on its own;
// Source bounds each attempt with a deadline.
var keepaliveParams = keepalive.ClientParameters{Time: 5 * time.Minute, Timeout: 20 * time.Second}

// Dial connects to the attestation endpoint at addr (host:port).
func Dial(addr string, tlsCfg *tls.Config, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	base := []grpc.DialOption{
		grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(MaxMessageBytes)),
		grpc.WithKeepaliveParams(keepaliveParams),
	}
	cc, err := grpc.NewClient("passthrough:///"+addr, append(base, opts...)...)
	if err != nil {
		return nil, fmt.Errorf("agent: dial %s: %w", addr, err)
	}
	return cc, nil
}
