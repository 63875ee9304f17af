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

// CeremonyKeys is the HSM as the ceremony uses it: besides generating keys
// it must be able to destroy them, so that a ceremony that fails leaves
// the token as it found it. DeleteKey destroys the key labelled label only
// if its public key is pub (ca/pkcs11 and ca/keystore/memkeys implement it).
type CeremonyKeys interface {
	KeyStore
	DeleteKey(label string, pub crypto.PublicKey) error
}

var (
	// ErrKeyNotSealed means a CA key could leave the HSM.
	ErrKeyNotSealed = errors.New("ca: key is extractable or was not generated in the HSM")
	// ErrKeysLeftBehind means a failed ceremony could not destroy a key it
	// had generated: the token is not as it was, remove the key or use a
	// fresh token.
	ErrKeysLeftBehind = errors.New("ca: failed ceremony left a key in the HSM")
)

// keyTracker remembers the keys a ceremony or a rotation generates, so that
// a failure destroys exactly those, and checks that each is sealed as soon
// as it exists.
type keyTracker struct {
	KeyStore
	deleter interface {
		DeleteKey(label string, pub crypto.PublicKey) error
	} // nil when the key store cannot destroy keys
	sealer Sealer // nil when the key store cannot tell
	made   []madeKey
}

type madeKey struct {
	label string
	pub   crypto.PublicKey
}

func trackKeys(keys KeyStore) *keyTracker {
	k := &keyTracker{KeyStore: keys}
	k.sealer, _ = keys.(Sealer)
	if d, ok := keys.(CeremonyKeys); ok {
		k.deleter = d
	}
	return k
}

func (k *keyTracker) GenerateSigner(label string) (crypto.Signer, error) {
	s, err := k.KeyStore.GenerateSigner(label)
	if err != nil {
		return nil, err
	}
	k.made = append(k.made, madeKey{label, s.Public()})
	if k.sealer != nil {
		sealed, err := k.sealer.Sealed(label)
		if err != nil {
			return nil, fmt.Errorf("ca: key %s attributes: %w", label, err)
		}
		if !sealed {
			return nil, fmt.Errorf("%w: %s", ErrKeyNotSealed, label)
		}
	}
	return s, nil
}

// undo destroys the generated keys, newest first.
func (k *keyTracker) undo() error {
	var errs []error
	for i := len(k.made) - 1; i >= 0; i-- {
		m := k.made[i]
		if k.deleter == nil {
			errs = append(errs, fmt.Errorf("%w: %s: the key store cannot destroy keys", ErrKeysLeftBehind, m.label))
			continue
		}
		if err := k.deleter.DeleteKey(m.label, m.pub); err != nil {
			errs = append(errs, fmt.Errorf("%w: %s: %w", ErrKeysLeftBehind, m.label, err))
		}
	}
	k.made = nil
	return errors.Join(errs...)
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
// already holds a root key (an earlier ceremony that was interrupted). Once
// it has generated keys, any failure before the store records the CA
// (a key that is not sealed, the audit log not opening, a store write that
// left the store uninitialised) destroys every key it generated, and only
// those; ErrKeysLeftBehind if one could not be destroyed.
func Ceremony(ctx context.Context, cfg Config, keys CeremonyKeys, st Store, actor string,
	openAudit func(signer crypto.Signer, cert *x509.Certificate) (Auditor, error), now func() time.Time) (_ *CeremonyResult, err error) {
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
	gen := trackKeys(keys)
	committed := false
	defer func() {
		if err == nil || committed {
			return
		}
		if uerr := gen.undo(); uerr != nil {
			err = errors.Join(err, uerr)
		}
	}()
	t := now()
	rootSigner, err := gen.GenerateSigner(RootKeyLabel)
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
	auditSigner, err := gen.GenerateSigner(AuditKeyLabel)
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
	inter, err := newIntermediate(cfg, gen, root, rootSigner, t)
	if err != nil {
		return nil, err
	}
	inter.Slot = store.SlotActive
	inter.ActivatedAt = t
	audit, err := openAudit(auditSigner, auditCert)
	if err != nil {
		return nil, fmt.Errorf("ca: open audit log: %w", err)
	}
	// InitCA, which records the first intermediate too, is the commit
	// point: until it succeeds the appliance counts as uninitialised and
	// the store holds nothing of this ceremony.
	if err := st.InitCA(store.CAMeta{
		TrustDomain:   cfg.TrustDomain,
		RootCertDER:   root.Raw,
		RootKeyURI:    keys.KeyURI(RootKeyLabel),
		AuditKeyURI:   keys.KeyURI(AuditKeyLabel),
		AuditCertDER:  auditCert.Raw,
		KeyAlgorithm:  cfg.KeyAlgorithm,
		InitializedAt: t,
	}, inter); err != nil {
		// A commit can fail after its data was written (bbolt reports a
		// failed final fdatasync): if the store reads as initialised it
		// names these keys, and destroying them would be irreversible.
		if _, merr := st.CAMeta(); merr == nil {
			committed = true
		}
		return nil, fmt.Errorf("ca: record metadata and first intermediate: %w", err)
	}
	// The store now names the keys: they stay, whatever fails next.
	committed = true
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
		"keys_sealed_in_hsm":    gen.sealer != nil,
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
	// X509-SVID Appendix A: digitalSignature only on leaves. This key signs
	// certificates and CRLs; OCSP answers are signed by a delegated
	// responder certificate, never by it.
	cert, err := createCert(&x509.Certificate{
		Subject:               pkix.Name{Organization: []string{cfg.Organization}, CommonName: cfg.TrustDomain + " Intermediate CA " + gen},
		NotBefore:             t.Add(-cfg.Backdate),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
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
