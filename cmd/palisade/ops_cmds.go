package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"

	"github.com/palisade-id/palisade/attestor"
	"github.com/palisade-id/palisade/ca/admin"
	"github.com/palisade-id/palisade/enforcer"
)

func init() {
	register("revoke", "revoke a certificate (-serial HEX -reason keyCompromise|...)", revoke)
	register("node list", "list attested nodes", nodeList)
	register("node show", "show one node (-node SPIFFE-ID or EK hash)", nodeShow)
	register("node ban", "ban a node and revoke every SVID it holds (-node ... -reason TEXT)", nodeBan)
	register("node unban", "let a banned node attest again; what was revoked stays revoked (-node ... -reason TEXT)", nodeUnban)
	register("manifest list", "list the EK manifest", manifestList)
	register("manifest add", "admit an EK (-ek FILE|HEX: EK cert, EK CA cert, EK public key PEM or EKpub SHA-256) for -class", manifestAdd)
	register("manifest remove", "remove a manifest entry (-id ID)", manifestRemove)
	register("pcrpolicy show", "print the golden PCR policy", pcrpolicyShow)
	register("pcrpolicy set", "install a new golden PCR policy version (-file FILE)", pcrpolicySet)
	register("policy check", "validate an enforcer policy file (-file FILE)", policyCheck)
	register("policy drift", "list observed flows the policy does not allow and rules never used (-file POLICY -flows FLOWLOG)", policyDrift)
	register("flows", "show an enforcer flow log (-flows FLOWLOG)", flows)
}

func revoke(ctx context.Context, e *env, args []string) error {
	fs := e.flags("revoke")
	var req admin.RevokeRequest
	fs.StringVar(&req.Serial, "serial", "", "certificate serial (hex)")
	fs.StringVar(&req.Reason, "reason", "unspecified", "RFC 5280 reason name or number")
	if err := parse(fs, args); err != nil {
		return err
	}
	if req.Serial == "" {
		return fmt.Errorf("%w: -serial is required", errUsage)
	}
	var out admin.RevokeResponse
	if err := e.client().Do(ctx, http.MethodPost, "/v1/revoke", &req, &out); err != nil {
		return err
	}
	return printJSON(e, out)
}

func nodeList(ctx context.Context, e *env, args []string) error {
	if err := parse(e.flags("node list"), args); err != nil {
		return err
	}
	var out []attestor.NodeRecord
	if err := e.client().Do(ctx, http.MethodGet, "/v1/nodes", nil, &out); err != nil {
		return err
	}
	return printJSON(e, out)
}

func nodeRef(e *env, name string, args []string, extra func(*flagSet)) (string, error) {
	fs := e.flags(name)
	ref := fs.String("node", "", "node SPIFFE ID or EK hash")
	if extra != nil {
		extra(&flagSet{fs})
	}
	if err := parse(fs, args); err != nil {
		return "", err
	}
	if *ref == "" {
		return "", fmt.Errorf("%w: -node is required", errUsage)
	}
	return *ref, nil
}

func nodeShow(ctx context.Context, e *env, args []string) error {
	ref, err := nodeRef(e, "node show", args, nil)
	if err != nil {
		return err
	}
	var out attestor.NodeRecord
	if err := e.client().Do(ctx, http.MethodGet, "/v1/nodes/"+url.PathEscape(ref), nil, &out); err != nil {
		return err
	}
	return printJSON(e, out)
}

func nodeBan(ctx context.Context, e *env, args []string) error {
	var req admin.BanRequest
	ref, err := nodeRef(e, "node ban", args, func(fs *flagSet) {
		fs.StringVar(&req.Reason, "reason", "", "why (recorded in the audit log)")
		fs.StringVar(&req.CRLReason, "crlReason", "keyCompromise", "RFC 5280 reason for the revocations")
	})
	if err != nil {
		return err
	}
	if req.Reason == "" {
		return fmt.Errorf("%w: -reason is required", errUsage)
	}
	var out admin.BanResponse
	if err := e.client().Do(ctx, http.MethodPost, "/v1/nodes/"+url.PathEscape(ref)+"/ban", &req, &out); err != nil {
		return err
	}
	return printJSON(e, out)
}

func nodeUnban(ctx context.Context, e *env, args []string) error {
	var req admin.UnbanRequest
	ref, err := nodeRef(e, "node unban", args, func(fs *flagSet) {
		fs.StringVar(&req.Reason, "reason", "", "why (recorded in the audit log)")
	})
	if err != nil {
		return err
	}
	if req.Reason == "" {
		return fmt.Errorf("%w: -reason is required", errUsage)
	}
	var out attestor.NodeRecord
	if err := e.client().Do(ctx, http.MethodPost, "/v1/nodes/"+url.PathEscape(ref)+"/unban", &req, &out); err != nil {
		return err
	}
	return printJSON(e, out)
}

