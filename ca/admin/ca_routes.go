package admin

import (
	"context"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/palisade-id/palisade/ca"
	"github.com/palisade-id/palisade/ca/store"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// CAStore is the part of the store the CA routes use.
type CAStore interface {
	CreateEntry(store.Entry) (store.Entry, error)
	Entry(id string) (store.Entry, error)
	DeleteEntry(id string) (store.Entry, error)
	ListEntries(store.EntryFilter) ([]store.Entry, error)
	Stats() (store.Stats, error)
}

// Health reports whether a dependency works.
type Health func(ctx context.Context) error

// CARoutes wires the CA's operator verbs. Every change is audited before
// it is committed: a change the audit log cannot record does not happen.
type CARoutes struct {
	CA     *ca.CA
	Store  CAStore
	Audit  ca.Auditor
	Checks map[string]Health // named health checks, e.g. "hsm", "store"

	// entryMu serialises entry changes, so the checks made before the
	// audit record still hold when the store commits.
	entryMu sync.Mutex
}

// Entry is the wire form of a registration entry.
type Entry struct {
	ID        string   `json:"id,omitempty"`
	SPIFFEID  string   `json:"spiffe_id"`
	ParentID  string   `json:"parent_id"`
	Selectors []string `json:"selectors,omitempty"` // "type:value"
	X509TTL   string   `json:"x509_svid_ttl,omitempty"`
	JWTTTL    string   `json:"jwt_svid_ttl,omitempty"`
	DNSNames  []string `json:"dns_names,omitempty"`
	CreatedAt string   `json:"created_at,omitempty"`
}

// MintX509Request asks the CA for an X509-SVID from a CSR.
type MintX509Request struct {
	SPIFFEID string   `json:"spiffe_id"`
	CSRPEM   string   `json:"csr_pem"`
	TTL      string   `json:"ttl,omitempty"`
	DNSNames []string `json:"dns_names,omitempty"`
}

// MintX509Response holds the issued chain.
type MintX509Response struct {
	ChainPEM  string    `json:"chain_pem"` // leaf, then intermediate
	BundlePEM string    `json:"bundle_pem"`
	Serial    string    `json:"serial"`
	NotAfter  time.Time `json:"not_after"`
}

// MintJWTRequest asks for a JWT-SVID.
type MintJWTRequest struct {
	SPIFFEID string   `json:"spiffe_id"`
	Audience []string `json:"audience"`
	TTL      string   `json:"ttl,omitempty"`
}

// MintJWTResponse holds the token.
type MintJWTResponse struct {
	Token     string    `json:"token"`
	ExpiresAt time.Time `json:"expires_at"`
}

// BundleResponse is the trust bundle in both formats.
type BundleResponse struct {
	PEM    string `json:"pem"`
	SPIFFE string `json:"spiffe"`
}

// HealthResponse is the healthcheck answer.
type HealthResponse struct {
	Status  string            `json:"status"` // "ok" or "degraded"
	Checks  map[string]string `json:"checks"`
	Issuers []IssuerInfo      `json:"issuers"`
	Stats   store.Stats       `json:"stats"`
}

// IssuerInfo describes a live intermediate.
type IssuerInfo struct {
	KeyID    string    `json:"key_id"`
	Slot     string    `json:"slot"`
	NotAfter time.Time `json:"not_after"`
}

// ErrBadRequest marks operator input the server refuses.
var ErrBadRequest = errors.New("bad request")

// Register adds the CA routes and maps the CA's and store's errors.
func (rt *CARoutes) Register(m *Mux) {
	for _, e := range append(ca.RequestErrors(), ErrBadRequest, store.ErrInvalid) {
		m.MapError(e, http.StatusBadRequest)
	}
	m.MapError(store.ErrEntryNotFound, http.StatusNotFound)
	m.MapError(store.ErrEntryExists, http.StatusConflict)
	Handle(m, "POST /v1/entries", rt.createEntry)
	Handle(m, "GET /v1/entries", rt.listEntries)
	Handle(m, "GET /v1/entries/{id}", rt.showEntry)
	Handle(m, "DELETE /v1/entries/{id}", rt.deleteEntry)
	Handle(m, "GET /v1/bundle", rt.bundle)
	Handle(m, "POST /v1/x509/mint", rt.mintX509)
	Handle(m, "POST /v1/jwt/mint", rt.mintJWT)
	Handle(m, "GET /v1/health", rt.health)
}

func (rt *CARoutes) parseID(field, s string) (spiffeid.ID, error) {
	id, err := spiffeid.FromString(s)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("%w: %s %q: %v", ErrBadRequest, field, s, err)
	}
	if id.TrustDomain() != rt.CA.TrustDomain() {
		return spiffeid.ID{}, fmt.Errorf("%w: %s %s", ca.ErrForeignTrustDomain, field, id)
	}
	return id, nil
}

