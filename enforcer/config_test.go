package enforcer

import (
	"bytes"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

func TestConfigValidate(t *testing.T) {
	base := func() Config {
		c := Config{Interfaces: []string{"eth0"}, TrustDomain: "example.org", PolicyFile: "/etc/palisade/policy.yaml"}
		c.SetDefaults()
		return c
	}
	tests := []struct {
		name   string
		mutate func(*Config)
		want   string
	}{
		{"defaults ok", func(*Config) {}, ""},
		{"no interfaces", func(c *Config) { c.Interfaces = nil }, "interfaces"},
		{"bad attach", func(c *Config) { c.Attach = "xdp" }, "attach"},
		{"bad mode", func(c *Config) { c.Mode = "monitor" }, "mode"},
		{"relative pin dir", func(c *Config) { c.PinDir = "bpf" }, "absolute"},
		{"short max admission", func(c *Config) { c.MaxAdmission = time.Second }, "max_admission"},
		{"slow recheck", func(c *Config) { c.RecheckInterval = 5 * time.Second }, "recheck_interval"},
		{"bad trust domain", func(c *Config) { c.TrustDomain = "spiffe://x/y" }, "trust_domain"},
		{"no policy", func(c *Config) { c.PolicyFile = "" }, "policy_file"},
		{"bad peer", func(c *Config) { c.Peers = []string{"host.example"} }, "peer"},
		{"negative grace", func(c *Config) { c.RevocationGrace = -time.Second }, "revocation_grace"},
		{"bad infrastructure", func(c *Config) { c.Infrastructure = []string{"10.0.0.1:53/sctp"} }, "infrastructure"},
		{"infrastructure ok", func(c *Config) { c.Infrastructure = []string{"10.0.0.1:8443", "10.0.0.1:53/udp", "[fd00::1]:443/tcp"} }, ""},
		{"bad admission address", func(c *Config) { c.AdmissionAddress = "10.0.0.1:80" }, "admission_address"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := base()
			tt.mutate(&c)
			err := c.Validate()
			if tt.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Validate = %v, want ErrConfig mentioning %q", err, tt.want)
			}
		})
	}
}

func TestConfigYAMLAndPeers(t *testing.T) {
	in := `interfaces: [eth0]
trust_domain: example.org
policy_file: /etc/palisade/policy.yaml
max_admission: 30m
peers: ["10.0.0.2", "[fd00::2]:9443"]
`
	dec := yaml.NewDecoder(bytes.NewReader([]byte(in)))
	dec.KnownFields(true)
	var c Config
	if err := dec.Decode(&c); err != nil {
		t.Fatal(err)
	}
	c.SetDefaults()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.MaxAdmission != 30*time.Minute {
		t.Fatalf("max_admission = %v", c.MaxAdmission)
	}
	got, err := c.PeerAddrs()
	if err != nil {
		t.Fatal(err)
	}
	want := []netip.AddrPort{netip.MustParseAddrPort("10.0.0.2:7443"), netip.MustParseAddrPort("[fd00::2]:9443")}
	if len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("PeerAddrs = %v, want %v", got, want)
	}
	dec = yaml.NewDecoder(strings.NewReader("interfaces: [eth0]\nunknown_key: 1\n"))
	dec.KnownFields(true)
	if err := dec.Decode(&Config{}); err == nil {
		t.Fatal("unknown key accepted")
	}
}