func manifestList(ctx context.Context, e *env, args []string) error {
	if err := parse(e.flags("manifest list"), args); err != nil {
		return err
	}
	var out []attestor.ManifestEntry
	if err := e.client().Do(ctx, http.MethodGet, "/v1/manifest", nil, &out); err != nil {
		return err
	}
	return printJSON(e, out)
}

func manifestAdd(ctx context.Context, e *env, args []string) error {
	fs := e.flags("manifest add")
	ek := fs.String("ek", "", "file (PEM or DER certificate or public key) or 64-hex EKpub SHA-256")
	var req admin.ManifestRequest
	fs.StringVar(&req.Class, "class", "", "node class (selects the golden PCR values)")
	fs.StringVar(&req.Comment, "comment", "", "comment")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *ek == "" || req.Class == "" {
		return fmt.Errorf("%w: -ek and -class are required", errUsage)
	}
	req.Input = *ek
	if raw, err := os.ReadFile(*ek); err == nil {
		req.Input = encodeInput(raw)
	} else if len(*ek) != 64 {
		return fmt.Errorf("-ek %q: neither a readable file nor a 64-hex EK hash: %v", *ek, err)
	}
	var out attestor.ManifestEntry
	if err := e.client().Do(ctx, http.MethodPost, "/v1/manifest", &req, &out); err != nil {
		return err
	}
	return printJSON(e, out)
}

func manifestRemove(ctx context.Context, e *env, args []string) error {
	fs := e.flags("manifest remove")
	id := fs.String("id", "", "manifest entry ID (ek:... or ca:...)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *id == "" {
		return fmt.Errorf("%w: -id is required", errUsage)
	}
	return e.client().Do(ctx, http.MethodDelete, "/v1/manifest/"+url.PathEscape(*id), nil, nil)
}

func pcrpolicyShow(ctx context.Context, e *env, args []string) error {
	if err := parse(e.flags("pcrpolicy show"), args); err != nil {
		return err
	}
	var out admin.PolicyResponse
	if err := e.client().Do(ctx, http.MethodGet, "/v1/pcrpolicy", nil, &out); err != nil {
		return err
	}
	if out.YAML == "" {
		return fmt.Errorf("no PCR policy installed")
	}
	_, err := fmt.Fprint(e.stdout, out.YAML)
	return err
}

func pcrpolicySet(ctx context.Context, e *env, args []string) error {
	fs := e.flags("pcrpolicy set")
	file := fs.String("file", "", "policy YAML")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *file == "" {
		return fmt.Errorf("%w: -file is required", errUsage)
	}
	raw, err := os.ReadFile(*file)
	if err != nil {
		return err
	}
	var out admin.PolicyResponse
	if err := e.client().Do(ctx, http.MethodPut, "/v1/pcrpolicy", &admin.PolicyRequest{YAML: string(raw)}, &out); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "PCR policy version %d installed\n", out.Version)
	return nil
}

func policyCheck(_ context.Context, e *env, args []string) error {
	fs := e.flags("policy check")
	file := fs.String("file", "", "enforcer policy file")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *file == "" {
		return fmt.Errorf("%w: -file is required", errUsage)
	}
	if err := enforcer.CheckPolicyFile(*file); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "%s: OK\n", *file)
	return nil
}

func policyDrift(_ context.Context, e *env, args []string) error {
	fs := e.flags("policy drift")
	file := fs.String("file", "", "enforcer policy file")
	flowLog := fs.String("flows", "", "flow log written by palisade-agent")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *file == "" || *flowLog == "" {
		return fmt.Errorf("%w: -file and -flows are required", errUsage)
	}
	rep, err := enforcer.DriftFromFiles(*file, *flowLog)
	if err != nil {
		return err
	}
	return rep.Format(e.stdout)
}

func flows(_ context.Context, e *env, args []string) error {
	fs := e.flags("flows")
	flowLog := fs.String("flows", "/var/lib/palisade-agent/flows.log", "flow log written by palisade-agent")
	if err := parse(fs, args); err != nil {
		return err
	}
	f, err := os.Open(*flowLog)
	if err != nil {
		return err
	}
	defer f.Close()
	recs, err := enforcer.ReadFlowLog(f)
	// A torn line (a crash mid-write) is skipped and named, not fatal.
	var bad *enforcer.MalformedLinesError
	if errors.As(err, &bad) {
		fmt.Fprintf(e.stderr, "palisade: flow log: %s\n", bad.Summary())
	} else if err != nil {
		return err
	}
	return enforcer.FormatFlows(e.stdout, recs)
}

// encodeInput passes PEM through and base64-encodes DER for JSON.
func encodeInput(raw []byte) string {
	if bytes.Contains(raw, []byte("-----BEGIN")) {
		return string(raw)
	}
	return base64.StdEncoding.EncodeToString(raw)
}
