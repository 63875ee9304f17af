package admin

import (
	"context"
	"encoding/base64"
	"fmt"
	"math/big"
	"net/http"
	"strconv"
	"strings"

	"github.com/palisade-id/palisade/attestor"
	"github.com/palisade-id/palisade/attestor/verify"
	"github.com/palisade-id/palisade/ca/store"
	"github.com/palisade-id/palisade/crl"
)

// RevocationRoutes wires `palisade revoke`.
type RevocationRoutes struct {
	CRL *crl.Service
}

// RevokeRequest names a serial (hex) and an RFC 5280 reason, by name
// ("keyCompromise") or number.
type RevokeRequest struct {
	Serial string `json:"serial"`
	Reason string `json:"reason"`
}

// RevokeResponse describes the revoked certificate.
type RevokeResponse struct {
	Serial    string `json:"serial"`
	SPIFFEID  string `json:"spiffe_id"`
	NodeID    string `json:"node_id,omitempty"`
	Issuer    string `json:"issuer"`
	Reason    int    `json:"reason"`
	RevokedAt string `json:"revoked_at"`
}

// ParseSerial reads a hex serial, with or without 0x and colons.
func ParseSerial(s string) (*big.Int, error) {
	clean := strings.ReplaceAll(strings.TrimPrefix(strings.ToLower(strings.TrimSpace(s)), "0x"), ":", "")
	n, ok := new(big.Int).SetString(clean, 16)
	if !ok || n.Sign() <= 0 {
		return nil, fmt.Errorf("%w: serial %q is not a positive hex number", ErrBadRequest, s)
	}
	return n, nil
}

// ParseReason reads an RFC 5280 reason by name or number; empty is
// unspecified (0).
func ParseReason(s string) (int, error) {
	if s == "" {
		return 0, nil
	}
	if n, err := strconv.Atoi(s); err == nil {
		return n, nil
	}
	n, err := crl.ParseReason(s)
	if err != nil {
		return 0, fmt.Errorf("%w: %v", ErrBadRequest, err)
	}
	return n, nil
}

// Register adds the routes.
func (rt *RevocationRoutes) Register(m *Mux) {
	for _, e := range []error{crl.ErrBadReason, crl.ErrBadSerial, crl.ErrBadNodeID} {
		m.MapError(e, http.StatusBadRequest)
	}
	m.MapError(store.ErrCertNotFound, http.StatusNotFound)
	Handle(m, "POST /v1/revoke", rt.revoke)
}

func (rt *RevocationRoutes) revoke(ctx context.Context, op Operator, _ *http.Request, req *RevokeRequest) (RevokeResponse, error) {
	serial, err := ParseSerial(req.Serial)
	if err != nil {
		return RevokeResponse{}, err
	}
	reason, err := ParseReason(req.Reason)
	if err != nil {
		return RevokeResponse{}, err
	}
	info, err := rt.CRL.Revoke(ctx, op.String(), serial, reason)
	if err != nil {
		return RevokeResponse{}, err
	}
	return RevokeResponse{Serial: info.Serial.Text(16), SPIFFEID: info.SPIFFEID, NodeID: info.NodeID,
		Issuer: info.IssuerKeyID, Reason: info.Reason, RevokedAt: info.RevokedAt.UTC().Format("2006-01-02T15:04:05Z")}, nil
}

// AttestationRoutes wires node, manifest and PCR-policy verbs.
type AttestationRoutes struct {
	Attestor *attestor.Service
}

// BanRequest gives the operator's reason for a ban.
type BanRequest struct {
	Reason    string `json:"reason"`
	CRLReason string `json:"crl_reason,omitempty"` // default keyCompromise
}

// BanResponse says what the ban revoked.
type BanResponse struct {
	Node    attestor.NodeRecord `json:"node"`
	Revoked int                 `json:"revoked"`
}

// UnbanRequest gives the operator's reason for lifting a ban.
type UnbanRequest struct {
	Reason string `json:"reason"`
}

// ManifestRequest adds an EK hash, EK certificate or EK CA certificate
// (PEM, or base64 DER, or 64 hex digits).
type ManifestRequest struct {
	Input   string `json:"input"`
	Class   string `json:"class"`
	Comment string `json:"comment,omitempty"`
}

// PolicyRequest is a PCR policy file (YAML).
type PolicyRequest struct {
	YAML string `json:"yaml"`
}

// PolicyResponse is the current policy.
type PolicyResponse struct {
	YAML    string `json:"yaml"`
	Version uint64 `json:"version"`
}

