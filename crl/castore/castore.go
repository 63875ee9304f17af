package castore

import (
	"errors"
	"fmt"
	"math/big"
	"time"

	"github.com/palisade-id/palisade/ca/store"
	"github.com/palisade-id/palisade/crl"
)

// Store is a *store.Store seen as a crl.Store.
type Store struct{ st *store.Store }

// New wraps st.
func New(st *store.Store) *Store { return &Store{st: st} }

var _ crl.Store = (*Store)(nil)

func info(r store.CertRecord) crl.CertInfo {
	return crl.CertInfo{
		Serial: r.Serial, SPIFFEID: r.SPIFFEID, NodeID: r.NodeID, IssuerKeyID: r.IssuerKeyID,
		NotBefore: r.NotBefore, NotAfter: r.NotAfter,
		Revoked: r.Status == store.CertRevoked, RevokedAt: r.RevokedAt, Reason: r.Reason,
	}
}

// Status implements crl.Source.
func (s *Store) Status(serial *big.Int) (crl.CertInfo, bool, error) {
	r, err := s.st.Cert(serial)
	if errors.Is(err, store.ErrCertNotFound) || errors.Is(err, store.ErrInvalid) {
		return crl.CertInfo{}, false, nil
	}
	if err != nil {
		return crl.CertInfo{}, false, err
	}
	if store.IsCAKind(r.Kind) {
		// Not revocable and on no CRL: a revocation asked for one gets
		// the store's refusal, before any audit record.
		return crl.CertInfo{}, false, nil
	}
	return info(r), true, nil
}

// ForEachOfNode implements crl.Store from the store's subject index.
func (s *Store) ForEachOfNode(nodeID string, at time.Time, fn func(crl.CertInfo) error) error {
	return s.st.ForEachOfSubject(nodeID, at, func(r store.CertRecord) error {
		if store.IsCAKind(r.Kind) {
			return nil
		}
		return fn(info(r))
	})
}

// ForEachRevoked implements crl.Source from the store's per-issuer index.
func (s *Store) ForEachRevoked(issuerKeyID string, since time.Time, fn func(crl.CertInfo) error) error {
	return s.st.ForEachRevoked(issuerKeyID, func(r store.CertRecord) error {
		if r.RevokedAt.Before(since) {
			return nil
		}
		return fn(info(r))
	})
}

// ForEachUnexpired implements crl.Source from the store's expiry index, so
// its cost follows the live certificates, not every serial ever issued.
func (s *Store) ForEachUnexpired(at time.Time, fn func(crl.CertInfo) error) error {
	return s.st.ForEachUnexpired(at, func(r store.CertRecord) error {
		switch r.Kind {
		case store.KindX509SVID, store.KindNodeSVID, store.KindServerSVID:
			return fn(info(r))
		}
		return nil
	})
}

// Revoke implements crl.Store: revoking a revoked certificate returns its
// record unchanged.
func (s *Store) Revoke(serial *big.Int, reason int, at time.Time) (crl.CertInfo, bool, error) {
	r, err := s.st.Revoke(serial, reason, at)
	if errors.Is(err, store.ErrAlreadyRevoked) {
		if r, err = s.st.Cert(serial); err == nil {
			return info(r), false, nil
		}
	}
	if err != nil {
		return crl.CertInfo{}, false, err
	}
	return info(r), true, nil
}

// RevokeNode implements crl.Store. The store also revokes the node's own
// SVIDs (SPIFFE ID equal to nodeID).
func (s *Store) RevokeNode(nodeID string, reason int, at time.Time) ([]crl.CertInfo, error) {
	rs, err := s.st.RevokeNode(nodeID, reason, at)
	if err != nil {
		return nil, err
	}
	out := make([]crl.CertInfo, len(rs))
	for i, r := range rs {
		out[i] = info(r)
	}
	return out, nil
}

// RecordResponderCert implements crl.CertRecorder: the certificate goes in
// the store's issuance records (store.KindOCSPSigner), whose serials are
// unique across everything the CA signed.
func (s *Store) RecordResponderCert(rc crl.ResponderCert) error {
	err := s.st.RecordIssued(store.CertRecord{
		Serial: rc.Serial, IssuerKeyID: rc.IssuerKeyID, Kind: store.KindOCSPSigner,
		NotBefore: rc.NotBefore, NotAfter: rc.NotAfter, Status: store.CertValid,
	})
	if errors.Is(err, store.ErrSerialExists) {
		return fmt.Errorf("%w: %w", crl.ErrSerialExists, err)
	}
	return err
}

// OnIssued returns a hook for ca.Options.OnIssued that has svc pre-sign
// the new certificate's OCSP answer.
func OnIssued(svc *crl.Service) func(store.CertRecord) {
	return func(r store.CertRecord) { svc.Issued(r.Serial, r.IssuerKeyID, r.NotAfter) }
}
