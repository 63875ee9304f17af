// Command palisade-agent runs on every node: it attests the node to
// palisade-server with its TPM, keeps the node SVID current (re-attesting at
// half-life, key only in memory) and, when configured, runs the kernel
// enforcer with revocation from the appliance's CRLs and feed.
//
//	palisade-agent run -config FILE
//	palisade-agent attest -config FILE -write DIR
//	palisade-agent uninstall -config FILE
package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/palisade-id/palisade/attestor/agent"
	"github.com/palisade-id/palisade/ca/nodeapi"
	"github.com/palisade-id/palisade/ca/nodeapi/nodev1"
	"github.com/palisade-id/palisade/cmd/internal/atomicfile"
	"github.com/palisade-id/palisade/crl"
	"github.com/palisade-id/palisade/enforcer"
)

const usage = `usage:
  palisade-agent run -config FILE              attest, keep the node SVID current, enforce
  palisade-agent attest -config FILE -write DIR one attestation: DIR/svid.pem, key.pem, bundle.pem
  palisade-agent uninstall -config FILE        remove the enforcer's pins and filters (stop run first)`

// NodeSVIDFile is the current node certificate chain under data_dir.
const NodeSVIDFile = "node-svid.pem"

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, usage)
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "run":
		err = runCmd(os.Args[2:])
	case "attest":
		err = attestCmd(os.Args[2:])
	case "uninstall":
		err = uninstallCmd(os.Args[2:])
	default:
		fmt.Fprintln(os.Stderr, usage)
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "palisade-agent:", err)
		var ue usageError
		if errors.As(err, &ue) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

type usageError struct{ error }

func loadFlags(name string, args []string, extra func(*flag.FlagSet)) (*Config, error) {
	fs := flag.NewFlagSet("palisade-agent "+name, flag.ContinueOnError)
	path := fs.String("config", "/etc/palisade/agent.yaml", "configuration file")
	if extra != nil {
		extra(fs)
	}
	if err := fs.Parse(args); err != nil {
		return nil, usageError{err}
	}
	if fs.NArg() > 0 {
		return nil, usageError{fmt.Errorf("unexpected arguments %q", fs.Args())}
	}
	cfg, err := LoadConfig(*path)
	if err != nil {
		return nil, usageError{err}
	}
	return cfg, nil
}

func attestCmd(args []string) error {
	var dir string
	cfg, err := loadFlags("attest", args, func(fs *flag.FlagSet) {
		fs.StringVar(&dir, "write", "", "directory for svid.pem, key.pem and bundle.pem")
	})
	if err != nil {
		return err
	}
	if dir == "" {
		return usageError{errors.New("attest: -write DIR is required")}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	res, err := cfg.Attestation.AttestOnce(ctx, key)
	if err != nil {
		return fmt.Errorf("attestation: %w", err)
	}
	svid := &x509svid.SVID{ID: res.ID, Certificates: res.Chain, PrivateKey: key}
	bundle, err := fetchBundle(ctx, cfg, svid)
	if err != nil {
		return err
	}
	certPEM, keyPEM, err := svid.Marshal()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := atomicfile.WriteFiles(dir,
		atomicfile.File{Name: "key.pem", Data: keyPEM, Mode: 0o600},
		atomicfile.File{Name: "svid.pem", Data: certPEM, Mode: 0o644},
		atomicfile.File{Name: "bundle.pem", Data: bundle, Mode: 0o644}); err != nil {
		return err
	}
	fmt.Println(res.ID.String())
	return nil
}

// fetchBundle asks the node API, as the freshly attested node, for the
// current trust bundle (it may hold roots newer than the install bundle).
func fetchBundle(ctx context.Context, cfg *Config, svid *x509svid.SVID) ([]byte, error) {
	roots, err := cfg.Attestation.Roots()
	if err != nil {
		return nil, err
	}
	serverID, err := cfg.Attestation.ServerSPIFFEID()
	if err != nil {
		return nil, err
	}
	cc, err := nodeapi.Dial(cfg.Attestation.Server, serverID.TrustDomain(), roots, clientCert(svid))
	if err != nil {
		return nil, err
	}
	defer cc.Close()
	resp, err := nodev1.NewNodeClient(cc).FetchBundle(ctx, &nodev1.FetchBundleRequest{})
	if err != nil {
		return nil, fmt.Errorf("fetch bundle: %w", err)
	}
	var buf bytes.Buffer
	for _, der := range resp.GetX509Authorities() {
		if _, err := x509.ParseCertificate(der); err != nil {
			return nil, fmt.Errorf("fetch bundle: %w", err)
		}
		_ = pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: der})
	}
	if buf.Len() == 0 {
		return nil, errors.New("fetch bundle: no X.509 authorities")
	}
	return buf.Bytes(), nil
}

