package main

import (
	"strings"
	"testing"
)

const baseConfig = `attestation:
  server: 127.0.0.1:8443
  trust_domain: example.org
  trust_bundle: /etc/palisade/bundle.pem
  tpm: swtpm:unix:/run/swtpm.sock
`

const enforcerSection = `enforcer:
  interfaces: [eth0]
  policy_file: /etc/palisade/policy.yaml
`

func TestParseConfig(t *testing.T) {
	tests := []struct {
		name    string
		yaml    string
		wantErr string // substring; empty: valid
		check   func(t *testing.T, c *Config)
	}{
		{"attestation only", baseConfig, "", func(t *testing.T, c *Config) {
			if c.Enforcer != nil || c.DataDir != DefaultDataDir || c.Log.Level != "info" {
				t.Fatalf("defaults: %+v", c)
			}
		}},
		{"enforcer inherits trust domain, bundle and state dir", baseConfig + enforcerSection +
			"appliance_url: http://127.0.0.1:8080\ndata_dir: /srv/agent\n", "", func(t *testing.T, c *Config) {
			e := c.Enforcer
			if e.TrustDomain != "example.org" || e.TrustBundle != "/etc/palisade/bundle.pem" || e.StateDir != "/srv/agent/enforcer" || e.Mode != "enforce" {
				t.Fatalf("enforcer defaults: %+v", e)
			}
		}},
		{"enforcer keeps its own state dir", baseConfig + enforcerSection + "  state_dir: /var/lib/x\nappliance_url: http://a:1\n", "", func(t *testing.T, c *Config) {
			if c.Enforcer.StateDir != "/var/lib/x" {
				t.Fatalf("state_dir %q", c.Enforcer.StateDir)
			}
		}},
		{"unknown top-level key", baseConfig + "apliance_url: http://a\n", "field apliance_url not found", nil},
		{"unknown attestation key", baseConfig + "  tmp: /dev/tpm0\n", "field tmp not found", nil},
		{"unknown enforcer key", baseConfig + enforcerSection + "  interface: [eth1]\nappliance_url: http://a:1\n", "field interface not found", nil},
		{"enforcer without appliance_url", baseConfig + enforcerSection, "appliance_url is required", nil},
		{"enforcer in another trust domain", baseConfig + enforcerSection + "  trust_domain: other.org\nappliance_url: http://a:1\n", "differs", nil},
		{"enforcer invalid", baseConfig + "enforcer:\n  policy_file: /p\nappliance_url: http://a:1\n", "enforcer: ", nil},
		{"bad appliance_url", baseConfig + "appliance_url: 10.0.0.1:8080\n", "appliance_url", nil},
		{"relative data_dir", baseConfig + "data_dir: var/agent\n", "data_dir", nil},
		{"bad log level", baseConfig + "log:\n  level: loud\n", "log.level", nil},
		{"no attestation server", "attestation:\n  trust_domain: example.org\n  trust_bundle: /b\n", "attestation: ", nil},
		{"empty", "", "empty configuration", nil},
		{"two documents", baseConfig + "---\n" + baseConfig, "more than one YAML document", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ParseConfig([]byte(tc.yaml))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, c)
		})
	}
}
