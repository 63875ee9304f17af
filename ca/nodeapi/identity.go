package nodeapi

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net/url"
	"sync"
	"time"

	"github.com/palisade-id/palisade/ca"
	"github.com/palisade-id/palisade/ca/store"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Identity keeps palisade-server's own X509-SVID fresh. Its key lives only
// in memory: a restart simply issues a new one.
type Identity struct {
	ca *ca.CA
	id spiffeid.ID

	mu   sync.RWMutex
	cert *tls.Certificate
}

// NewIdentity issues the server's first SVID.
func NewIdentity(ctx context.Context, c *ca.CA) (*Identity, error) {
	id, err := spiffeid.FromPath(c.TrustDomain(), ServerPath)
	if err != nil {
		return nil, err
	}
	i := &Identity{ca: c, id: id}
	if err := i.renew(ctx); err != nil {
		return nil, err
	}
	return i, nil
}

// ID is the server's SPIFFE ID.
func (i *Identity) ID() spiffeid.ID { return i.id }

func (i *Identity) renew(ctx context.Context) error {
	cert, err := IssueLocal(ctx, i.ca, i.id, store.KindServerSVID, "system")
	if err != nil {
		return fmt.Errorf("nodeapi: server SVID: %w", err)
	}
	i.mu.Lock()
	i.cert = cert
	i.mu.Unlock()
	return nil
}

// IssueLocal has c issue an SVID for id to an in-memory key, for the
// appliance's own services.
func IssueLocal(ctx context.Context, c *ca.CA, id spiffeid.ID, kind, actor string) (*tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id.URL()}}, key)
	if err != nil {
		return nil, err
	}
	csr, err := ca.ParseCSR(der, c.TrustDomain())
	if err != nil {
		return nil, err
	}
	svid, err := c.SignX509SVID(ctx, ca.X509Request{CSR: csr, ID: id, Kind: kind, Actor: actor})
	if err != nil {
		return nil, err
	}
	out := &tls.Certificate{PrivateKey: key, Leaf: svid.Certificates[0]}
	for _, cert := range svid.Certificates {
		out.Certificate = append(out.Certificate, cert.Raw)
	}
	return out, nil
}

// GetCertificate serves the current SVID to TLS.
func (i *Identity) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	i.mu.RLock()
	defer i.mu.RUnlock()
	return i.cert, nil
}

// Run renews the SVID at half its life until ctx ends, retrying failures
// every few seconds.
func (i *Identity) Run(ctx context.Context, log *slog.Logger) {
	for {
		i.mu.RLock()
		leaf := i.cert.Leaf
		i.mu.RUnlock()
		wait := time.Until(leaf.NotBefore.Add(leaf.NotAfter.Sub(leaf.NotBefore) / 2))
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		if err := i.renew(ctx); err != nil {
			log.Error("server SVID renewal failed", "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(5 * time.Second):
			}
		}
	}
}
