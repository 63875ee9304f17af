//go:build integration

package crl

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/palisade-id/palisade/ca/pkcs11"
	"github.com/palisade-id/palisade/ca/store"
	"github.com/palisade-id/palisade/crl"
	"github.com/palisade-id/palisade/crl/castore"
)

// serverConfig is what the parent test hands the server child process.
type serverConfig struct {
	Addr         string        `json:"addr"`
	TokenURI     string        `json:"token_uri"`
	InterLabel   string        `json:"inter_label"`
	InterCert    string        `json:"inter_cert"` // PEM-less DER file
	StorePath    string        `json:"store_path"`
	DataDir      string        `json:"data_dir"`
	AuditPath    string        `json:"audit_path"`
	OCSPValidity time.Duration `json:"ocsp_validity"`
}

// fileAudit appends JSON lines with fsync: enough to see every revocation
// audited in these tests (the server wires the CA's signed audit log).
type fileAudit struct {
	mu sync.Mutex
	f  *os.File
}

func (a *fileAudit) Append(_ context.Context, kind, actor string, data any) error {
	b, err := json.Marshal(map[string]any{"kind": kind, "actor": actor, "data": data})
	if err != nil {
		return err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, err := a.f.Write(append(b, '\n')); err != nil {
		return err
	}
	return a.f.Sync()
}

// serve runs the revocation service as palisade-server would, plus two
// test-only endpoints standing in for the CLI's revoke and node ban.
func serve(cfgPath string) error {
	b, err := os.ReadFile(cfgPath)
	if err != nil {
		return err
	}
	var sc serverConfig
	if err := json.Unmarshal(b, &sc); err != nil {
		return err
	}
	u, err := pkcs11.ParseURI(sc.TokenURI)
	if err != nil {
		return err
	}
	tok, err := pkcs11.Open(u)
	if err != nil {
		return err
	}
	defer tok.Close()
	interSigner, err := tok.Signer(sc.InterLabel)
	if err != nil {
		return err
	}
	der, err := os.ReadFile(sc.InterCert)
	if err != nil {
		return err
	}
	inter, err := x509.ParseCertificate(der)
	if err != nil {
		return err
	}
	st, err := store.Open(sc.StorePath, store.Options{})
	if err != nil {
		return err
	}
	defer st.Close()
	af, err := os.OpenFile(sc.AuditPath, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	iss := crl.Issuer{KeyID: fmt.Sprintf("%x", inter.SubjectKeyId), Cert: inter, Signer: interSigner, Active: true}
	cfg := crl.Config{DataDir: sc.DataDir, FullCRLMinInterval: 100 * time.Millisecond, OCSPValidity: sc.OCSPValidity}
	svc, err := crl.New(cfg, crl.Options{
		Store: castore.New(st), Audit: &fileAudit{f: af}, Keys: tok, BaseURL: "http://" + sc.Addr,
		Logger:  slog.New(slog.NewTextHandler(os.Stderr, nil)),
		Issuers: crl.IssuersFunc(func() []crl.Issuer { return []crl.Issuer{iss} }),
	})
	if err != nil {
		return err
	}
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer cancel()
	go svc.Run(ctx)

	mux := http.NewServeMux()
	mux.HandleFunc("/test/ready", func(w http.ResponseWriter, r *http.Request) {
		if err := svc.Ready(); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
		} else if _, n, err := svc.CRL(iss.KeyID, false); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
		} else {
			fmt.Fprint(w, n)
		}
	})
	mux.HandleFunc("/test/metrics", func(w http.ResponseWriter, r *http.Request) {
		m := svc.Metrics()
		json.NewEncoder(w).Encode(map[string]uint64{
			"refresh_failures": m.RefreshFailures.Load(), "crl_build_errors": m.CRLBuildErrors.Load(),
			"signatures": m.Signatures.Load(), "requests": m.Requests.Load(), "http_handoffs": m.HTTPHandoffs.Load(),
		})
	})
	mux.HandleFunc("/test/revoke", func(w http.ResponseWriter, r *http.Request) {
		serial, ok := new(big.Int).SetString(r.FormValue("serial"), 16)
		reason, err := strconv.Atoi(r.FormValue("reason"))
		if !ok || err != nil {
			http.Error(w, "bad serial or reason", http.StatusBadRequest)
			return
		}
		if _, err := svc.Revoke(r.Context(), "test-operator", serial, reason); err != nil {
			http.Error(w, err.Error(), http.StatusConflict)
		}
	})
	mux.HandleFunc("/test/ban", func(w http.ResponseWriter, r *http.Request) {
		reason, _ := strconv.Atoi(r.FormValue("reason"))
		n, err := svc.RevokeNode(r.Context(), "test-operator", r.FormValue("node"), reason)
		if err != nil {
			http.Error(w, err.Error(), http.StatusConflict)
			return
		}
		fmt.Fprint(w, n)
	})
	h := svc.Handler()
	root := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if len(r.URL.Path) > 6 && r.URL.Path[:6] == "/test/" {
			mux.ServeHTTP(w, r)
			return
		}
		h.ServeHTTP(w, r)
	})
	ln, err := net.Listen("tcp", sc.Addr)
	if err != nil {
		return err
	}
	srv := svc.NewHTTPServer(&http.Server{Handler: root, ReadHeaderTimeout: 5 * time.Second})
	go func() { <-ctx.Done(); srv.Close() }()
	if err := srv.Serve(ln); err != http.ErrServerClosed {
		return err
	}
	return nil
}
