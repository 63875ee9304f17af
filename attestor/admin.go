package attestor

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/palisade-id/palisade/attestor/verify"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func isNotFound(err error) bool { return errors.Is(err, ErrNotFound) }

// Operator actions. Each is audited with the operator as actor; the audit
// record is appended before the change so that an unauditable action does
// not happen.

// ManifestEntries lists the manifest.
func (s *Service) ManifestEntries(ctx context.Context) ([]ManifestEntry, error) {
	return s.deps.Store.ManifestEntries(ctx)
}

// AddManifestEntry validates and stores e (see ParseManifestInput) and
// returns it as stored.
func (s *Service) AddManifestEntry(ctx context.Context, actor string, e ManifestEntry) (ManifestEntry, error) {
	if err := validateEntry(e); err != nil {
		return ManifestEntry{}, err
	}
	e.AddedAt, e.AddedBy = s.deps.Now().UTC(), actor
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.audit(ctx, AuditManifestAdd, actor, map[string]any{
		"id": e.ID, "kind": e.Kind, "class": e.Class, "comment": e.Comment}); err != nil {
		return ManifestEntry{}, err
	}
	if err := s.deps.Store.PutManifestEntry(ctx, e); err != nil {
		return ManifestEntry{}, fmt.Errorf("attestor: store manifest entry: %w", err)
	}
	return e, s.reload(ctx)
}

// RemoveManifestEntry deletes the entry id ("ek:<hash>" or "ca:<hash>").
// Nodes already attested keep their SVIDs until expiry; ban them to revoke.
func (s *Service) RemoveManifestEntry(ctx context.Context, actor, id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !slices.ContainsFunc(s.manifest.Load().entries, func(e ManifestEntry) bool { return e.ID == id }) {
		return fmt.Errorf("%w: manifest entry %q", ErrNotFound, id)
	}
	if err := s.audit(ctx, AuditManifestRemove, actor, map[string]any{"id": id}); err != nil {
		return err
	}
	if err := s.deps.Store.DeleteManifestEntry(ctx, id); err != nil {
		return fmt.Errorf("attestor: delete manifest entry: %w", err)
	}
	return s.reload(ctx)
}

// SetPCRPolicy replaces the golden PCR policy with the YAML file raw. Its
// version must be above the current one. The returned policy is the one
// now in force; callers must not modify it.
func (s *Service) SetPCRPolicy(ctx context.Context, actor string, raw []byte) (*verify.Policy, error) {
	p, err := verify.ParsePolicy(raw)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if cur := s.policy.Load(); cur != nil && p.Version <= cur.Version {
		return nil, fmt.Errorf("%w: %d <= current %d", ErrPolicyVersion, p.Version, cur.Version)
	}
	classes := make([]string, 0, len(p.Classes))
	for c := range p.Classes {
		classes = append(classes, c)
	}
	slices.Sort(classes)
	if err := s.audit(ctx, AuditPolicySet, actor, map[string]any{"version": p.Version, "classes": classes, "policy": string(raw)}); err != nil {
		return nil, err
	}
	if err := s.deps.Store.PutPolicy(ctx, p.Version, raw); err != nil {
		return nil, fmt.Errorf("attestor: store PCR policy: %w", err)
	}
	return p, s.reloadWith(ctx, p)
}

// PCRPolicy returns the current policy file and its parsed form, or
// ErrNotFound if none was set.
func (s *Service) PCRPolicy(ctx context.Context) ([]byte, *verify.Policy, error) {
	raw, err := s.deps.Store.Policy(ctx)
	if err != nil {
		return nil, nil, err
	}
	if raw == nil {
		return nil, nil, fmt.Errorf("%w: no PCR policy set", ErrNotFound)
	}
	p, err := verify.ParsePolicy(raw)
	return raw, p, err
}

// Nodes lists node records.
func (s *Service) Nodes(ctx context.Context) ([]NodeRecord, error) { return s.deps.Store.Nodes(ctx) }

// ResolveNodeID accepts a node SPIFFE ID or the bare hex EK hash and
// returns the canonical node SPIFFE ID of this trust domain.
func (s *Service) ResolveNodeID(ref string) (string, error) {
	id, _, err := s.resolveNode(ref)
	return id, err
}

