package config

import (
	"strings"
	"testing"
)

const minimal = `
hsm:
  token: "pkcs11:token=palisade?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/palisade/pin"
ca:
  trust_domain: example.org
`

func TestParse(t *testing.T) {
	tests := []struct {
		name    string
		yaml    string
		wantErr string
	}{
		{"minimal", minimal, ""},
		{"unknown-top-level-key", minimal + "bogus: 1\n", "field bogus not found"},
		{"unknown-nested-key", minimal + "  trust_domian: x\n", "field trust_domian not found"},
		{"missing-hsm", "ca:\n  trust_domain: example.org\n", "hsm.token"},
		{"bad-trust-domain", strings.Replace(minimal, "example.org", "Bad Domain", 1), "trust_domain"},
		{"metrics-not-loopback", minimal + "metrics:\n  listen: 0.0.0.0:9090\n", "loopback"},
		{"relative-data-dir", minimal + "data_dir: var/lib\n", "absolute"},
		{"bad-duration", minimal + "  x509_svid_ttl: forever\n", "forever"},
		{"segment-too-small", minimal + "audit:\n  segment_bytes: 10\n", "segment_bytes"},
		{"svid-ttl-too-long-for-rotation", minimal + "  intermediate_ttl: 3h\n", "intermediate_ttl/6"},
		{"p384", minimal + "  key_algorithm: ecdsa-p384\n", ""},
		{"bad-alg", minimal + "  key_algorithm: rsa\n", "key_algorithm"},
		{"empty", "", "empty"},
		{"two-documents", minimal + "---\nfoo: 1\n", "more than one"},
		{"trailing-separator", minimal + "---\n", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := Parse([]byte(tt.yaml))
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Parse: %v", err)
				}
				if cfg.CA.X509SVIDTTL.String() != "1h0m0s" || cfg.CA.JWTSVIDTTL.String() != "5m0s" {
					t.Fatalf("defaults not applied: %+v", cfg.CA)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Parse error = %v, want containing %q", err, tt.wantErr)
			}
		})
	}
}
