package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strings"

	"github.com/palisade-id/palisade/ca/admin"
	"github.com/palisade-id/palisade/cmd/internal/atomicfile"
)

func init() {
	register("entry create", "create a registration entry", entryCreate)
	register("entry show", "list registration entries (filter by -spiffeID, -parentID, -entryID)", entryShow)
	register("entry delete", "delete a registration entry", entryDelete)
	register("bundle show", "print the trust bundle (-format pem|spiffe)", bundleShow)
	register("x509 mint", "issue an X509-SVID (from -csr, or to a fresh key written beside it)", x509Mint)
	register("jwt mint", "issue a JWT-SVID", jwtMint)
	register("healthcheck", "check that palisade-server, its HSM and store are healthy", healthcheck)
}

func printJSON(e *env, v any) error {
	enc := json.NewEncoder(e.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func entryCreate(ctx context.Context, e *env, args []string) error {
	fs := e.flags("entry create")
	var req admin.Entry
	var sels, dns multi
	fs.StringVar(&req.SPIFFEID, "spiffeID", "", "SPIFFE ID of the workload")
	fs.StringVar(&req.ParentID, "parentID", "", "SPIFFE ID of the node that may obtain it")
	fs.Var(&sels, "selector", "selector type:value (repeatable)")
	fs.Var(&dns, "dns", "DNS SAN (repeatable)")
	fs.StringVar(&req.X509TTL, "x509SVIDTTL", "", "X509-SVID TTL (e.g. 1h), the default and the longest a node may ask; empty for the CA default")
	fs.StringVar(&req.JWTTTL, "jwtSVIDTTL", "", "JWT-SVID TTL, the default and the longest a node may ask; empty for the CA default")
	if err := parse(fs, args); err != nil {
		return err
	}
	if req.SPIFFEID == "" || req.ParentID == "" {
		return fmt.Errorf("%w: -spiffeID and -parentID are required", errUsage)
	}
	req.Selectors, req.DNSNames = sels, dns
	var out admin.Entry
	if err := e.client().Do(ctx, http.MethodPost, "/v1/entries", &req, &out); err != nil {
		return err
	}
	return printJSON(e, out)
}

func entryShow(ctx context.Context, e *env, args []string) error {
	fs := e.flags("entry show")
	id := fs.String("entryID", "", "entry ID")
	spiffeID := fs.String("spiffeID", "", "filter by SPIFFE ID")
	parentID := fs.String("parentID", "", "filter by parent ID")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *id != "" {
		var out admin.Entry
		if err := e.client().Do(ctx, http.MethodGet, "/v1/entries/"+url.PathEscape(*id), nil, &out); err != nil {
			return err
		}
		return printJSON(e, out)
	}
	q := url.Values{}
	if *spiffeID != "" {
		q.Set("spiffe_id", *spiffeID)
	}
	if *parentID != "" {
		q.Set("parent_id", *parentID)
	}
	var out []admin.Entry
	if err := e.client().Do(ctx, http.MethodGet, "/v1/entries?"+q.Encode(), nil, &out); err != nil {
		return err
	}
	return printJSON(e, out)
}

func entryDelete(ctx context.Context, e *env, args []string) error {
	fs := e.flags("entry delete")
	id := fs.String("entryID", "", "entry ID")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *id == "" {
		return fmt.Errorf("%w: -entryID is required", errUsage)
	}
	var out admin.Entry
	if err := e.client().Do(ctx, http.MethodDelete, "/v1/entries/"+url.PathEscape(*id), nil, &out); err != nil {
		return err
	}
	return printJSON(e, out)
}

func bundleShow(ctx context.Context, e *env, args []string) error {
	fs := e.flags("bundle show")
	format := fs.String("format", "pem", "pem or spiffe")
	if err := parse(fs, args); err != nil {
		return err
	}
	var out admin.BundleResponse
	if err := e.client().Do(ctx, http.MethodGet, "/v1/bundle", nil, &out); err != nil {
		return err
	}
	switch *format {
	case "pem":
		_, err := fmt.Fprint(e.stdout, out.PEM)
		return err
	case "spiffe":
		_, err := fmt.Fprintln(e.stdout, out.SPIFFE)
		return err
	}
	return fmt.Errorf("%w: -format %q: want pem or spiffe", errUsage, *format)
}

func x509Mint(ctx context.Context, e *env, args []string) error {
	fs := e.flags("x509 mint")
	spiffeID := fs.String("spiffeID", "", "SPIFFE ID (required without -csr; must match the CSR with it)")
	csrPath := fs.String("csr", "", "PEM or DER CSR file; without it a P-256 key is generated here")
	ttl := fs.String("ttl", "", "TTL, e.g. 30m (default: the CA's)")
	write := fs.String("write", "", "directory to write svid.pem, bundle.pem (and key.pem) to instead of stdout")
	var dns multi
	fs.Var(&dns, "dns", "DNS SAN (repeatable)")
	if err := parse(fs, args); err != nil {
		return err
	}
	var keyPEM []byte
	req := admin.MintX509Request{SPIFFEID: *spiffeID, TTL: *ttl, DNSNames: dns}
	if *csrPath != "" {
		raw, err := os.ReadFile(*csrPath)
		if err != nil {
			return err
		}
		if !strings.Contains(string(raw), "-----BEGIN") {
			raw = []byte(admin.DecodePEMCSR(raw))
		}
		req.CSRPEM = string(raw)
	} else {
		if *spiffeID == "" {
			return fmt.Errorf("%w: -spiffeID or -csr is required", errUsage)
		}
		u, err := url.Parse(*spiffeID)
		if err != nil {
			return fmt.Errorf("%w: -spiffeID: %v", errUsage, err)
		}
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return err
		}
		der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{u}}, key)
		if err != nil {
			return err
		}
		req.CSRPEM = admin.DecodePEMCSR(der)
		kder, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return err
		}
		keyPEM = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})
	}
	// Before minting: an SVID issued (and audited) only to be thrown away
	// with its key for a mistyped directory helps nobody.
	if *write != "" {
		if fi, err := os.Stat(*write); err != nil {
			return fmt.Errorf("-write: %w", err)
		} else if !fi.IsDir() {
			return fmt.Errorf("-write: %s is not a directory", *write)
		}
	}
	var out admin.MintX509Response
	if err := e.client().Do(ctx, http.MethodPost, "/v1/x509/mint", &req, &out); err != nil {
		return err
	}
	if *write == "" {
		fmt.Fprint(e.stdout, out.ChainPEM)
		if keyPEM != nil {
			e.stdout.Write(keyPEM)
		}
		return nil
	}
	files := []atomicfile.File{{Name: "svid.pem", Data: []byte(out.ChainPEM), Mode: 0o600}, {Name: "bundle.pem", Data: []byte(out.BundlePEM), Mode: 0o600}}
	if keyPEM != nil {
		files = append(files, atomicfile.File{Name: "key.pem", Data: keyPEM, Mode: 0o600})
	}
	if err := atomicfile.WriteFiles(*write, files...); err != nil {
		return fmt.Errorf("write the SVID (serial %s) to %s: %w", out.Serial, *write, err)
	}
	fmt.Fprintf(e.stdout, "X509-SVID serial %s, valid until %s, written to %s\n", out.Serial, out.NotAfter.Format("2006-01-02T15:04:05Z07:00"), *write)
	return nil
}

