package nodeapi

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/big"
	"strings"
	"time"

	"github.com/palisade-id/palisade/ca"
	"github.com/palisade-id/palisade/ca/nodeapi/nodev1"
	"github.com/palisade-id/palisade/ca/store"
	"github.com/palisade-id/palisade/ca/tlspolicy"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// NodePathPrefix is the path of node SVIDs; they come only from attestation,
// never from a CSR over this API.
const NodePathPrefix = "/palisade/node/"

// ServerPath is the path of palisade-server's own SVID.
const ServerPath = "/palisade/server"

// maxIDBytes is the longest SPIFFE ID the store accepts.
const maxIDBytes = 2048

// ErrGateUnavailable, wrapped by a Gate error, means the gate could not
// decide (e.g. its store failed): the call is refused as Unavailable, which
// a client retries, rather than PermissionDenied.
var ErrGateUnavailable = errors.New("nodeapi: caller check unavailable")

// Entries lists registration entries.
type Entries interface {
	ListEntries(store.EntryFilter) ([]store.Entry, error)
}

// Certs looks up issued certificates, for the caller's revocation status.
type Certs interface {
	Cert(serial *big.Int) (store.CertRecord, error)
}

// Options configure the service.
type Options struct {
	CA      *ca.CA
	Entries Entries
	Certs   Certs
	// Gate, if set, may refuse the node a verified caller descends from
	// (e.g. a banned node; see ErrGateUnavailable). It runs before and again
	// after each issuance.
	Gate func(ctx context.Context, node spiffeid.ID) error
	// Revoke, if set, durably revokes (and audits) serial, an X509-SVID
	// issued through a descendant of node, which Gate refused once the SVID
	// was recorded.
	Revoke func(ctx context.Context, node spiffeid.ID, serial *big.Int) error
	Log    *slog.Logger
}

// Service implements nodev1.NodeServer.
type Service struct {
	nodev1.UnimplementedNodeServer
	o Options
}

// New returns the service.
func New(o Options) *Service {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	return &Service{o: o}
}

// Register adds the service to g.
func (s *Service) Register(g *grpc.Server) { nodev1.RegisterNodeServer(g, s) }

// ServerTLS returns the listener's TLS configuration. Client certificates are
// requested but verified per call, so unauthenticated services (node
// attestation) can share the listener.
func ServerTLS(getCert func(*tls.ClientHelloInfo) (*tls.Certificate, error)) *tls.Config {
	return tlspolicy.Apply(&tls.Config{
		GetCertificate: getCert,
		ClientAuth:     tls.RequestClientCert,
	})
}

// Caller verifies the peer's X509-SVID against bundle and returns its ID and
// leaf certificate.
func Caller(ctx context.Context, bundle *x509bundle.Bundle) (spiffeid.ID, *x509.Certificate, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return spiffeid.ID{}, nil, errors.New("no peer")
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return spiffeid.ID{}, nil, errors.New("not a TLS connection")
	}
	certs := ti.State.PeerCertificates
	if len(certs) == 0 {
		return spiffeid.ID{}, nil, errors.New("no client X509-SVID presented")
	}
	id, _, err := x509svid.Verify(certs, bundle)
	if err != nil {
		return spiffeid.ID{}, nil, fmt.Errorf("client X509-SVID: %w", err)
	}
	return id, certs[0], nil
}

// authenticate returns the verified caller and the node it descends from:
// itself for a node SVID, else the node recorded for its own SVID (or
// itself if none is, as for an SVID the operator issued). An SVID issued
// through the caller is recorded under that node, so banning the node
// revokes its workloads' descendants too.
func (s *Service) authenticate(ctx context.Context) (caller, node spiffeid.ID, err error) {
	b := x509bundle.FromX509Authorities(s.o.CA.TrustDomain(), []*x509.Certificate{s.o.CA.Root()})
	id, leaf, err := Caller(ctx, b)
	if err != nil {
		return spiffeid.ID{}, spiffeid.ID{}, status.Error(codes.Unauthenticated, err.Error())
	}
	rec, err := s.o.Certs.Cert(leaf.SerialNumber)
	switch {
	case errors.Is(err, store.ErrCertNotFound):
		return spiffeid.ID{}, spiffeid.ID{}, status.Errorf(codes.Unauthenticated, "client SVID serial %x was not issued by this appliance", leaf.SerialNumber)
	case err != nil:
		return spiffeid.ID{}, spiffeid.ID{}, status.Errorf(codes.Unavailable, "revocation lookup: %v", err)
	case rec.Status == store.CertRevoked:
		return spiffeid.ID{}, spiffeid.ID{}, status.Errorf(codes.PermissionDenied, "client SVID serial %x is revoked", leaf.SerialNumber)
	}
	node = id
	if !strings.HasPrefix(id.Path(), NodePathPrefix) && rec.NodeID != "" {
		if node, err = spiffeid.FromString(rec.NodeID); err != nil {
			return spiffeid.ID{}, spiffeid.ID{}, status.Errorf(codes.Internal, "client SVID serial %x is recorded under node %q: %v", leaf.SerialNumber, rec.NodeID, err)
		}
	}
	if err := s.gate(ctx, node); err != nil {
		return spiffeid.ID{}, spiffeid.ID{}, err
	}
	return id, node, nil
}

