package main

import (
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/palisade-id/palisade/ca"
	"github.com/palisade-id/palisade/ca/audit"
	"github.com/palisade-id/palisade/cmd/internal/appliance"
	"github.com/palisade-id/palisade/cmd/internal/atomicfile"
	"github.com/palisade-id/palisade/cmd/internal/config"
	"github.com/palisade-id/palisade/cmd/internal/operator"
)

func init() {
	register("ceremony init", "create the root, audit and first intermediate keys in the HSM (once)", ceremonyInit)
	register("audit verify", "verify the audit log's hash chain and signed checkpoints", auditVerify)
}

func ceremonyInit(ctx context.Context, e *env, args []string) error {
	fs := e.flags("ceremony init")
	cfgPath := fs.String("config", "/etc/palisade/server.yaml", "palisade-server configuration")
	if err := parse(fs, args); err != nil {
		return err
	}
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		return err
	}
	res, err := appliance.Ceremony(ctx, cfg, operator.Actor())
	if err != nil {
		return err
	}
	bundle := ca.CertsPEM([]*x509.Certificate{res.Root})
	path := filepath.Join(cfg.DataDir, "bundle.pem")
	if err := atomicfile.WriteFile(path, bundle, 0o644); err != nil {
		return fmt.Errorf("write trust bundle: %w", err)
	}
	sum := sha256.Sum256(res.Root.Raw)
	fmt.Fprintf(e.stdout, "Ceremony complete for trust domain %s.\n", cfg.CA.TrustDomain)
	fmt.Fprintf(e.stdout, "Root CA SHA-256 fingerprint: %s\n", hex.EncodeToString(sum[:]))
	fmt.Fprintf(e.stdout, "Root valid until %s; first intermediate %x valid until %s.\n",
		res.Root.NotAfter.Format("2006-01-02"), res.Intermediate.SubjectKeyId, res.Intermediate.NotAfter.Format("2006-01-02 15:04Z07:00"))
	fmt.Fprintf(e.stdout, "Trust bundle written to %s\n", path)
	return nil
}

// auditVerify trusts checkpoints through the HSM (its audit key, or a
// certificate chaining to the root whose key the HSM holds) and checks the
// log reaches the checkpoint anchored in the HSM. Without the HSM the
// operator names the trust bundle they hold out of band; nothing in
// data_dir is trusted, as whoever can rewrite the log can rewrite that too.
func auditVerify(_ context.Context, e *env, args []string) error {
	fs := e.flags("audit verify")
	cfgPath := fs.String("config", "", "palisade-server configuration: the log, and the HSM whose keys and anchor are trusted")
	logPath := fs.String("log", "", "audit log file (default: from -config)")
	bundlePath := fs.String("bundle", "", "verify without the HSM: trust roots PEM held out of band (never the copy in data_dir)")
	sealed := fs.Bool("requireCheckpointAtEnd", false, "fail unless the log ends with a signed checkpoint (the server is stopped)")
	if err := parse(fs, args); err != nil {
		return err
	}
	var cfg *config.Server
	if *cfgPath != "" {
		var err error
		if cfg, err = config.Load(*cfgPath); err != nil {
			return err
		}
		if *logPath == "" {
			*logPath = cfg.Audit.Path
		}
	}
	if *logPath == "" || cfg == nil && *bundlePath == "" {
		return fmt.Errorf("%w: give -config (trust and anchor from the HSM), or -bundle FILE with the trust bundle held out of band and -log or -config", errUsage)
	}
	opts := audit.VerifyOptions{RequireCheckpointAtEnd: *sealed}
	var trust string
	if *bundlePath != "" {
		certs, err := readBundle(*bundlePath)
		if err != nil {
			return err
		}
		opts.Roots = x509.NewCertPool()
		for _, c := range certs {
			opts.Roots.AddCert(c)
		}
		trust = fmt.Sprintf("trust: %d root(s) from %s; the HSM anchor was not checked, so a log cut back to an earlier checkpoint would pass", len(certs), *bundlePath)
	} else {
		var err error
		if trust, err = hsmAuditTrust(cfg, &opts); err != nil {
			return err
		}
	}
	segs, err := audit.Segments(*logPath)
	if err != nil {
		return err
	}
	rep, err := audit.VerifyChain(segs, opts)
	for _, p := range rep.Problems {
		fmt.Fprintf(e.stdout, "PROBLEM %s\n", p)
	}
	if rep.ProblemsOmitted > 0 {
		fmt.Fprintf(e.stdout, "(%d more problems not shown)\n", rep.ProblemsOmitted)
	}
	printReanchors(e.stdout, rep)
	fmt.Fprintln(e.stdout, trust)
	if err != nil {
		if errors.Is(err, audit.ErrTampered) {
			return fmt.Errorf("audit log %s FAILED verification: %d problem(s)", *logPath, len(rep.Problems)+rep.ProblemsOmitted)
		}
		return err
	}
	fmt.Fprintf(e.stdout, "audit log %s verified (%d file(s)): %d records, %d signed checkpoints, last checkpoint at seq %d, head seq %d hash %s\n",
		*logPath, len(segs), rep.Records, rep.Checkpoints, rep.LastCheckpointSeq, rep.HeadSeq, rep.HeadHash)
	if n := len(rep.Reanchors) + rep.ReanchorsOmitted; n > 0 {
		fmt.Fprintf(e.stdout, "history was rolled back behind the anchor %d time(s): see REANCHORED above\n", n)
	}
	return nil
}

// hsmAuditTrust opens the configured token and fills opts with its audit
// key, the root certificate whose key is the token's root key, and the
// anchor. The anchor is read before the log is: the server makes a
// checkpoint durable before it anchors it, so this order never sees a
// running server's log behind its anchor.
func hsmAuditTrust(cfg *config.Server, opts *audit.VerifyOptions) (string, error) {
	tok, err := appliance.OpenHSM(cfg)
	if err != nil {
		return "", fmt.Errorf("cannot open the HSM (%w); to verify without it, give -bundle FILE with the trust bundle you hold out of band", err)
	}
	defer tok.Close()
	// A root certificate to chain later audit keys to; any file will do,
	// as only one whose key is the HSM's root key counts.
	certs, _ := readBundle(filepath.Join(cfg.DataDir, "bundle.pem"))
	auditKey, roots, err := appliance.AuditTrust(tok, certs)
	if err != nil {
		return "", err
	}
	opts.Keys, opts.Roots = []crypto.PublicKey{auditKey}, roots
	if opts.Anchor, err = audit.LoadAnchor(appliance.AuditAnchor{Token: tok}); err != nil {
		return "", err
	}
	trust := fmt.Sprintf("trust: the audit key in %s", tok)
	if roots != nil {
		trust += ", and certificates chaining to its root key"
	}
	if opts.Anchor == nil {
		return trust + "; WARNING: the HSM holds no audit anchor (none written yet): a log cut back to an earlier checkpoint would pass", nil
	}
	return trust + fmt.Sprintf("; anchor: checkpoint %d in the HSM", opts.Anchor.Seq), nil
}

func readBundle(path string) ([]*x509.Certificate, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	certs, err := ca.ParseCertsPEM(raw)
	if err != nil {
		return nil, fmt.Errorf("bundle %s: %w", path, err)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("bundle %s holds no certificate", path)
	}
	return certs, nil
}