// resolveNode is ResolveNodeID that also returns the node's hex EK hash.
func (s *Service) resolveNode(ref string) (id, ekHash string, err error) {
	const prefix = "/palisade/node/"
	ref = strings.TrimSpace(ref)
	if h := strings.ToLower(ref); hexHashRE.MatchString(h) {
		var sum [32]byte
		hex.Decode(sum[:], []byte(h)) // matched 64 hex digits
		nid, err := verify.NodeID(s.td, sum)
		if err != nil {
			return "", "", err
		}
		return nid.String(), h, nil
	}
	nid, err := spiffeid.FromString(ref)
	if err != nil || nid.TrustDomain() != s.td || !strings.HasPrefix(nid.Path(), prefix) ||
		!hexHashRE.MatchString(strings.TrimPrefix(nid.Path(), prefix)) {
		return "", "", fmt.Errorf("%w: %q is not a node ID of %s or an EK hash", ErrInvalidArgument, ref, s.td)
	}
	return nid.String(), strings.TrimPrefix(nid.Path(), prefix), nil
}

// Node returns one node record by SPIFFE ID or EK hash.
func (s *Service) Node(ctx context.Context, ref string) (NodeRecord, error) {
	id, err := s.ResolveNodeID(ref)
	if err != nil {
		return NodeRecord{}, err
	}
	return s.deps.Store.Node(ctx, id)
}

