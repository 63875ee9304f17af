package main

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"
)

func TestRunUsageAndErrors(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "none.sock")
	tests := []struct {
		name       string
		args       []string
		wantCode   int
		wantStderr string
		wantStdout string
	}{
		{"no-command", nil, 2, "usage: palisade", ""},
		{"help", []string{"-h"}, 0, "", "entry create"},
		{"unknown-command", []string{"frobnicate"}, 2, `unknown command "frobnicate"`, ""},
		{"unknown-global-flag", []string{"-bogus", "healthcheck"}, 2, "unknown global flag", ""},
		{"unknown-verb-flag", []string{"-socketPath", sock, "entry", "create", "-nope"}, 2, "flag provided but not defined", ""},
		{"missing-required", []string{"-socketPath", sock, "entry", "create", "-spiffeID", "spiffe://x/y"}, 2, "-parentID are required", ""},
		{"stray-argument", []string{"-socketPath", sock, "bundle", "show", "extra"}, 2, `unexpected argument "extra"`, ""},
		{"server-down", []string{"-socketPath", sock, "healthcheck"}, 1, "cannot reach palisade-server", ""},
		{"bad-format", []string{"-socketPath", sock, "x509", "mint"}, 2, "-spiffeID or -csr is required", ""},
		// Checked before the server is asked: no SVID minted to be lost.
		{"mint-write-missing-dir", []string{"-socketPath", sock, "x509", "mint", "-spiffeID", "spiffe://example.org/w", "-write", filepath.Join(sock, "dir")}, 1, "-write: stat", ""},
		{"reanchor-without-reason", []string{"audit", "reanchor", "-config", filepath.Join(sock, "none.yaml")}, 2, "-reason is required", ""},
		{"reanchor-oversized-reason", []string{"audit", "reanchor", "-reason", strings.Repeat("x", 1025)}, 2, "limit 1024", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			code := run(context.Background(), tt.args, &out, &errb)
			if code != tt.wantCode {
				t.Fatalf("exit %d, want %d (stderr %q)", code, tt.wantCode, errb.String())
			}
			if !strings.Contains(errb.String(), tt.wantStderr) {
				t.Fatalf("stderr %q lacks %q", errb.String(), tt.wantStderr)
			}
			if !strings.Contains(out.String(), tt.wantStdout) {
				t.Fatalf("stdout %q lacks %q", out.String(), tt.wantStdout)
			}
		})
	}
}