func clientCert(svid *x509svid.SVID) func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	return func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
		c := &tls.Certificate{PrivateKey: svid.PrivateKey, Leaf: svid.Certificates[0]}
		for _, cert := range svid.Certificates {
			c.Certificate = append(c.Certificate, cert.Raw)
		}
		return c, nil
	}
}

func runCmd(args []string) error {
	// First: SIGHUP's default action ends the process (status 129, which
	// systemd counts as clean, so Restart=on-failure does not restart it).
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	cfg, err := loadFlags("run", args, nil)
	if err != nil {
		return err
	}
	log := cfg.Log.NewLogger()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg, log, hup); err != nil {
		log.Error("palisade-agent stopped", "err", err)
		return err
	}
	return nil
}

func run(ctx context.Context, cfg *Config, log *slog.Logger, hup <-chan os.Signal) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// The enforcer's ReloadPolicy, once it exists; nil without an enforcer.
	var enforcerUp chan func() error
	hupLog := log
	if cfg.Enforcer != nil {
		enforcerUp = make(chan func() error, 1)
		hupLog = log.With("file", cfg.Enforcer.PolicyFile)
	}
	hupDone := make(chan struct{})
	go func() { defer close(hupDone); serveHUP(ctx, hup, enforcerUp, hupLog) }()
	defer func() { cancel(); <-hupDone }()

	if cfg.Enforcer != nil {
		release, err := lockPinDir(cfg.Enforcer.PinDir, true)
		if err != nil {
			return err
		}
		defer release()
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return err
	}
	// Files named in the configuration fail now, not in the retry loop.
	roots, err := cfg.Attestation.Roots()
	if err != nil {
		return err
	}
	if _, err := cfg.Attestation.Intermediates(); err != nil {
		return err
	}
	svidPath := filepath.Join(cfg.DataDir, NodeSVIDFile)
	src, err := firstSVID(ctx, cfg, log, func(s *x509svid.SVID) {
		certPEM, _, err := s.Marshal()
		if err == nil {
			err = atomicfile.WriteFile(svidPath, certPEM, 0o644)
		}
		if err != nil {
			log.Warn("write node certificate", "path", svidPath, "err", err)
		}
	})
	if err != nil {
		if ctx.Err() != nil {
			return nil // stopped before the first SVID
		}
		return err
	}
	done := make(chan struct{})
	go func() { defer close(done); src.Run(ctx) }()
	defer func() { cancel(); <-done }()

	if cfg.Enforcer == nil {
		log.Info("palisade-agent ready (attestation only)", "data_dir", cfg.DataDir)
		<-ctx.Done()
		return nil
	}
	pool := x509.NewCertPool()
	for _, r := range roots {
		pool.AddCert(r)
	}
	// The enforcer re-checks admissions as soon as the feed brings a
	// revocation, not only at its next periodic re-check.
	var recheck atomic.Pointer[enforcer.Admitter]
	var checker *crl.Checker // OnUpdate runs only from checker.Run, started below
	checker, err = crl.NewChecker(crl.CheckerConfig{BaseURL: cfg.ApplianceURL, Roots: pool, Logger: log.With("component", "revocation"),
		OnUpdate: func() {
			if a := recheck.Load(); a != nil {
				a.Recheck()
			}
			renewIfRevoked(src, checker, log)
		}})
	if err != nil {
		return err
	}
	if err := checker.Sync(ctx); err != nil {
		// Not fatal: admissions fail closed until the CRLs arrive.
		log.Warn("initial CRL fetch failed", "err", err)
	}
	go checker.Run(ctx)
	bundle := x509bundle.FromX509Authorities(mustTD(cfg), roots)
	enf, err := enforcer.NewAgent(ctx, *cfg.Enforcer, enforcer.Deps{
		SVID: src, Revocation: checker, Bundle: bundle, Logger: log.With("component", "enforcer"),
	})
	if err != nil {
		return err
	}
	recheck.Store(enf.Admitter())
	enforcerUp <- enf.ReloadPolicy
	log.Info("palisade-agent ready", "admission", enf.AdmissionAddr().String(), "interfaces", cfg.Enforcer.Interfaces, "mode", cfg.Enforcer.Mode)
	return enf.Run(ctx)
}

