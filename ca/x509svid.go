package ca

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"
	"time"

	"github.com/palisade-id/palisade/ca/store"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// MaxCSRSize bounds a CSR before it is parsed: an SVID CSR is a few hundred
// bytes; anything near this is an attack or a mistake.
const MaxCSRSize = 16 << 10

// CSR is a validated X509-SVID signing request.
type CSR struct {
	Req *x509.CertificateRequest
	ID  spiffeid.ID
}

// ParseCSR validates a certificate signing request for an X509-SVID in the
// trust domain td: size, encoding (DER or one PEM block), self-signature,
// key type and exactly one URI SAN holding a SPIFFE ID of td. The error
// names the problem.
func ParseCSR(raw []byte, td spiffeid.TrustDomain) (*CSR, error) {
	if len(raw) > MaxCSRSize {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrCSRTooLarge, len(raw), MaxCSRSize)
	}
	if len(raw) == 0 {
		return nil, fmt.Errorf("%w: empty", ErrMalformedCSR)
	}
	der := raw
	if block, rest := pem.Decode(raw); block != nil {
		if block.Type != "CERTIFICATE REQUEST" && block.Type != "NEW CERTIFICATE REQUEST" {
			return nil, fmt.Errorf("%w: PEM block %q, want CERTIFICATE REQUEST", ErrMalformedCSR, block.Type)
		}
		if len(pemTrim(rest)) != 0 {
			return nil, fmt.Errorf("%w: trailing data after the PEM block", ErrMalformedCSR)
		}
		der = block.Bytes
	}
	req, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformedCSR, err)
	}
	if err := req.CheckSignature(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCSRSignature, err)
	}
	if err := checkKey(req.PublicKey); err != nil {
		return nil, err
	}
	if n := len(req.URIs); n != 1 {
		return nil, fmt.Errorf("%w: it has %d", ErrURISANCount, n)
	}
	id, err := spiffeid.FromURI(req.URIs[0])
	if err != nil {
		return nil, fmt.Errorf("%w: %q: %v", ErrInvalidSPIFFEID, req.URIs[0].String(), err)
	}
	if id.TrustDomain() != td {
		return nil, fmt.Errorf("%w: %s is in %q, this CA serves %q", ErrForeignTrustDomain, id, id.TrustDomain().Name(), td.Name())
	}
	if id.Path() == "" {
		return nil, fmt.Errorf("%w: %s names the trust domain itself, not a workload", ErrInvalidSPIFFEID, id)
	}
	return &CSR{Req: req, ID: id}, nil
}

func pemTrim(b []byte) []byte {
	for len(b) > 0 && (b[0] == '\n' || b[0] == '\r' || b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	return b
}

func checkKey(pub any) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return fmt.Errorf("%w: ECDSA curve %s (want P-256 or P-384)", ErrCSRKey, k.Curve.Params().Name)
		}
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return fmt.Errorf("%w: RSA %d bits (want at least 2048)", ErrCSRKey, k.N.BitLen())
		}
	case ed25519.PublicKey:
	default:
		return fmt.Errorf("%w: %T", ErrCSRKey, pub)
	}
	return nil
}

// X509Request asks for one X509-SVID.
type X509Request struct {
	CSR *CSR
	// ID, when set, is the SPIFFE ID the caller is authorised for; the CSR
	// must name it.
	ID       spiffeid.ID
	TTL      time.Duration // 0: the configured default
	DNSNames []string
	Kind     string // store.KindX509SVID (default), KindNodeSVID or KindServerSVID
	NodeID   string // the node the SVID is issued to, for revocation by node
	EntryID  string
	Actor    string // who asked, for the audit log
}

// X509SVID is an issued certificate and the chain up to (not including) the
// root.
type X509SVID struct {
	Certificates []*x509.Certificate // leaf, then its intermediate
	Record       store.CertRecord
}

// ChainPEM returns the leaf followed by its intermediate, PEM-encoded.
func (s *X509SVID) ChainPEM() []byte { return CertsPEM(s.Certificates) }

// maxSerialAttempts bounds retries on a serial collision, which with 128
// random bits only a broken RNG can cause.
const maxSerialAttempts = 3