// gate asks Gate about node and returns the refusal as a gRPC status.
func (s *Service) gate(ctx context.Context, node spiffeid.ID) error {
	if s.o.Gate == nil {
		return nil
	}
	err := s.o.Gate(ctx, node)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ErrGateUnavailable):
		return status.Errorf(codes.Unavailable, "%s: %v", node, err)
	}
	return status.Errorf(codes.PermissionDenied, "%s: %v", node, err)
}

// afterIssue runs once the X509-SVID serial, recorded under node, is
// durably recorded (SignX509SVID returns only then) and before it leaves.
// It asks Gate again and, if node is now refused (or Gate cannot tell),
// revokes serial and refuses. A ban sets its flag, then revokes what the
// CA holds for the node; an issuance records, then asks Gate. Whichever
// second step comes last sees the other's first, so the SVID is revoked by
// the ban or here.
func (s *Service) afterIssue(ctx context.Context, node spiffeid.ID, serial *big.Int) error {
	gerr := s.gate(ctx, node)
	if gerr == nil {
		return nil
	}
	if s.o.Revoke != nil {
		// The revocation must complete even if the caller hangs up.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		if err := s.o.Revoke(rctx, node, serial); err != nil {
			s.o.Log.Error("SVID issued to a refused node could not be revoked", "node", node.String(),
				"serial", fmt.Sprintf("%x", serial), "err", err)
			return status.Errorf(codes.Unavailable, "%s (revoking the SVID just issued failed: %v)", status.Convert(gerr).Message(), err)
		}
		s.o.Log.Warn("revoked SVID whose issuance raced a refusal of its node", "node", node.String(),
			"serial", fmt.Sprintf("%x", serial), "reason", status.Convert(gerr).Message())
	}
	return gerr
}

// authorizedEntry finds the entry parented by caller for id.
func (s *Service) authorizedEntry(caller, id spiffeid.ID) (store.Entry, error) {
	if n := len(id.String()); n > maxIDBytes {
		return store.Entry{}, status.Errorf(codes.InvalidArgument, "SPIFFE ID of %d bytes (max %d)", n, maxIDBytes)
	}
	if strings.HasPrefix(id.Path(), NodePathPrefix) || id.Path() == ServerPath {
		return store.Entry{}, status.Errorf(codes.PermissionDenied, "%s is a node or server identity: it is only issued through attestation", id)
	}
	es, err := s.o.Entries.ListEntries(store.EntryFilter{ParentID: caller.String(), SPIFFEID: id.String()})
	if err != nil {
		return store.Entry{}, status.Errorf(codes.Unavailable, "entries: %v", err)
	}
	if len(es) == 0 {
		return store.Entry{}, status.Errorf(codes.PermissionDenied, "%s is not authorised for %s (no registration entry with that parent)", caller, id)
	}
	return es[0], nil
}

// requestTTL is the TTL a request's ttl_seconds asks for (0: the entry's).
// An entry's TTL, when set, is also the most a request may ask for.
func requestTTL(secs int64, entryTTL time.Duration, kind string) (time.Duration, error) {
	switch {
	case secs < 0:
		return 0, status.Error(codes.InvalidArgument, "ttl_seconds must not be negative")
	case secs > math.MaxInt64/int64(time.Second):
		return 0, status.Errorf(codes.InvalidArgument, "ttl_seconds %d out of range", secs)
	case secs == 0:
		return entryTTL, nil
	}
	ttl := time.Duration(secs) * time.Second
	if entryTTL > 0 && ttl > entryTTL {
		return 0, status.Errorf(codes.InvalidArgument, "ttl_seconds %d exceeds the entry's %s TTL of %s", secs, kind, entryTTL)
	}
	return ttl, nil
}

func caStatus(err error) error {
	switch {
	case ca.IsRequestError(err):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, ca.ErrNoActiveIssuer):
		return status.Error(codes.Unavailable, err.Error())
	}
	return status.Error(codes.Internal, err.Error())
}

