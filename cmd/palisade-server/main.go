// Command palisade-server runs the appliance: the CA behind its HSM, the
// node API (gRPC, mutual TLS 1.3), the operator socket, revocation over HTTP
// inside the enclave, and Prometheus metrics on loopback.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	attcawire "github.com/palisade-id/palisade/attestor/cawire"
	"golang.org/x/net/netutil"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"

	"github.com/palisade-id/palisade/attestor"
	attstore "github.com/palisade-id/palisade/attestor/store"
	"github.com/palisade-id/palisade/ca"
	"github.com/palisade-id/palisade/ca/admin"
	"github.com/palisade-id/palisade/ca/nodeapi"
	"github.com/palisade-id/palisade/ca/store"
	"github.com/palisade-id/palisade/cmd/internal/appliance"
	"github.com/palisade-id/palisade/cmd/internal/config"
	"github.com/palisade-id/palisade/crl"
	"github.com/palisade-id/palisade/crl/castore"
	"github.com/palisade-id/palisade/crl/cawire"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func main() {
	if len(os.Args) < 2 || os.Args[1] != "run" {
		fmt.Fprintln(os.Stderr, "usage: palisade-server run -config FILE")
		os.Exit(2)
	}
	fs := flag.NewFlagSet("palisade-server run", flag.ExitOnError)
	cfgPath := fs.String("config", "/etc/palisade/server.yaml", "configuration file")
	_ = fs.Parse(os.Args[2:])
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		fmt.Fprintln(os.Stderr, "palisade-server:", err)
		os.Exit(2)
	}
	log := cfg.Log.NewLogger()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg, log); err != nil {
		log.Error("palisade-server stopped", "err", err)
		os.Exit(1)
	}
}

type metrics struct {
	reg    *prometheus.Registry
	issued *prometheus.CounterVec
}

func newMetrics() *metrics {
	m := &metrics{reg: prometheus.NewRegistry()}
	m.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m.issued = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "palisade_certificates_issued_total", Help: "Durably recorded certificates, by kind.",
	}, []string{"kind"})
	m.reg.MustRegister(m.issued)
	return m
}

// registerCRLMetrics exports the revocation service's counters.
func registerCRLMetrics(reg *prometheus.Registry, cm *crl.Metrics) {
	for _, c := range []struct {
		name, help string
		v          *atomic.Uint64
	}{
		{"palisade_ocsp_requests_total", "OCSP requests answered.", &cm.Requests},
		{"palisade_ocsp_cache_hits_total", "OCSP requests answered from the pre-signed cache.", &cm.CacheHits},
		{"palisade_ocsp_signatures_total", "OCSP responses signed.", &cm.Signatures},
		{"palisade_ocsp_sign_failures_total", "Failed OCSP response signatures.", &cm.SignFailures},
		{"palisade_ocsp_malformed_total", "Malformed OCSP requests.", &cm.Malformed},
		{"palisade_ocsp_unauthorized_total", "OCSP requests for issuers this responder does not serve.", &cm.Unauthorized},
		{"palisade_ocsp_try_later_total", "OCSP requests answered tryLater.", &cm.TryLater},
		{"palisade_ocsp_presign_dropped_total", "Pre-signatures dropped because the queue was full.", &cm.PresignDropped},
		{"palisade_revocation_refresh_failures_total", "Failed pre-sign, refresh or CRL builds.", &cm.RefreshFailures},
		{"palisade_crl_builds_total", "CRLs built and signed.", &cm.CRLBuilds},
		{"palisade_crl_build_errors_total", "Failed CRL builds.", &cm.CRLBuildErrors},
		{"palisade_http_handoffs_total", "Connections the lean OCSP path handed to the general HTTP server.", &cm.HTTPHandoffs},
	} {
		registerCounter(reg, prometheus.CounterOpts{Name: c.name, Help: c.help}, c.v)
	}
}

// registerCounter exports v as a counter.
func registerCounter(reg *prometheus.Registry, opts prometheus.CounterOpts, v *atomic.Uint64) {
	reg.MustRegister(prometheus.NewCounterFunc(opts, func() float64 { return float64(v.Load()) }))
}

// registerByReason exports one counter per reason label of name.
func registerByReason(reg *prometheus.Registry, name, help string, byReason map[string]*atomic.Uint64) {
	for reason, v := range byReason {
		registerCounter(reg, prometheus.CounterOpts{Name: name, Help: help, ConstLabels: prometheus.Labels{"reason": reason}}, v)
	}
}