// Register adds the routes.
func (rt *AttestationRoutes) Register(m *Mux) {
	for _, e := range []error{attestor.ErrInvalidManifest, attestor.ErrInvalidArgument, verify.ErrPolicy} {
		m.MapError(e, http.StatusBadRequest)
	}
	m.MapError(attestor.ErrNotFound, http.StatusNotFound)
	m.MapError(attestor.ErrPolicyVersion, http.StatusConflict)
	Handle(m, "GET /v1/nodes", rt.nodes)
	Handle(m, "GET /v1/nodes/{ref}", rt.node)
	Handle(m, "POST /v1/nodes/{ref}/ban", rt.ban)
	Handle(m, "POST /v1/nodes/{ref}/unban", rt.unban)
	Handle(m, "GET /v1/manifest", rt.manifest)
	Handle(m, "POST /v1/manifest", rt.manifestAdd)
	Handle(m, "DELETE /v1/manifest/{id}", rt.manifestRemove)
	Handle(m, "GET /v1/pcrpolicy", rt.policy)
	Handle(m, "PUT /v1/pcrpolicy", rt.policySet)
}

func (rt *AttestationRoutes) nodes(ctx context.Context, _ Operator, _ *http.Request, _ *Empty) ([]attestor.NodeRecord, error) {
	ns, err := rt.Attestor.Nodes(ctx)
	if ns == nil {
		ns = []attestor.NodeRecord{}
	}
	return ns, err
}

func (rt *AttestationRoutes) node(ctx context.Context, _ Operator, r *http.Request, _ *Empty) (attestor.NodeRecord, error) {
	return rt.Attestor.Node(ctx, r.PathValue("ref"))
}

func (rt *AttestationRoutes) ban(ctx context.Context, op Operator, r *http.Request, req *BanRequest) (BanResponse, error) {
	if strings.TrimSpace(req.Reason) == "" {
		return BanResponse{}, fmt.Errorf("%w: a ban needs a reason for the audit log", ErrBadRequest)
	}
	crlReason := crl.ReasonKeyCompromise
	if req.CRLReason != "" {
		var err error
		if crlReason, err = ParseReason(req.CRLReason); err != nil {
			return BanResponse{}, err
		}
	}
	n, err := rt.Attestor.BanNode(ctx, op.String(), r.PathValue("ref"), req.Reason, crlReason)
	if err != nil {
		return BanResponse{}, err
	}
	rec, err := rt.Attestor.Node(ctx, r.PathValue("ref"))
	if err != nil {
		return BanResponse{}, err
	}
	return BanResponse{Node: rec, Revoked: n}, nil
}

func (rt *AttestationRoutes) unban(ctx context.Context, op Operator, r *http.Request, req *UnbanRequest) (attestor.NodeRecord, error) {
	return rt.Attestor.UnbanNode(ctx, op.String(), r.PathValue("ref"), req.Reason)
}

func (rt *AttestationRoutes) manifest(ctx context.Context, _ Operator, _ *http.Request, _ *Empty) ([]attestor.ManifestEntry, error) {
	es, err := rt.Attestor.ManifestEntries(ctx)
	if es == nil {
		es = []attestor.ManifestEntry{}
	}
	return es, err
}

func (rt *AttestationRoutes) manifestAdd(ctx context.Context, op Operator, _ *http.Request, req *ManifestRequest) (attestor.ManifestEntry, error) {
	input := []byte(strings.TrimSpace(req.Input))
	if !strings.HasPrefix(string(input), "-----BEGIN") && len(input) != 64 {
		if der, err := base64.StdEncoding.DecodeString(string(input)); err == nil {
			input = der
		}
	}
	e, err := attestor.ParseManifestInput(input, req.Class, req.Comment)
	if err != nil {
		return attestor.ManifestEntry{}, err
	}
	return rt.Attestor.AddManifestEntry(ctx, op.String(), e)
}

func (rt *AttestationRoutes) manifestRemove(ctx context.Context, op Operator, r *http.Request, _ *Empty) (map[string]string, error) {
	id := r.PathValue("id")
	if err := rt.Attestor.RemoveManifestEntry(ctx, op.String(), id); err != nil {
		return nil, err
	}
	return map[string]string{"removed": id}, nil
}

func (rt *AttestationRoutes) policy(ctx context.Context, _ Operator, _ *http.Request, _ *Empty) (PolicyResponse, error) {
	raw, p, err := rt.Attestor.PCRPolicy(ctx)
	if err != nil {
		return PolicyResponse{}, err
	}
	out := PolicyResponse{YAML: string(raw)}
	if p != nil {
		out.Version = p.Version
	}
	return out, nil
}

func (rt *AttestationRoutes) policySet(ctx context.Context, op Operator, _ *http.Request, req *PolicyRequest) (PolicyResponse, error) {
	p, err := rt.Attestor.SetPCRPolicy(ctx, op.String(), []byte(req.YAML))
	if err != nil {
		return PolicyResponse{}, err
	}
	return PolicyResponse{YAML: req.YAML, Version: p.Version}, nil
}