// SignX509SVID implements nodev1.NodeServer.
func (s *Service) SignX509SVID(ctx context.Context, req *nodev1.SignX509SVIDRequest) (*nodev1.SignX509SVIDResponse, error) {
	caller, node, err := s.authenticate(ctx)
	if err != nil {
		return nil, err
	}
	csr, err := ca.ParseCSR(req.GetCsr(), s.o.CA.TrustDomain())
	if err != nil {
		return nil, caStatus(err)
	}
	entry, err := s.authorizedEntry(caller, csr.ID)
	if err != nil {
		return nil, err
	}
	ttl, err := requestTTL(req.GetTtlSeconds(), entry.X509TTL, "X509-SVID")
	if err != nil {
		return nil, err
	}
	svid, err := s.o.CA.SignX509SVID(ctx, ca.X509Request{
		CSR: csr, ID: csr.ID, TTL: ttl, DNSNames: entry.DNSNames,
		NodeID: node.String(), EntryID: entry.ID, Actor: caller.String(),
	})
	if err != nil {
		return nil, caStatus(err)
	}
	if err := s.afterIssue(ctx, node, svid.Certificates[0].SerialNumber); err != nil {
		return nil, err
	}
	resp := &nodev1.SignX509SVIDResponse{EntryId: entry.ID}
	for _, c := range svid.Certificates {
		resp.CertChain = append(resp.CertChain, c.Raw)
	}
	return resp, nil
}

// MintJWTSVID implements nodev1.NodeServer.
func (s *Service) MintJWTSVID(ctx context.Context, req *nodev1.MintJWTSVIDRequest) (*nodev1.MintJWTSVIDResponse, error) {
	caller, node, err := s.authenticate(ctx)
	if err != nil {
		return nil, err
	}
	id, err := spiffeid.FromString(req.GetSpiffeId())
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "spiffe_id %q: %v", req.GetSpiffeId(), err)
	}
	entry, err := s.authorizedEntry(caller, id)
	if err != nil {
		return nil, err
	}
	ttl, err := requestTTL(req.GetTtlSeconds(), entry.JWTTTL, "JWT-SVID")
	if err != nil {
		return nil, err
	}
	tok, err := s.o.CA.SignJWTSVID(ctx, ca.JWTRequest{ID: id, Audience: req.GetAudience(), TTL: ttl, Actor: caller.String()})
	if err != nil {
		return nil, caStatus(err)
	}
	// A JWT-SVID cannot be revoked: withhold it if a ban landed meanwhile.
	if err := s.gate(ctx, node); err != nil {
		return nil, err
	}
	return &nodev1.MintJWTSVIDResponse{Token: tok.Token, ExpiresAt: tok.ExpiresAt.Unix()}, nil
}

// FetchBundle implements nodev1.NodeServer.
func (s *Service) FetchBundle(ctx context.Context, _ *nodev1.FetchBundleRequest) (*nodev1.FetchBundleResponse, error) {
	if _, _, err := s.authenticate(ctx); err != nil {
		return nil, err
	}
	b := s.o.CA.Bundle()
	js, err := b.Marshal()
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	seq, _ := b.SequenceNumber()
	resp := &nodev1.FetchBundleResponse{SpiffeBundle: js, Sequence: seq}
	for _, c := range b.X509Authorities() {
		resp.X509Authorities = append(resp.X509Authorities, c.Raw)
	}
	return resp, nil
}

// ListAuthorizedEntries implements nodev1.NodeServer.
func (s *Service) ListAuthorizedEntries(ctx context.Context, _ *nodev1.ListAuthorizedEntriesRequest) (*nodev1.ListAuthorizedEntriesResponse, error) {
	caller, _, err := s.authenticate(ctx)
	if err != nil {
		return nil, err
	}
	es, err := s.o.Entries.ListEntries(store.EntryFilter{ParentID: caller.String()})
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "entries: %v", err)
	}
	resp := &nodev1.ListAuthorizedEntriesResponse{}
	for _, e := range es {
		pe := &nodev1.Entry{Id: e.ID, SpiffeId: e.SPIFFEID, ParentId: e.ParentID, DnsNames: e.DNSNames,
			X509TtlSeconds: int64(e.X509TTL / time.Second), JwtTtlSeconds: int64(e.JWTTTL / time.Second)}
		for _, sel := range e.Selectors {
			pe.Selectors = append(pe.Selectors, sel.Type+":"+sel.Value)
		}
		resp.Entries = append(resp.Entries, pe)
	}
	return resp, nil
}
