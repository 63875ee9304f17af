package agent

import "testing"

func TestConfigValidate(t *testing.T) {
	good := Config{Server: "127.0.0.1:8444", TrustDomain: "example.org", TrustBundle: "/etc/palisade/bundle.pem"}.WithDefaults()
	tests := []struct {
		name string
		mod  func(*Config)
		ok   bool
	}{
		{"defaults", func(*Config) {}, true},
		{"swtpm unix", func(c *Config) { c.TPM = "swtpm:unix:/run/swtpm.sock" }, true},
		{"swtpm tcp", func(c *Config) { c.TPM = "swtpm:tcp:127.0.0.1:2321" }, true},
		{"relative device", func(c *Config) { c.TPM = "tpm0" }, false},
		{"bad swtpm network", func(c *Config) { c.TPM = "swtpm:udp:x" }, false},
		{"no port", func(c *Config) { c.Server = "host" }, false},
		{"no trust domain or server id", func(c *Config) { c.TrustDomain = "" }, false},
		{"server id instead of trust domain", func(c *Config) { c.TrustDomain = ""; c.ServerID = "spiffe://example.org/palisade/server" }, true},
		{"bad server id", func(c *Config) { c.ServerID = "https://example.org/x" }, false},
		{"no bundle", func(c *Config) { c.TrustBundle = "" }, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := good
			tc.mod(&c)
			if err := c.Validate(); (err == nil) != tc.ok {
				t.Fatalf("Validate() = %v, want ok=%v", err, tc.ok)
			}
		})
	}
}
