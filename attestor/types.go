package attestor

import (
	"context"
	"math/big"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// EntryKind says how a manifest entry admits EKs.
type EntryKind string

const (
	// KindEKHash admits the one EK whose PKIX DER hashes to EKHash.
	KindEKHash EntryKind = "ek-hash"
	// KindEKCA admits every EK whose certificate chains to CACert.
	KindEKCA EntryKind = "ek-ca"
)

// ManifestEntry is one known-good entry, loaded offline by an operator.
type ManifestEntry struct {
	// ID is "ek:<hex sha256>" for KindEKHash and "ca:<hex sha256 of the
	// certificate DER>" for KindEKCA.
	ID      string    `json:"id"`
	Kind    EntryKind `json:"kind"`
	EKHash  string    `json:"ek_hash,omitempty"`
	CACert  []byte    `json:"ca_cert,omitempty"` // DER
	Class   string    `json:"class"`
	Comment string    `json:"comment,omitempty"`
	AddedAt time.Time `json:"added_at"`
	AddedBy string    `json:"added_by"`
}

// NodeRecord is what the attestor knows about one node.
type NodeRecord struct {
	ID            string    `json:"id"` // SPIFFE ID
	EKHash        string    `json:"ek_hash"`
	Class         string    `json:"class,omitempty"`
	FirstAttested time.Time `json:"first_attested,omitzero"`
	LastAttested  time.Time `json:"last_attested,omitzero"`
	Attestations  uint64    `json:"attestations"`
	PolicyVersion uint64    `json:"policy_version,omitempty"`
	Banned        bool      `json:"banned"`
	BannedAt      time.Time `json:"banned_at,omitzero"`
	BannedBy      string    `json:"banned_by,omitempty"`
	BanReason     string    `json:"ban_reason,omitempty"`
	// BanCRLReason is the RFC 5280 reason the ban revoked with, reused for
	// SVIDs whose issuance raced the ban.
	BanCRLReason int `json:"ban_crl_reason,omitempty"`
}

// Store persists attestor state. Implementations must make each call atomic
// and durable when it returns.
type Store interface {
	PutManifestEntry(ctx context.Context, e ManifestEntry) error
	// DeleteManifestEntry returns ErrNotFound if id is absent.
	DeleteManifestEntry(ctx context.Context, id string) error
	ManifestEntries(ctx context.Context) ([]ManifestEntry, error)

	// PutPolicy stores a new policy version; it returns ErrPolicyVersion
	// unless version is above the current one.
	PutPolicy(ctx context.Context, version uint64, raw []byte) error
	// Policy returns the current policy file, or nil if none was set.
	Policy(ctx context.Context) ([]byte, error)

	// Node returns ErrNotFound if id is absent.
	Node(ctx context.Context, id string) (NodeRecord, error)
	Nodes(ctx context.Context) ([]NodeRecord, error)
	// UpdateNode runs fn on the record for id (zero with exists=false if
	// absent) and saves it if fn returns nil, in one transaction.
	UpdateNode(ctx context.Context, id string, fn func(rec *NodeRecord, exists bool) error) error
}

// NodeIssuer issues a node SVID for nodeID from a PKCS#10 CSR (DER). The CA
// implements it; the chain is DER, leaf first.
type NodeIssuer interface {
	IssueNodeSVID(ctx context.Context, nodeID spiffeid.ID, csrDER []byte) (chain [][]byte, err error)
}

// Auditor appends one record to the audit log.
type Auditor interface {
	Append(ctx context.Context, kind string, actor string, data any) error
}

// Revoker revokes durably and audits each revocation. reason is an
// RFC 5280 CRLReason code.
type Revoker interface {
	// RevokeNode revokes every certificate held by a node and returns how
	// many were revoked.
	RevokeNode(ctx context.Context, nodeID string, reason int) (int, error)
	// Revoke revokes one certificate; revoking a revoked one is not an
	// error.
	Revoke(ctx context.Context, serial *big.Int, reason int) error
}

// Audit record kinds.
const (
	AuditAttestAccept = "attestor.attest.accept"
	// AuditAttestRefuse records a refusal once the node's EK is known;
	// refusals before that are only counted (Service.Refusals). Refusals
	// of EKs not in the manifest, and of manifest EKs before credential
	// activation proved the TPM, are audited only within their budgets
	// (unknown_ek_audit_per_minute; per EK hash for the latter).
	AuditAttestRefuse   = "attestor.attest.refuse"
	AuditNodeBan        = "attestor.node.ban"
	AuditNodeUnban      = "attestor.node.unban"
	AuditManifestAdd    = "attestor.manifest.add"
	AuditManifestRemove = "attestor.manifest.remove"
	AuditPolicySet      = "attestor.pcrpolicy.set"

	// AuditAttestRefuseSuppressed summarises, at most once a minute, the
	// budgeted refusals (above) that were over their audit budget:
	// count, reasons, first and last time, samples of EK hashes and peers.
	AuditAttestRefuseSuppressed = "attestor.attest.refuse.suppressed"
)