// SignX509SVID issues an X509-SVID. The certificate is returned only after
// its record is durable in the store and the issuance is in the audit log.
func (c *CA) SignX509SVID(ctx context.Context, req X509Request) (*X509SVID, error) {
	if req.CSR == nil {
		return nil, fmt.Errorf("%w: missing", ErrMalformedCSR)
	}
	if !req.ID.IsZero() && req.ID != req.CSR.ID {
		return nil, fmt.Errorf("%w: CSR names %s, caller is authorised for %s", ErrIDMismatch, req.CSR.ID, req.ID)
	}
	ttl, err := svidTTL(req.TTL, c.cfg.X509SVIDTTL, c.cfg.MaxX509SVIDTTL)
	if err != nil {
		return nil, err
	}
	kind := req.Kind
	if kind == "" {
		kind = store.KindX509SVID
	}
	c.mu.RLock()
	issuer := c.active
	c.mu.RUnlock()
	if issuer == nil {
		return nil, ErrNoActiveIssuer
	}
	now := c.now()
	notAfter := now.Add(ttl)
	// No SVID outlives its issuer.
	if notAfter.After(issuer.cert.NotAfter) {
		notAfter = issuer.cert.NotAfter
	}
	if !notAfter.After(now) {
		return nil, fmt.Errorf("%w: active intermediate %s has expired", ErrNoActiveIssuer, issuer.rec.KeyID)
	}
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{Organization: []string{c.cfg.Organization}},
		NotBefore:             now.Add(-c.cfg.Backdate),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		URIs:                  []*url.URL{req.CSR.ID.URL()},
		DNSNames:              req.DNSNames,
	}
	if c.opts.CRLURL != nil {
		tmpl.CRLDistributionPoints = []string{c.opts.CRLURL(issuer.rec.KeyID)}
	}
	if c.opts.OCSPURL != "" {
		tmpl.OCSPServer = []string{c.opts.OCSPURL}
	}
	for attempt := 0; ; attempt++ {
		serial, err := newSerial(rand.Read)
		if err != nil {
			return nil, err
		}
		tmpl.SerialNumber = serial
		der, err := x509.CreateCertificate(rand.Reader, tmpl, issuer.cert, req.CSR.Req.PublicKey, issuer.signer)
		if err != nil {
			return nil, fmt.Errorf("ca: sign X509-SVID with %s: %w", issuer.rec.KeyID, err)
		}
		leaf, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("ca: parse issued certificate: %w", err)
		}
		rec := store.CertRecord{
			Serial:      serial,
			SPIFFEID:    req.CSR.ID.String(),
			NodeID:      req.NodeID,
			EntryID:     req.EntryID,
			IssuerKeyID: issuer.rec.KeyID,
			Kind:        kind,
			NotBefore:   leaf.NotBefore,
			NotAfter:    leaf.NotAfter,
			Status:      store.CertValid,
		}
		// The store record and the audit record are both made durable
		// before the certificate leaves; they are written concurrently so an
		// issuance waits for one group commit, not two in a row.
		auditDone := make(chan error, 1)
		go func() {
			auditDone <- c.opts.Audit.Append(ctx, kind+".issued", req.Actor, map[string]any{
				"serial":    serial.Text(16),
				"spiffe_id": rec.SPIFFEID,
				"node_id":   req.NodeID,
				"entry_id":  req.EntryID,
				"issuer":    issuer.rec.KeyID,
				"not_after": leaf.NotAfter,
			})
		}()
		err = c.opts.Store.RecordIssued(rec)
		auditErr := <-auditDone
		if err != nil && auditErr == nil {
			// The audit log now says the serial was issued: say it was not
			// released, so the log and the store agree.
			_ = c.opts.Audit.Append(ctx, kind+".voided", req.Actor, map[string]any{
				"serial": serial.Text(16), "reason": err.Error(),
			})
		}
		if errors.Is(err, store.ErrSerialExists) && attempt+1 < maxSerialAttempts {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("ca: record serial %x: %w", serial, err)
		}
		if auditErr != nil {
			return nil, fmt.Errorf("ca: audit issuance of %x: %w", serial, auditErr)
		}
		if c.opts.OnIssued != nil {
			c.opts.OnIssued(rec)
		}
		return &X509SVID{Certificates: []*x509.Certificate{leaf, issuer.cert}, Record: rec}, nil
	}
}
