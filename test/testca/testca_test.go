package testca

import (
	"crypto/x509"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

func TestMintedSVIDVerifies(t *testing.T) {
	ca := New(t, "example.org")
	td := spiffeid.RequireTrustDomainFromString("example.org")
	bundle := x509bundle.FromX509Authorities(td, []*x509.Certificate{ca.Root()})
	tests := []struct {
		name    string
		mint    func() []*x509.Certificate
		wantErr bool
	}{
		{"valid", func() []*x509.Certificate {
			_, chain, _ := ca.MintX509SVID(t, "spiffe://example.org/web", time.Hour)
			return chain
		}, false},
		{"expired", func() []*x509.Certificate {
			_, chain, _ := ca.MintX509SVIDWith(t, "spiffe://example.org/web", time.Hour, SVIDOptions{
				NotBefore: time.Now().Add(-2 * time.Hour), NotAfter: time.Now().Add(-time.Hour)})
			return chain
		}, true},
		{"foreign-domain-in-name-constraint", func() []*x509.Certificate {
			_, chain, _ := ca.MintX509SVID(t, "spiffe://evil.org/web", time.Hour)
			return chain
		}, true},
		{"self-signed", func() []*x509.Certificate {
			c, _ := SelfSigned(t, "spiffe://example.org/web", time.Hour)
			return []*x509.Certificate{c}
		}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, _, err := x509svid.Verify(tt.mint(), bundle)
			if (err != nil) != tt.wantErr {
				t.Fatalf("Verify: err=%v wantErr=%v", err, tt.wantErr)
			}
			if err == nil && id.String() != "spiffe://example.org/web" {
				t.Fatalf("id = %s", id)
			}
		})
	}
}
