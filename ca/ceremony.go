package ca

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"time"

	"github.com/palisade-id/palisade/ca/store"
)

// Sealer is implemented by key stores that can prove a key was generated
// inside the device and can never be extracted (PKCS#11 CKA_LOCAL,
// CKA_NEVER_EXTRACTABLE, CKA_ALWAYS_SENSITIVE). When the key store offers
// it, the ceremony refuses keys that are not sealed.
type Sealer interface {
	Sealed(label string) (bool, error)
}

// ErrKeyNotSealed means a CA key could leave the HSM.
var ErrKeyNotSealed = errors.New("ca: key is extractable or was not generated in the HSM")

func checkSealed(keys KeyStore, labels ...string) (bool, error) {
	s, ok := keys.(Sealer)
	if !ok {
		return false, nil
	}
	for _, l := range labels {
		sealed, err := s.Sealed(l)
		if err != nil {
			return false, fmt.Errorf("ca: key %s attributes: %w", l, err)
		}
		if !sealed {
			return false, fmt.Errorf("%w: %s", ErrKeyNotSealed, l)
		}
	}
	return true, nil
}

// CeremonyResult is what the ceremony created.
type CeremonyResult struct {
	Root         *x509.Certificate
	AuditCert    *x509.Certificate
	Intermediate *x509.Certificate
}

// Ceremony creates the root, the audit key and the first intermediate in the
// HSM and records them. openAudit is called with the new audit key and
// certificate to open the audit log that records the ceremony.
//
// It refuses, changing nothing, when the store is initialised or the HSM
// already holds a root key (an earlier ceremony that was interrupted).
func Ceremony(ctx context.Context, cfg Config, keys KeyStore, st Store, actor string,
	openAudit func(signer crypto.Signer, cert *x509.Certificate) (Auditor, error), now func() time.Time) (*CeremonyResult, error) {
	cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if now == nil {
		now = time.Now
	}
	if _, err := st.CAMeta(); err == nil {
		return nil, ErrAlreadyInitialized
	} else if !errors.Is(err, store.ErrNotInitialized) {
		return nil, fmt.Errorf("ca: read metadata: %w", err)
	}
	if _, err := keys.Signer(RootKeyLabel); err == nil {
		return nil, fmt.Errorf("%w: the HSM already holds key %q (an interrupted ceremony?); use a fresh token", ErrAlreadyInitialized, RootKeyLabel)
	}
	t := now()
	rootSigner, err := keys.GenerateSigner(RootKeyLabel)
	if err != nil {
		return nil, fmt.Errorf("ca: generate root key: %w", err)
	}
	tdURI := &url.URL{Scheme: "spiffe", Host: cfg.TrustDomain}
	root, err := createCert(&x509.Certificate{
		Subject:               pkix.Name{Organization: []string{cfg.Organization}, CommonName: cfg.TrustDomain + " Root CA"},
		NotBefore:             t.Add(-cfg.Backdate),
		NotAfter:              t.Add(cfg.RootTTL),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		URIs:                  []*url.URL{tdURI},
	}, nil, rootSigner.Public(), rootSigner)
	if err != nil {
		return nil, fmt.Errorf("ca: root certificate: %w", err)
	}
	auditSigner, err := keys.GenerateSigner(AuditKeyLabel)
	if err != nil {
		return nil, fmt.Errorf("ca: generate audit key: %w", err)
	}
	auditCert, err := createCert(&x509.Certificate{
		Subject:               pkix.Name{Organization: []string{cfg.Organization}, CommonName: cfg.TrustDomain + " Audit Checkpoints"},
		NotBefore:             t.Add(-cfg.Backdate),
		NotAfter:              root.NotAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
	}, root, auditSigner.Public(), rootSigner)
	if err != nil {
		return nil, fmt.Errorf("ca: audit certificate: %w", err)
	}
	inter, err := newIntermediate(cfg, keys, root, rootSigner, t)
	if err != nil {
		return nil, err
	}
	inter.Slot = store.SlotActive
	inter.ActivatedAt = t
	sealed, err := checkSealed(keys, RootKeyLabel, AuditKeyLabel, inter.KeyLabel, jwtKeyLabel(inter.KeyLabel))
	if err != nil {
		return nil, err
	}
	audit, err := openAudit(auditSigner, auditCert)
	if err != nil {
		return nil, fmt.Errorf("ca: open audit log: %w", err)
	}
	if err := st.PutIntermediate(inter); err != nil {
		return nil, fmt.Errorf("ca: record intermediate: %w", err)
	}
	// InitCA is the commit point: until it succeeds the appliance counts as
	// uninitialised.
	if err := st.InitCA(store.CAMeta{
		TrustDomain:   cfg.TrustDomain,
		RootCertDER:   root.Raw,
		RootKeyURI:    keys.KeyURI(RootKeyLabel),
		AuditKeyURI:   keys.KeyURI(AuditKeyLabel),
		AuditCertDER:  auditCert.Raw,
		KeyAlgorithm:  cfg.KeyAlgorithm,
		InitializedAt: t,
	}); err != nil {
		return nil, fmt.Errorf("ca: record metadata: %w", err)
	}
	interCert, _ := x509.ParseCertificate(inter.CertDER)
	if err := audit.Append(ctx, "ceremony.init", actor, map[string]any{
		"trust_domain":          cfg.TrustDomain,
		"key_algorithm":         cfg.KeyAlgorithm,
		"root_sha256":           fingerprint(root),
		"root_not_after":        root.NotAfter,
		"root_key_uri":          keys.KeyURI(RootKeyLabel),
		"audit_key_uri":         keys.KeyURI(AuditKeyLabel),
		"intermediate_key_id":   inter.KeyID,
		"intermediate_sha256":   fingerprint(interCert),
		"intermediate_notafter": inter.NotAfter,
		"keys_sealed_in_hsm":    sealed,
	}); err != nil {
		return nil, fmt.Errorf("ca: audit ceremony: %w", err)
	}
	return &CeremonyResult{Root: root, AuditCert: auditCert, Intermediate: interCert}, nil
}

