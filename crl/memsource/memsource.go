package memsource

import (
	"errors"
	"fmt"
	"math/big"
	"sync"
	"time"

	"github.com/palisade-id/palisade/crl"
)

// ErrNotFound is returned by Revoke for a serial never added.
var ErrNotFound = errors.New("memsource: no such certificate")

// Store holds certificate records in a map.
type Store struct {
	mu        sync.RWMutex
	certs     map[string]*crl.CertInfo
	responder map[string]crl.ResponderCert
}

// New returns an empty Store.
func New() *Store {
	return &Store{certs: map[string]*crl.CertInfo{}, responder: map[string]crl.ResponderCert{}}
}

// Add records an issued certificate (as the CA's RecordIssued would).
func (s *Store) Add(ci crl.CertInfo) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := ci
	s.certs[string(ci.Serial.Bytes())] = &c
}

// Len returns the number of records.
func (s *Store) Len() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.certs)
}

// Status implements crl.Source.
func (s *Store) Status(serial *big.Int) (crl.CertInfo, bool, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	c, ok := s.certs[string(serial.Bytes())]
	if !ok {
		return crl.CertInfo{}, false, nil
	}
	return *c, true, nil
}

// ForEachRevoked implements crl.Source.
func (s *Store) ForEachRevoked(issuer string, since time.Time, fn func(crl.CertInfo) error) error {
	s.mu.RLock()
	var list []crl.CertInfo
	for _, c := range s.certs {
		if c.Revoked && c.IssuerKeyID == issuer && !c.RevokedAt.Before(since) {
			list = append(list, *c)
		}
	}
	s.mu.RUnlock()
	for _, c := range list {
		if err := fn(c); err != nil {
			return err
		}
	}
	return nil
}

// ForEachUnexpired implements crl.Source.
func (s *Store) ForEachUnexpired(at time.Time, fn func(crl.CertInfo) error) error {
	s.mu.RLock()
	var list []crl.CertInfo
	for _, c := range s.certs {
		if c.NotAfter.After(at) {
			list = append(list, *c)
		}
	}
	s.mu.RUnlock()
	for _, c := range list {
		if err := fn(c); err != nil {
			return err
		}
	}
	return nil
}

// Revoke implements crl.Store.
func (s *Store) Revoke(serial *big.Int, reason int, at time.Time) (crl.CertInfo, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.certs[string(serial.Bytes())]
	if !ok {
		return crl.CertInfo{}, false, fmt.Errorf("%w: %x", ErrNotFound, serial)
	}
	if c.Revoked {
		return *c, false, nil
	}
	c.Revoked, c.RevokedAt, c.Reason = true, at, reason
	return *c, true, nil
}

// ForEachOfNode implements crl.Store.
func (s *Store) ForEachOfNode(nodeID string, at time.Time, fn func(crl.CertInfo) error) error {
	s.mu.Lock()
	var out []crl.CertInfo
	for _, c := range s.certs {
		if (c.NodeID == nodeID || c.SPIFFEID == nodeID) && c.NotAfter.After(at) {
			out = append(out, *c)
		}
	}
	s.mu.Unlock()
	for _, c := range out {
		if err := fn(c); err != nil {
			return err
		}
	}
	return nil
}

// RevokeNode implements crl.Store.
func (s *Store) RevokeNode(nodeID string, reason int, at time.Time) ([]crl.CertInfo, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []crl.CertInfo
	for _, c := range s.certs {
		if (c.NodeID == nodeID || c.SPIFFEID == nodeID) && !c.Revoked && c.NotAfter.After(at) {
			c.Revoked, c.RevokedAt, c.Reason = true, at, reason
			out = append(out, *c)
		}
	}
	return out, nil
}

// RecordResponderCert implements crl.CertRecorder: a serial already added
// or recorded is refused with crl.ErrSerialExists. Responder certificates
// are kept apart from Add's records (Status and the walks do not see them),
// as the CA's store keeps them out of OCSP pre-signing.
func (s *Store) RecordResponderCert(rc crl.ResponderCert) error {
	if rc.Serial == nil || rc.Serial.Sign() <= 0 {
		return fmt.Errorf("%w: responder certificate serial %v", crl.ErrBadSerial, rc.Serial)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	k := string(rc.Serial.Bytes())
	if _, ok := s.certs[k]; ok {
		return fmt.Errorf("%w: %x", crl.ErrSerialExists, rc.Serial)
	}
	if _, ok := s.responder[k]; ok {
		return fmt.Errorf("%w: %x", crl.ErrSerialExists, rc.Serial)
	}
	s.responder[k] = rc
	return nil
}

// ResponderCerts returns the recorded responder certificates.
func (s *Store) ResponderCerts() []crl.ResponderCert {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]crl.ResponderCert, 0, len(s.responder))
	for _, rc := range s.responder {
		out = append(out, rc)
	}
	return out
}

var _ crl.Store = (*Store)(nil)