// BanNode refuses the node (by SPIFFE ID or EK hash) from now on, even if it
// never attested, and revokes everything it holds with CRL reason
// crlReason (RFC 5280; 1 keyCompromise is typical). It returns how many
// certificates were revoked. Banning twice keeps the first ban and revokes
// again.
func (s *Service) BanNode(ctx context.Context, actor, ref, reason string, crlReason int) (int, error) {
	id, ekHash, err := s.resolveNode(ref)
	if err != nil {
		return 0, err
	}
	if strings.TrimSpace(reason) == "" || len(reason) > 512 {
		return 0, fmt.Errorf("%w: ban reason must be 1..512 bytes", ErrInvalidArgument)
	}
	if !banCRLReason(crlReason) {
		return 0, fmt.Errorf("%w: CRL reason %d cannot revoke for a ban", ErrInvalidArgument, crlReason)
	}
	if err := s.audit(ctx, AuditNodeBan, actor, map[string]any{"node_id": id, "reason": reason, "crl_reason": crlReason}); err != nil {
		return 0, err
	}
	now := s.deps.Now().UTC()
	err = s.deps.Store.UpdateNode(ctx, id, func(rec *NodeRecord, exists bool) error {
		if !exists {
			rec.ID = id
			rec.EKHash = ekHash
		}
		if !rec.Banned {
			rec.Banned, rec.BannedAt, rec.BannedBy, rec.BanReason, rec.BanCRLReason = true, now, actor, reason, crlReason
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("attestor: ban: %w", err)
	}
	if s.deps.Revoker == nil {
		return 0, nil
	}
	// The flag is durable before the revocation reads the CA store: an
	// issuance recorded too late for this revocation sees the flag when it
	// re-checks (Service.afterIssue) and revokes its own certificate.
	n, err := s.deps.Revoker.RevokeNode(ctx, id, crlReason)
	if err != nil {
		return n, fmt.Errorf("attestor: node banned but revocation failed (retry the ban): %w", err)
	}
	return n, nil
}

// banCRLReason reports whether r is a reason a permanent revocation may
// carry (crl.ValidReason): certificateHold (6) is reversible and
// removeFromCRL (8) only undoes a hold, so neither fits a ban, and the
// revocation service refuses both.
func banCRLReason(r int) bool {
	switch r {
	case 0, 1, 2, 3, 4, 5, 9, 10:
		return true
	}
	return false
}

// finishBans revokes what every banned node still holds. A ban commits its
// flag, then revokes: a crash in between leaves the node's certificates
// valid, and nothing else would revoke them, so Run calls this at start
// (and until it succeeds). Revoking is idempotent: a node with nothing
// left costs a read and writes no record. It reports whether every banned
// node was handled; failures are logged.
func (s *Service) finishBans(ctx context.Context) bool {
	if s.deps.Revoker == nil {
		return true
	}
	nodes, err := s.deps.Store.Nodes(ctx)
	if err != nil {
		s.log.Error("listing nodes to complete bans failed", "err", err)
		return false
	}
	done := true
	for _, rec := range nodes {
		if !rec.Banned {
			continue
		}
		// Unbanned (and maybe attested again) since the list was read:
		// its new SVIDs are legitimate.
		cur, err := s.deps.Store.Node(ctx, rec.ID)
		if err != nil {
			s.log.Error("reading a banned node failed; will retry", "node", rec.ID, "err", err)
			done = false
			continue
		}
		if !cur.Banned {
			continue
		}
		rec = cur
		reason := rec.BanCRLReason
		if !banCRLReason(reason) {
			reason = 0 // unspecified: the stored reason cannot revoke
		}
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		n, err := s.deps.Revoker.RevokeNode(rctx, rec.ID, reason)
		cancel()
		if err != nil {
			s.log.Error("completing a ban's revocation failed; will retry", "node", rec.ID, "err", err)
			done = false
			continue
		}
		if n > 0 {
			s.log.Warn("revoked certificates a ban had left valid", "node", rec.ID, "count", n)
		}
	}
	return done
}

// UnbanNode lifts a ban (node by SPIFFE ID or EK hash), so the node may
// attest again; what the ban revoked stays revoked. reason goes to the
// audit log. It returns the updated record, ErrNotFound for an unknown
// node and ErrInvalidArgument for one that is not banned.
func (s *Service) UnbanNode(ctx context.Context, actor, ref, reason string) (NodeRecord, error) {
	id, err := s.ResolveNodeID(ref)
	if err != nil {
		return NodeRecord{}, err
	}
	if strings.TrimSpace(reason) == "" || len(reason) > 512 {
		return NodeRecord{}, fmt.Errorf("%w: unban reason must be 1..512 bytes", ErrInvalidArgument)
	}
	rec, err := s.deps.Store.Node(ctx, id)
	if err != nil {
		return NodeRecord{}, err
	}
	if !rec.Banned {
		return NodeRecord{}, fmt.Errorf("%w: %s is not banned", ErrInvalidArgument, id)
	}
	if err := s.audit(ctx, AuditNodeUnban, actor, map[string]any{
		"node_id": id, "reason": reason, "ban_reason": rec.BanReason, "banned_by": rec.BannedBy, "banned_at": rec.BannedAt,
	}); err != nil {
		return NodeRecord{}, err
	}
	err = s.deps.Store.UpdateNode(ctx, id, func(r *NodeRecord, exists bool) error {
		if !exists {
			return fmt.Errorf("%w: node %s", ErrNotFound, id)
		}
		r.Banned, r.BannedAt, r.BannedBy, r.BanReason, r.BanCRLReason = false, time.Time{}, "", "", 0
		rec = *r
		return nil
	})
	if err != nil {
		return NodeRecord{}, fmt.Errorf("attestor: unban: %w", err)
	}
	return rec, nil
}

// afterIssue runs once the node SVID leafDER is durably recorded by the CA
// (the Issuer returns only then) and before the node sees it. It re-reads
// the ban and, if the node is banned or the ban cannot be ruled out,
// revokes that certificate and refuses. A ban sets its flag, then revokes
// what the CA holds; an issuance records, then reads the flag. Whichever
// second step comes last sees the other's first, so the certificate is
// revoked by the ban or here.
func (s *Service) afterIssue(ctx context.Context, nodeID string, leafDER []byte) error {
	var refusal error
	reason := 0 // unspecified: the store could not say why
	switch rec, err := s.deps.Store.Node(ctx, nodeID); {
	case err != nil:
		refusal = fmt.Errorf("attestor: re-check ban after issuance: %w", err)
	case rec.Banned:
		refusal, reason = fmt.Errorf("%w: %s", ErrBanned, rec.BanReason), rec.BanCRLReason
	default:
		return nil
	}
	if s.deps.Revoker == nil {
		return refusal // never delivered; bans revoke nothing without a Revoker
	}
	leaf, err := x509.ParseCertificate(leafDER)
	if err != nil {
		return errors.Join(refusal, fmt.Errorf("%w: issued certificate unparsable, not revoked: %w", ErrIssue, err))
	}
	// The revocation must complete even if the node hangs up.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := s.deps.Revoker.Revoke(rctx, leaf.SerialNumber, reason); err != nil {
		s.log.Error("node SVID issued despite a ban could not be revoked", "node", nodeID,
			"serial", fmt.Sprintf("%x", leaf.SerialNumber), "err", err)
		return errors.Join(refusal, fmt.Errorf("attestor: revoke SVID %x issued during a ban: %w", leaf.SerialNumber, err))
	}
	s.log.Warn("revoked node SVID whose issuance raced a ban", "node", nodeID, "serial", fmt.Sprintf("%x", leaf.SerialNumber))
	return refusal
}