// registerAttestorMetrics exports the attestation refusals that are
// counted instead of, or as well as, audited: those made before the node's
// EK was known and those of EKs not in the manifest.
func registerAttestorMetrics(reg *prometheus.Registry, r *attestor.Refusals) {
	registerByReason(reg, "palisade_attest_refused_unidentified_total",
		"Attestations refused before the node's EK was known (not audited one by one).",
		map[string]*atomic.Uint64{"busy": &r.Busy, "hello_timeout": &r.HelloTimeout, "session_open": &r.SessionOpen, "other": &r.Other})
	registerByReason(reg, "palisade_attest_refused_unknown_ek_total",
		"Attestations refused for an EK not in the manifest (audited within unknown_ek_audit_per_minute).",
		r.UnknownEK.ByReason())
	registerCounter(reg, prometheus.CounterOpts{
		Name: "palisade_attest_refused_unknown_ek_unaudited_total",
		Help: "Refusals of EKs not in the manifest over the audit budget: summarised once a minute (attestor.attest.refuse.suppressed), not audited one by one.",
	}, &r.UnknownEK.Unaudited)
	registerByReason(reg, "palisade_attest_refused_unproven_ek_total",
		"Attestations refused for a manifest EK before credential activation proved its TPM (audited within unknown_ek_audit_per_minute and a per-EK allowance).",
		r.UnprovenEK.ByReason())
	registerCounter(reg, prometheus.CounterOpts{
		Name: "palisade_attest_refused_unproven_ek_unaudited_total",
		Help: "Refusals of manifest EKs before activation over the audit budget: summarised once a minute (attestor.attest.refuse.suppressed), not audited one by one.",
	}, &r.UnprovenEK.Unaudited)
}