// newIntermediate generates an intermediate key and a JWT key in the HSM and
// signs the intermediate with the root. Its life never exceeds the root's.
// Both keys are labelled by a generation tag, since the key ID (the SKI) is
// only known once the key exists and PKCS#11 relabelling is not portable.
func newIntermediate(cfg Config, keys KeyStore, root *x509.Certificate, rootSigner crypto.Signer, t time.Time) (store.Intermediate, error) {
	gen := strconv.FormatInt(t.UnixNano(), 36)
	label := interPrefix + gen
	signer, err := keys.GenerateSigner(label)
	if err != nil {
		return store.Intermediate{}, fmt.Errorf("ca: generate intermediate key: %w", err)
	}
	if _, err := keys.GenerateSigner(jwtPrefix + gen); err != nil {
		return store.Intermediate{}, fmt.Errorf("ca: generate JWT key: %w", err)
	}
	notAfter := t.Add(cfg.IntermediateTTL)
	if notAfter.After(root.NotAfter) {
		notAfter = root.NotAfter
	}
	cert, err := createCert(&x509.Certificate{
		Subject:               pkix.Name{Organization: []string{cfg.Organization}, CommonName: cfg.TrustDomain + " Intermediate CA " + gen},
		NotBefore:             t.Add(-cfg.Backdate),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
		URIs:                  []*url.URL{{Scheme: "spiffe", Host: cfg.TrustDomain}},
		// Name constraint: this intermediate vouches only for SPIFFE IDs
		// in our trust domain.
		PermittedURIDomains:         []string{cfg.TrustDomain},
		PermittedDNSDomainsCritical: true,
	}, root, signer.Public(), rootSigner)
	if err != nil {
		return store.Intermediate{}, fmt.Errorf("ca: intermediate certificate: %w", err)
	}
	return store.Intermediate{
		KeyID:     keyID(cert),
		KeyLabel:  label,
		KeyURI:    keys.KeyURI(label),
		CertDER:   cert.Raw,
		NotBefore: cert.NotBefore,
		NotAfter:  cert.NotAfter,
		CreatedAt: t,
	}, nil
}

func createCert(tmpl, parent *x509.Certificate, pub crypto.PublicKey, signer crypto.Signer) (*x509.Certificate, error) {
	serial, err := newSerial(rand.Read)
	if err != nil {
		return nil, err
	}
	tmpl.SerialNumber = serial
	if tmpl.IsCA && len(tmpl.SubjectKeyId) == 0 {
		spki, err := x509.MarshalPKIXPublicKey(pub)
		if err != nil {
			return nil, err
		}
		sum := sha256.Sum256(spki)
		tmpl.SubjectKeyId = sum[:20]
	}
	if parent == nil {
		parent = tmpl
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

func fingerprint(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return hex.EncodeToString(sum[:])
}