// serveHUP turns SIGHUP into policy reloads until ctx ends. enforcerUp
// delivers the enforcer's reload once it is running; it is nil in
// attestation-only mode, where SIGHUP is logged and ignored. A SIGHUP before
// the enforcer is up is remembered and applied once when it arrives: the
// enforcer may have read the policy file before the edit it signals.
func serveHUP(ctx context.Context, hup <-chan os.Signal, enforcerUp <-chan func() error, log *slog.Logger) {
	var reload func() error
	pending := false
	for {
		select {
		case <-ctx.Done():
			return
		case reload = <-enforcerUp:
			enforcerUp = nil
			if !pending {
				continue
			}
		case <-hup:
			switch {
			case reload != nil:
			case enforcerUp == nil:
				log.Info("SIGHUP ignored: no enforcer configured")
				continue
			default:
				log.Info("SIGHUP before the enforcer is running: policy reload deferred until it starts")
				pending = true
				continue
			}
		}
		pending = false
		if err := reload(); err != nil {
			log.Error("policy reload refused", "err", err)
		} else {
			log.Info("policy reloaded")
		}
	}
}

// firstSVID attests until it succeeds (the appliance may still be
// starting) or ctx ends. A refusal is retried too: the operator may admit
// the node's EK to the manifest meanwhile.
func firstSVID(ctx context.Context, cfg *Config, log *slog.Logger, onRotate func(*x509svid.SVID)) (*agent.Source, error) {
	backoff := time.Second
	for {
		src, err := agent.NewSource(ctx, cfg.Attestation.AttestOnce, agent.SourceOptions{Logger: log.With("component", "attestation"), OnRotate: onRotate})
		if err == nil {
			return src, nil
		}
		log.Error("attestation failed", "err", err, "retry_in", backoff)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 30*time.Second)
	}
}

// renewIfRevoked re-attests at once when the node's own SVID was revoked
// (its peers stop admitting it within a second); a banned node's attempt
// is refused and retried with backoff like any failed renewal.
func renewIfRevoked(src *agent.Source, checker *crl.Checker, log *slog.Logger) {
	svid, err := src.GetX509SVID()
	if err != nil {
		return
	}
	leaf := svid.Certificates[0]
	if revoked, err := checker.Revoked(leaf.SerialNumber, leaf.AuthorityKeyId); err == nil && revoked {
		log.Warn("node SVID revoked; attesting again", "serial", leaf.SerialNumber.Text(16))
		src.RenewNow()
	}
}

func mustTD(cfg *Config) spiffeid.TrustDomain {
	id, _ := cfg.Attestation.ServerSPIFFEID()
	return id.TrustDomain()
}