func run(ctx context.Context, cfg *config.Server, log *slog.Logger) error {
	m := newMetrics()
	// The revocation service needs the CA's issuers, the CA needs to tell
	// it about each issuance: bind the hook once both exist.
	var revocation atomic.Pointer[crl.Service]
	caOpts := ca.Options{
		CRLURL:  func(keyID string) string { return crl.CRLURL(cfg.HTTP.PublicURL, keyID) },
		OCSPURL: crl.OCSPURL(cfg.HTTP.PublicURL),
		OnIssued: func(r store.CertRecord) {
			m.issued.WithLabelValues(r.Kind).Inc()
			if svc := revocation.Load(); svc != nil {
				svc.Issued(r.Serial, r.IssuerKeyID, r.NotAfter)
			}
		},
	}
	app, err := appliance.Open(cfg, caOpts)
	if err != nil {
		return err
	}
	defer func() {
		if err := app.Close(); err != nil {
			log.Error("close", "err", err)
		}
	}()
	sink := appliance.Sink{Log: app.Audit}
	if _, err := app.CA.Rotate(ctx); err != nil {
		return fmt.Errorf("initial rotation check: %w", err)
	}
	crlSvc, err := crl.New(cfg.CRL, crl.Options{
		Store: castore.New(app.Store), Audit: sink, Keys: app.Token,
		Issuers: cawire.Issuers(app.CA),
		BaseURL: cfg.HTTP.PublicURL,
		Logger:  log.With("component", "crl"),
	})
	if err != nil {
		return err
	}
	revocation.Store(crlSvc)
	attDB, err := attstore.Open(cfg.AttestorStorePath())
	if err != nil {
		return err
	}
	defer attDB.Close()
	att, err := attestor.New(ctx, app.CA.TrustDomain(), cfg.Attestor, attestor.Deps{
		Store: attDB, Issuer: attcawire.NodeIssuer{CA: app.CA}, Auditor: sink,
		Revoker: attcawire.Revoker{Svc: crlSvc}, Logger: log.With("component", "attestor"),
	})
	if err != nil {
		return err
	}
	registerAttestorMetrics(m.reg, att.Refusals())
	ident, err := nodeapi.NewIdentity(ctx, app.CA)
	if err != nil {
		return err
	}
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "palisade_hsm_up", Help: "1 when the HSM answers.",
	}, func() float64 {
		if app.Token.Ping() != nil {
			return 0
		}
		return 1
	}))

	// Node API.
	nodeLn, err := net.Listen("tcp", cfg.NodeAPI.Listen)
	if err != nil {
		return fmt.Errorf("node_api.listen: %w", err)
	}
	// Attestation shares the listener: a node has no SVID yet, so this
	// service needs none (the listener only requests client certificates).
	// The attestor's server carries its transport limits (message size,
	// concurrent streams); the node API is added to it.
	grpcSrv := att.NewGRPCServer(nodeapi.ServerTLS(ident.GetCertificate), grpcServerOptions(cfg)...)
	nodeapi.New(nodeapi.Options{CA: app.CA, Entries: app.Store, Certs: app.Store, Log: log,
		Gate: func(ctx context.Context, node spiffeid.ID) error { return notBanned(ctx, att.Node, node) },
		Revoke: func(ctx context.Context, node spiffeid.ID, serial *big.Int) error {
			_, err := crlSvc.Revoke(ctx, "nodeapi", serial, banCRLReason(ctx, att, node))
			return err
		},
	}).Register(grpcSrv)

	// Operator socket.
	mux := admin.NewMux()
	(&admin.CARoutes{CA: app.CA, Store: app.Store, Audit: sink, Checks: map[string]admin.Health{
		"hsm":   func(context.Context) error { return app.Token.Ping() },
		"store": func(context.Context) error { _, err := app.Store.Stats(); return err },
		"issuer": func(context.Context) error {
			is, err := app.CA.ActiveIssuer()
			if err != nil {
				return err
			}
			if time.Until(is.Cert.NotAfter) <= 0 {
				return errors.New("active intermediate expired")
			}
			return nil
		},
		"crl": func(context.Context) error { return crlSvc.Ready() },
		// Records still commit when a checkpoint or its HSM anchor fails,
		// but are protected by the chain alone until one succeeds.
		"audit": func(context.Context) error { return app.Audit.CheckpointErr() },
	}}).Register(mux)
	(&admin.RevocationRoutes{CRL: crlSvc}).Register(mux)
	(&admin.AttestationRoutes{Attestor: att}).Register(mux)
	adminSrv, err := admin.Listen(cfg.Admin.Socket, mux, log)
	if err != nil {
		return err
	}

	// Revocation over HTTP, inside the enclave.
	httpMux := http.NewServeMux()
	httpMux.HandleFunc("GET /bundle.pem", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/x-pem-file")
		_, _ = w.Write(app.CA.BundlePEM())
	})
	httpLn, err := net.Listen("tcp", cfg.HTTP.Listen)
	if err != nil {
		return fmt.Errorf("http.listen: %w", err)
	}
	// Revocation paths go to the CRL service before any ServeMux: an OCSP
	// GET's base64 may contain "//", which ServeMux would redirect.
	crlHandler := crlSvc.Handler()
	// Every node can reach this listener: connections net/http takes over
	// from the lean OCSP path are bounded like the lean ones (idle 2 min),
	// a request must arrive within 30 s, and a response (the feed's long
	// poll included) leave within its timeout plus 30 s.
	httpSrv := crlSvc.NewHTTPServer(&http.Server{ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 30 * time.Second,
		WriteTimeout: cfg.CRL.LongPollTimeout + 30*time.Second, IdleTimeout: 2 * time.Minute,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			p := r.URL.Path
			if strings.HasPrefix(p, "/crl/") || p == "/ocsp" || strings.HasPrefix(p, "/ocsp/") || p == "/revocations" {
				crlHandler.ServeHTTP(w, r)
				return
			}
			httpMux.ServeHTTP(w, r)
		})})
	registerCRLMetrics(m.reg, crlSvc.Metrics())

	metricsLn, err := net.Listen("tcp", cfg.Metrics.Listen)
	if err != nil {
		return fmt.Errorf("metrics.listen: %w", err)
	}
	metricsSrv := &http.Server{Handler: promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}), ReadHeaderTimeout: 5 * time.Second}

	if err := sink.Append(ctx, "server.started", "system", map[string]any{
		"node_api": nodeLn.Addr().String(), "http": httpLn.Addr().String(), "admin": cfg.Admin.Socket,
	}); err != nil {
		return err
	}
	var wg sync.WaitGroup
	errc := make(chan error, 4)
	serve := func(name string, f func() error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, grpc.ErrServerStopped) {
				errc <- fmt.Errorf("%s: %w", name, err)
			}
		}()
	}
	serve("node api", func() error { return grpcSrv.Serve(nodeLn) })
	serve("admin", adminSrv.Serve)
	serve("http", func() error { return httpSrv.Serve(netutil.LimitListener(httpLn, maxHTTPConns)) })
	serve("metrics", func() error { return metricsSrv.Serve(metricsLn) })
	bg, cancelBG := context.WithCancel(ctx)
	go ident.Run(bg, log)
	// Reopen the token after an HSM outage; until then issuance fails
	// loudly and the health check reports the HSM.
	go app.Token.Supervise(bg, 5*time.Second, func(err error) {
		if err != nil {
			log.Error("HSM unavailable", "err", err)
			return
		}
		log.Info("HSM available")
	})
	go app.CA.RunRotation(bg, cfg.Rotate, log, func(ca.RotationEvent) { crlSvc.IssuersChanged() })
	go att.Run(bg)
	go func() {
		if err := crlSvc.Run(bg); err != nil && bg.Err() == nil {
			errc <- fmt.Errorf("crl: %w", err)
		}
	}()
	log.Info("palisade-server ready", "trust_domain", cfg.CA.TrustDomain,
		"node_api", nodeLn.Addr().String(), "http", httpLn.Addr().String(),
		"metrics", metricsLn.Addr().String(), "admin", cfg.Admin.Socket)

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
	}
	cancelBG()
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	grpcSrv.GracefulStop()
	// No more refusals: summarise those over the audit budget before the
	// audit log closes.
	if err := att.Shutdown(shutdownCtx); err != nil {
		log.Error("attestor shutdown", "err", err)
	}
	_ = adminSrv.Shutdown(shutdownCtx)
	_ = httpSrv.Shutdown(shutdownCtx)
	_ = metricsSrv.Shutdown(shutdownCtx)
	wg.Wait()
	if err := sink.Append(shutdownCtx, "server.stopped", "system", map[string]any{"error": fmt.Sprint(runErr)}); err != nil {
		log.Error("audit server.stopped", "err", err)
	}
	return runErr
}