func parseTTL(field, s string) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return 0, fmt.Errorf("%w: %s %q is not a non-negative duration", ErrBadRequest, field, s)
	}
	return d, nil
}

func (rt *CARoutes) createEntry(ctx context.Context, op Operator, _ *http.Request, req *Entry) (Entry, error) {
	id, err := rt.parseID("spiffe_id", req.SPIFFEID)
	if err != nil {
		return Entry{}, err
	}
	if id.Path() == "" {
		// The CA refuses an SVID for the trust domain itself; an entry for
		// it could never be served.
		return Entry{}, fmt.Errorf("%w: spiffe_id %s names the trust domain, not a workload", ErrBadRequest, id)
	}
	parent, err := rt.parseID("parent_id", req.ParentID)
	if err != nil {
		return Entry{}, err
	}
	e := store.Entry{SPIFFEID: id.String(), ParentID: parent.String(), DNSNames: req.DNSNames}
	cfg := rt.CA.Config()
	if e.X509TTL, err = parseTTL("x509_svid_ttl", req.X509TTL); err != nil {
		return Entry{}, err
	}
	if e.X509TTL > cfg.MaxX509SVIDTTL {
		return Entry{}, fmt.Errorf("%w: x509_svid_ttl %s > %s", ca.ErrTTLTooLong, e.X509TTL, cfg.MaxX509SVIDTTL)
	}
	if e.JWTTTL, err = parseTTL("jwt_svid_ttl", req.JWTTTL); err != nil {
		return Entry{}, err
	}
	if e.JWTTTL > cfg.MaxJWTSVIDTTL {
		return Entry{}, fmt.Errorf("%w: jwt_svid_ttl %s > %s", ca.ErrTTLTooLong, e.JWTTTL, cfg.MaxJWTSVIDTTL)
	}
	for _, s := range req.Selectors {
		typ, val, ok := strings.Cut(s, ":")
		if !ok || typ == "" || val == "" {
			return Entry{}, fmt.Errorf("%w: selector %q is not type:value", ErrBadRequest, s)
		}
		e.Selectors = append(e.Selectors, store.Selector{Type: typ, Value: val})
	}
	// Everything the store would refuse is refused before the audit
	// record, which then names the entry exactly as it will be stored.
	if e, err = store.PrepareEntry(e); err != nil {
		return Entry{}, err
	}
	rt.entryMu.Lock()
	defer rt.entryMu.Unlock()
	same, err := rt.Store.ListEntries(store.EntryFilter{SPIFFEID: e.SPIFFEID, ParentID: e.ParentID})
	if err != nil {
		return Entry{}, err
	}
	for _, o := range same {
		if slices.Equal(o.Selectors, e.Selectors) {
			return Entry{}, fmt.Errorf("%w: %s (parent %s) as %s", store.ErrEntryExists, e.SPIFFEID, e.ParentID, o.ID)
		}
	}
	out := entryOut(e)
	if err := rt.Audit.Append(ctx, "entry.created", op.String(), out); err != nil {
		return Entry{}, fmt.Errorf("admin: audit entry creation: %w", err)
	}
	// A failed commit leaves a record of the attempt, never an entry
	// without a record.
	created, err := rt.Store.CreateEntry(e)
	if err != nil {
		return Entry{}, err
	}
	return entryOut(created), nil
}

func entryOut(e store.Entry) Entry {
	out := Entry{ID: e.ID, SPIFFEID: e.SPIFFEID, ParentID: e.ParentID, DNSNames: e.DNSNames}
	if e.X509TTL > 0 {
		out.X509TTL = e.X509TTL.String()
	}
	if e.JWTTTL > 0 {
		out.JWTTTL = e.JWTTTL.String()
	}
	for _, s := range e.Selectors {
		out.Selectors = append(out.Selectors, s.Type+":"+s.Value)
	}
	if !e.CreatedAt.IsZero() {
		out.CreatedAt = e.CreatedAt.UTC().Format(time.RFC3339)
	}
	return out
}

