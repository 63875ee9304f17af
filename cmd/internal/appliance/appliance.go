// Package appliance opens the appliance's durable parts from configuration:
// the HSM token, the store, the audit log and the CA. palisade-server and
// the operator CLI's offline verbs (ceremony, audit verify, audit reanchor)
// share it.
package appliance

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"os"

	"github.com/palisade-id/palisade/ca"
	"github.com/palisade-id/palisade/ca/audit"
	"github.com/palisade-id/palisade/ca/pkcs11"
	"github.com/palisade-id/palisade/ca/store"
	"github.com/palisade-id/palisade/cmd/internal/atomicfile"
	"github.com/palisade-id/palisade/cmd/internal/config"
)

// Appliance is an opened, initialised appliance.
type Appliance struct {
	Cfg   *config.Server
	Token *pkcs11.Token
	Store *store.Store
	Audit *audit.Log
	CA    *ca.CA
}

// Sink adapts the audit log to the Append signature its consumers declare.
type Sink struct{ Log *audit.Log }

// Append records one event durably.
func (s Sink) Append(ctx context.Context, kind, actor string, data any) error {
	_, err := s.Log.Append(ctx, kind, actor, data)
	return err
}

// OpenHSM opens the configured token.
func OpenHSM(cfg *config.Server) (*pkcs11.Token, error) {
	u, err := pkcs11.ParseURI(cfg.HSM.Token)
	if err != nil {
		return nil, fmt.Errorf("hsm.token: %w", err)
	}
	alg, err := pkcs11.ParseAlgorithm(cfg.CA.KeyAlgorithm)
	if err != nil {
		return nil, err
	}
	return pkcs11.Open(u, pkcs11.WithAlgorithm(alg))
}

// OpenStore opens the store under data_dir.
func OpenStore(cfg *config.Server) (*store.Store, error) {
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("data_dir: %w", err)
	}
	return store.Open(cfg.StorePath(), store.Options{})
}

// auditOptions trusts, besides the signer (the HSM audit key), only
// certificates chaining to roots, and anchors the log in the token.
func auditOptions(cfg *config.Server, cert *x509.Certificate, tok *pkcs11.Token, roots *x509.CertPool) audit.Options {
	return audit.Options{
		CheckpointEvery:    cfg.Audit.CheckpointEvery,
		CheckpointInterval: cfg.Audit.CheckpointInterval,
		SegmentBytes:       cfg.Audit.SegmentBytes,
		SignerCert:         cert,
		Roots:              roots,
		Anchor:             AuditAnchor{tok},
	}
}

// AuditAnchorLabel names the token's data object holding the audit log's
// anchor (its latest checkpoint).
const AuditAnchorLabel = "palisade-audit-anchor"

// AuditAnchor keeps the audit log's anchor in the token, where changing it
// takes the PIN, not write access to data_dir. It is an audit.AnchorStore.
type AuditAnchor struct{ Token *pkcs11.Token }

// LoadAnchor reads the anchor; nil before the first checkpoint.
func (a AuditAnchor) LoadAnchor() ([]byte, error) {
	v, err := a.Token.Data(AuditAnchorLabel)
	if errors.Is(err, pkcs11.ErrDataNotFound) {
		return nil, nil
	}
	return v, err
}

// StoreAnchor replaces the anchor.
func (a AuditAnchor) StoreAnchor(v []byte) error { return a.Token.SetData(AuditAnchorLabel, v) }

// AuditTrust returns the token's audit key and, as roots, those of certs
// whose key is the token's root key: checkpoints are trusted through the
// HSM, never through a certificate file that could be swapped.
func AuditTrust(tok *pkcs11.Token, certs []*x509.Certificate) (crypto.PublicKey, *x509.CertPool, error) {
	auditKey, err := tok.Signer(ca.AuditKeyLabel)
	if err != nil {
		return nil, nil, fmt.Errorf("audit key: %w", err)
	}
	rootKey, err := tok.Signer(ca.RootKeyLabel)
	if err != nil {
		return nil, nil, fmt.Errorf("root key: %w", err)
	}
	var roots *x509.CertPool
	for _, c := range certs {
		if k, ok := c.PublicKey.(interface{ Equal(crypto.PublicKey) bool }); ok && k.Equal(rootKey.Public()) {
			if roots == nil {
				roots = x509.NewCertPool()
			}
			roots.AddCert(c)
		}
	}
	return auditKey.Public(), roots, nil
}

// Ceremony initialises the appliance: keys in the HSM, metadata in the
// store, the first audit record. It refuses an initialised appliance.
func Ceremony(ctx context.Context, cfg *config.Server, actor string) (*ca.CeremonyResult, error) {
	tok, err := OpenHSM(cfg)
	if err != nil {
		return nil, err
	}
	defer tok.Close()
	st, err := OpenStore(cfg)
	if err != nil {
		return nil, err
	}
	defer st.Close()
	return ceremony(ctx, cfg, actor, tok, st)
}