// maxHTTPConns caps the revocation listener's open connections, so that
// hostile clients run it out of connections, not of file descriptors.
const maxHTTPConns = 8192

// nodeAPIMaxMessage is the least receive limit the node API needs: a CSR
// of ca.MaxCSRSize plus the rest of a request.
const nodeAPIMaxMessage = ca.MaxCSRSize + 4<<10

// grpcServerOptions are the node listener's options beyond the attestor's
// own: the receive limit (attestor.max_message_bytes, raised if need be to
// what the node API needs; the attestor checks its own limit per message)
// and keepalive. Idle connections are closed after 5 minutes; clients may
// ping every 30 s, even with no call open, so that palisade-agent's
// keepalive pings are not answered with GOAWAY "too_many_pings".
func grpcServerOptions(cfg *config.Server) []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.MaxRecvMsgSize(max(cfg.Attestor.MaxMessageBytes, nodeAPIMaxMessage)),
		grpc.KeepaliveParams(keepalive.ServerParameters{MaxConnectionIdle: 5 * time.Minute}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 30 * time.Second, PermitWithoutStream: true}),
	}
}

// banCRLReason is the CRL reason of node's ban, or unspecified.
func banCRLReason(ctx context.Context, att *attestor.Service, node spiffeid.ID) int {
	if rec, err := att.Node(ctx, node.String()); err == nil && rec.Banned && crl.ValidReason(rec.BanCRLReason) {
		return rec.BanCRLReason
	}
	return 0
}

// notBanned refuses node-API callers descending from a banned node, node
// looked up by lookup (attestor.Service.Node). A failed lookup is reported
// as nodeapi.ErrGateUnavailable: the caller may retry.
func notBanned(ctx context.Context, lookup func(context.Context, string) (attestor.NodeRecord, error), node spiffeid.ID) error {
	if !strings.HasPrefix(node.Path(), nodeapi.NodePathPrefix) {
		return nil
	}
	rec, err := lookup(ctx, node.String())
	if errors.Is(err, attestor.ErrNotFound) || errors.Is(err, attestor.ErrInvalidArgument) {
		return nil // minted by the operator, not attested
	}
	if err != nil {
		return fmt.Errorf("%w: node record: %w", nodeapi.ErrGateUnavailable, err)
	}
	if rec.Banned {
		return fmt.Errorf("node banned: %s", rec.BanReason)
	}
	return nil
}