func jwtMint(ctx context.Context, e *env, args []string) error {
	fs := e.flags("jwt mint")
	var req admin.MintJWTRequest
	var aud multi
	fs.StringVar(&req.SPIFFEID, "spiffeID", "", "SPIFFE ID")
	fs.Var(&aud, "audience", "audience (repeatable, at least one)")
	fs.StringVar(&req.TTL, "ttl", "", "TTL (default: the CA's)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if req.SPIFFEID == "" || len(aud) == 0 {
		return fmt.Errorf("%w: -spiffeID and -audience are required", errUsage)
	}
	req.Audience = aud
	var out admin.MintJWTResponse
	if err := e.client().Do(ctx, http.MethodPost, "/v1/jwt/mint", &req, &out); err != nil {
		return err
	}
	_, err := fmt.Fprintln(e.stdout, out.Token)
	return err
}

func healthcheck(ctx context.Context, e *env, args []string) error {
	fs := e.flags("healthcheck")
	verbose := fs.Bool("verbose", false, "print every check")
	if err := parse(fs, args); err != nil {
		return err
	}
	var out admin.HealthResponse
	if err := e.client().Do(ctx, http.MethodGet, "/v1/health", nil, &out); err != nil {
		return err
	}
	if *verbose {
		_ = printJSON(e, out)
	}
	if out.Status != "ok" {
		return fmt.Errorf("server is %s: %v", out.Status, out.Checks)
	}
	fmt.Fprintln(e.stdout, "Server is healthy.")
	return nil
}