func (rt *CARoutes) listEntries(_ context.Context, _ Operator, r *http.Request, _ *Empty) ([]Entry, error) {
	f := store.EntryFilter{ParentID: r.URL.Query().Get("parent_id"), SPIFFEID: r.URL.Query().Get("spiffe_id")}
	es, err := rt.Store.ListEntries(f)
	if err != nil {
		return nil, err
	}
	out := make([]Entry, 0, len(es))
	for _, e := range es {
		out = append(out, entryOut(e))
	}
	return out, nil
}

func (rt *CARoutes) showEntry(_ context.Context, _ Operator, r *http.Request, _ *Empty) (Entry, error) {
	e, err := rt.Store.Entry(r.PathValue("id"))
	if err != nil {
		return Entry{}, err
	}
	return entryOut(e), nil
}

func (rt *CARoutes) deleteEntry(ctx context.Context, op Operator, r *http.Request, _ *Empty) (Entry, error) {
	id := r.PathValue("id")
	rt.entryMu.Lock()
	defer rt.entryMu.Unlock()
	// An unknown entry is refused before any record is written.
	e, err := rt.Store.Entry(id)
	if err != nil {
		return Entry{}, err
	}
	out := entryOut(e)
	if err := rt.Audit.Append(ctx, "entry.deleted", op.String(), out); err != nil {
		return Entry{}, fmt.Errorf("admin: audit entry deletion: %w", err)
	}
	if _, err := rt.Store.DeleteEntry(id); err != nil {
		return Entry{}, err
	}
	return out, nil
}

func (rt *CARoutes) bundle(_ context.Context, _ Operator, _ *http.Request, _ *Empty) (BundleResponse, error) {
	js, err := rt.CA.BundleJSON()
	if err != nil {
		return BundleResponse{}, err
	}
	return BundleResponse{PEM: string(rt.CA.BundlePEM()), SPIFFE: string(js)}, nil
}

func (rt *CARoutes) mintX509(ctx context.Context, op Operator, _ *http.Request, req *MintX509Request) (MintX509Response, error) {
	var id spiffeid.ID
	if req.SPIFFEID != "" {
		var err error
		if id, err = rt.parseID("spiffe_id", req.SPIFFEID); err != nil {
			return MintX509Response{}, err
		}
	}
	ttl, err := parseTTL("ttl", req.TTL)
	if err != nil {
		return MintX509Response{}, err
	}
	csr, err := ca.ParseCSR([]byte(req.CSRPEM), rt.CA.TrustDomain())
	if err != nil {
		return MintX509Response{}, err
	}
	svid, err := rt.CA.SignX509SVID(ctx, ca.X509Request{CSR: csr, ID: id, TTL: ttl, DNSNames: req.DNSNames, Actor: op.String()})
	if err != nil {
		return MintX509Response{}, err
	}
	return MintX509Response{
		ChainPEM:  string(svid.ChainPEM()),
		BundlePEM: string(rt.CA.BundlePEM()),
		Serial:    svid.Record.Serial.Text(16),
		NotAfter:  svid.Record.NotAfter,
	}, nil
}

func (rt *CARoutes) mintJWT(ctx context.Context, op Operator, _ *http.Request, req *MintJWTRequest) (MintJWTResponse, error) {
	id, err := rt.parseID("spiffe_id", req.SPIFFEID)
	if err != nil {
		return MintJWTResponse{}, err
	}
	ttl, err := parseTTL("ttl", req.TTL)
	if err != nil {
		return MintJWTResponse{}, err
	}
	tok, err := rt.CA.SignJWTSVID(ctx, ca.JWTRequest{ID: id, Audience: req.Audience, TTL: ttl, Actor: op.String()})
	if err != nil {
		return MintJWTResponse{}, err
	}
	return MintJWTResponse{Token: tok.Token, ExpiresAt: tok.ExpiresAt}, nil
}

func (rt *CARoutes) health(ctx context.Context, _ Operator, _ *http.Request, _ *Empty) (HealthResponse, error) {
	resp := HealthResponse{Status: "ok", Checks: map[string]string{}}
	for name, check := range rt.Checks {
		if err := check(ctx); err != nil {
			resp.Status = "degraded"
			resp.Checks[name] = err.Error()
		} else {
			resp.Checks[name] = "ok"
		}
	}
	for _, is := range rt.CA.Issuers() {
		resp.Issuers = append(resp.Issuers, IssuerInfo{KeyID: is.KeyID, Slot: is.Slot, NotAfter: is.Cert.NotAfter})
	}
	if st, err := rt.Store.Stats(); err == nil {
		resp.Stats = st
	}
	return resp, nil
}

// DecodePEMCSR is a convenience for clients holding a DER CSR.
func DecodePEMCSR(der []byte) string {
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}