// ceremony is Ceremony on an open token and store. A ceremony refused
// before the store committed leaves no audit log behind: the one it created
// is empty, and its presence would refuse every retry.
func ceremony(ctx context.Context, cfg *config.Server, actor string, tok *pkcs11.Token, st ca.Store) (*ca.CeremonyResult, error) {
	var log *audit.Log
	res, err := ca.Ceremony(ctx, cfg.CA, tok, st, actor, func(signer crypto.Signer, cert *x509.Certificate) (ca.Auditor, error) {
		if _, err := os.Stat(cfg.Audit.Path); err == nil {
			return nil, fmt.Errorf("%w: audit log %s already exists", ca.ErrAlreadyInitialized, cfg.Audit.Path)
		}
		l, err := audit.Open(cfg.Audit.Path, signer, auditOptions(cfg, cert, tok, nil))
		if err != nil {
			return nil, err
		}
		log = l
		return Sink{l}, nil
	}, nil)
	if log == nil {
		return res, err
	}
	cerr := log.Close()
	if err == nil {
		return res, cerr
	}
	if _, merr := st.CAMeta(); errors.Is(merr, store.ErrNotInitialized) {
		if rerr := atomicfile.Remove(cfg.Audit.Path); rerr != nil {
			err = errors.Join(err, fmt.Errorf("remove the new audit log (delete %s before retrying): %w", cfg.Audit.Path, rerr))
		}
	}
	return res, err
}

// Open opens an initialised appliance. caOpts may set URLs and hooks; Keys,
// Store and Audit are filled in here.
func Open(cfg *config.Server, caOpts ca.Options) (*Appliance, error) {
	a := &Appliance{Cfg: cfg}
	var err error
	if a.Token, err = OpenHSM(cfg); err != nil {
		return nil, err
	}
	if a.Store, err = OpenStore(cfg); err != nil {
		a.Close()
		return nil, err
	}
	signer, opts, err := openAuditOptions(cfg, a.Token, a.Store)
	if err != nil {
		a.Close()
		return nil, err
	}
	if a.Audit, err = audit.Open(cfg.Audit.Path, signer, opts); err != nil {
		a.Close()
		return nil, err
	}
	caOpts.Keys, caOpts.Store, caOpts.Audit = a.Token, a.Store, Sink{a.Audit}
	if a.CA, err = ca.Load(cfg.CA, caOpts); err != nil {
		a.Close()
		return nil, err
	}
	return a, nil
}

// openAuditOptions returns the HSM audit key and the options the
// initialised appliance's log is opened with.
func openAuditOptions(cfg *config.Server, tok *pkcs11.Token, st *store.Store) (crypto.Signer, audit.Options, error) {
	meta, err := st.CAMeta()
	if errors.Is(err, store.ErrNotInitialized) {
		return nil, audit.Options{}, ca.ErrNotInitialized
	}
	if err != nil {
		return nil, audit.Options{}, err
	}
	auditCert, err := x509.ParseCertificate(meta.AuditCertDER)
	if err != nil {
		return nil, audit.Options{}, fmt.Errorf("stored audit certificate: %w", err)
	}
	signer, err := tok.Signer(ca.AuditKeyLabel)
	if err != nil {
		return nil, audit.Options{}, fmt.Errorf("audit key: %w", err)
	}
	rootCert, err := x509.ParseCertificate(meta.RootCertDER)
	if err != nil {
		return nil, audit.Options{}, fmt.Errorf("stored root certificate: %w", err)
	}
	_, roots, err := AuditTrust(tok, []*x509.Certificate{rootCert})
	if err != nil {
		return nil, audit.Options{}, err
	}
	return signer, auditOptions(cfg, auditCert, tok, roots), nil
}

// ReanchorAudit runs audit.Reanchor on the configured log with the trust
// palisade-server opens it with. The server must be stopped: it holds the
// store's and the log's locks.
func ReanchorAudit(cfg *config.Server, actor, reason string) (audit.Reanchoring, error) {
	tok, err := OpenHSM(cfg)
	if err != nil {
		return audit.Reanchoring{}, err
	}
	defer tok.Close()
	st, err := OpenStore(cfg)
	if err != nil {
		return audit.Reanchoring{}, err
	}
	defer st.Close()
	signer, opts, err := openAuditOptions(cfg, tok, st)
	if err != nil {
		return audit.Reanchoring{}, err
	}
	return audit.Reanchor(cfg.Audit.Path, signer, opts, actor, reason)
}

// Close releases everything in reverse order of opening. Closing the audit
// log writes a final signed checkpoint.
func (a *Appliance) Close() error {
	var errs []error
	if a.Audit != nil {
		errs = append(errs, a.Audit.Close())
	}
	if a.Store != nil {
		errs = append(errs, a.Store.Close())
	}
	if a.Token != nil {
		errs = append(errs, a.Token.Close())
	}
	return errors.Join(errs...)
}
