package main

import (
	"cmp"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"

	"github.com/palisade-id/palisade/cmd/internal/config"

	"github.com/palisade-id/palisade/attestor/agent"
	"github.com/palisade-id/palisade/enforcer"
)

// Config is palisade-agent's one configuration file.
type Config struct {
	// Attestation reaches palisade-server's node API and the TPM.
	Attestation agent.Config `yaml:"attestation"`
	// Enforcer is optional: without it the agent only keeps the node
	// SVID current.
	Enforcer *enforcer.Config `yaml:"enforcer"`
	// ApplianceURL is palisade-server's http.public_url (CRLs, the
	// revocation feed). Required with an enforcer.
	ApplianceURL string `yaml:"appliance_url"`
	// DataDir holds the current node certificate chain (never the key)
	// and, by default, the enforcer's state.
	DataDir string     `yaml:"data_dir"`
	Log     config.Log `yaml:"log"`
}

// DefaultDataDir is data_dir's default.
const DefaultDataDir = "/var/lib/palisade-agent"

// LoadConfig reads, defaults and validates path.
func LoadConfig(path string) (*Config, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	cfg, err := ParseConfig(raw)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return cfg, nil
}

// ParseConfig decodes raw strictly (unknown keys are errors), applies
// defaults and validates.
func ParseConfig(raw []byte) (*Config, error) {
	var cfg Config
	if err := config.DecodeStrict(raw, &cfg); err != nil {
		return nil, err
	}
	cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &cfg, nil
}

// Defaults fills unset fields. The enforcer inherits the trust domain and
// bundle from attestation unless it names its own.
func (c *Config) Defaults() {
	c.DataDir = cmp.Or(c.DataDir, DefaultDataDir)
	c.Log.Level = cmp.Or(c.Log.Level, "info")
	c.Attestation = c.Attestation.WithDefaults()
	if e := c.Enforcer; e != nil {
		if e.StateDir == "" {
			e.StateDir = filepath.Join(c.DataDir, "enforcer")
		}
		if e.TrustDomain == "" {
			if id, err := c.Attestation.ServerSPIFFEID(); err == nil {
				e.TrustDomain = id.TrustDomain().Name()
			}
		}
		if e.TrustBundle == "" {
			e.TrustBundle = c.Attestation.TrustBundle
		}
		e.SetDefaults()
	}
}

// Validate checks the configuration (after Defaults).
func (c *Config) Validate() error {
	if err := c.Attestation.Validate(); err != nil {
		return fmt.Errorf("attestation: %w", err)
	}
	if !filepath.IsAbs(c.DataDir) {
		return fmt.Errorf("data_dir %q: want an absolute path", c.DataDir)
	}
	if err := c.Log.Validate(); err != nil {
		return err
	}
	if c.ApplianceURL != "" {
		u, err := url.Parse(c.ApplianceURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("appliance_url %q: want http(s)://host[:port]", c.ApplianceURL)
		}
	}
	if c.Enforcer != nil {
		if c.ApplianceURL == "" {
			return errors.New("appliance_url is required with an enforcer (revocation)")
		}
		if err := c.Enforcer.Validate(); err != nil {
			return fmt.Errorf("enforcer: %w", err)
		}
		id, _ := c.Attestation.ServerSPIFFEID()
		if c.Enforcer.TrustDomain != id.TrustDomain().Name() {
			return fmt.Errorf("enforcer: trust_domain %q differs from the appliance's %q", c.Enforcer.TrustDomain, id.TrustDomain().Name())
		}
	}
	return nil
}
