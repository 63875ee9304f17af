package main

import (
	"context"
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
	if err := os.WriteFile(path, bundle, 0o644); err != nil {
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

func auditVerify(_ context.Context, e *env, args []string) error {
	fs := e.flags("audit verify")
	cfgPath := fs.String("config", "", "palisade-server configuration (for the log and bundle paths)")
	logPath := fs.String("log", "", "audit log file (default: from -config)")
	bundlePath := fs.String("bundle", "", "trust roots PEM the checkpoint key must chain to (default: data_dir/bundle.pem)")
	sealed := fs.Bool("requireCheckpointAtEnd", false, "fail unless the log ends with a signed checkpoint (the server is stopped)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *cfgPath != "" {
		cfg, err := config.Load(*cfgPath)
		if err != nil {
			return err
		}
		if *logPath == "" {
			*logPath = cfg.Audit.Path
		}
		if *bundlePath == "" {
			*bundlePath = filepath.Join(cfg.DataDir, "bundle.pem")
		}
	}
	if *logPath == "" || *bundlePath == "" {
		return fmt.Errorf("%w: give -config, or -log and -bundle", errUsage)
	}
	raw, err := os.ReadFile(*bundlePath)
	if err != nil {
		return err
	}
	certs, err := ca.ParseCertsPEM(raw)
	if err != nil {
		return fmt.Errorf("bundle %s: %w", *bundlePath, err)
	}
	if len(certs) == 0 {
		return fmt.Errorf("bundle %s holds no certificate", *bundlePath)
	}
	roots := x509.NewCertPool()
	for _, c := range certs {
		roots.AddCert(c)
	}
	segs, err := audit.Segments(*logPath)
	if err != nil {
		return err
	}
	rep, err := audit.VerifyChain(segs, audit.VerifyOptions{Roots: roots, RequireCheckpointAtEnd: *sealed})
	for _, p := range rep.Problems {
		fmt.Fprintf(e.stdout, "PROBLEM %s\n", p)
	}
	if rep.ProblemsOmitted > 0 {
		fmt.Fprintf(e.stdout, "(%d more problems not shown)\n", rep.ProblemsOmitted)
	}
	if err != nil {
		if errors.Is(err, audit.ErrTampered) {
			return fmt.Errorf("audit log %s FAILED verification: %d problem(s)", *logPath, len(rep.Problems))
		}
		return err
	}
	fmt.Fprintf(e.stdout, "audit log %s verified (%d file(s)): %d records, %d signed checkpoints, last checkpoint at seq %d, head seq %d hash %s\n",
		*logPath, len(segs), rep.Records, rep.Checkpoints, rep.LastCheckpointSeq, rep.HeadSeq, rep.HeadHash)
	return nil
}
