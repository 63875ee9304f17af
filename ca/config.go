package ca

import (
	"cmp"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Config is the CA's section of palisade-server's configuration.
type Config struct {
	TrustDomain     string        `yaml:"trust_domain"`
	KeyAlgorithm    string        `yaml:"key_algorithm"`    // ecdsa-p256 (default) or ecdsa-p384
	Organization    string        `yaml:"organization"`     // subject O of CA certificates
	RootTTL         time.Duration `yaml:"root_ttl"`         // default 10 years
	IntermediateTTL time.Duration `yaml:"intermediate_ttl"` // default 7 days
	X509SVIDTTL     time.Duration `yaml:"x509_svid_ttl"`    // default 1h
	MaxX509SVIDTTL  time.Duration `yaml:"max_x509_svid_ttl"`
	JWTSVIDTTL      time.Duration `yaml:"jwt_svid_ttl"` // default 5m
	MaxJWTSVIDTTL   time.Duration `yaml:"max_jwt_svid_ttl"`
	// Backdate is subtracted from NotBefore to tolerate clock skew.
	Backdate time.Duration `yaml:"backdate"`
}

// Defaults fills unset fields.
func (c *Config) Defaults() {
	c.KeyAlgorithm = cmp.Or(c.KeyAlgorithm, "ecdsa-p256")
	c.Organization = cmp.Or(c.Organization, "Palisade")
	c.RootTTL = cmp.Or(c.RootTTL, 10*365*24*time.Hour)
	c.IntermediateTTL = cmp.Or(c.IntermediateTTL, 7*24*time.Hour)
	c.X509SVIDTTL = cmp.Or(c.X509SVIDTTL, time.Hour)
	c.MaxX509SVIDTTL = cmp.Or(c.MaxX509SVIDTTL, 24*time.Hour)
	c.JWTSVIDTTL = cmp.Or(c.JWTSVIDTTL, 5*time.Minute)
	c.MaxJWTSVIDTTL = cmp.Or(c.MaxJWTSVIDTTL, time.Hour)
	c.Backdate = cmp.Or(c.Backdate, 10*time.Second)
}

// Validate reports the first inconsistent setting.
func (c *Config) Validate() error {
	if _, err := spiffeid.TrustDomainFromString(c.TrustDomain); err != nil {
		return fmt.Errorf("ca: trust_domain %q: %w", c.TrustDomain, err)
	}
	switch c.KeyAlgorithm {
	case "ecdsa-p256", "ecdsa-p384":
	default:
		return fmt.Errorf("ca: key_algorithm %q: want ecdsa-p256 or ecdsa-p384", c.KeyAlgorithm)
	}
	pos := []struct {
		name string
		d    time.Duration
	}{
		{"root_ttl", c.RootTTL}, {"intermediate_ttl", c.IntermediateTTL},
		{"x509_svid_ttl", c.X509SVIDTTL}, {"max_x509_svid_ttl", c.MaxX509SVIDTTL},
		{"jwt_svid_ttl", c.JWTSVIDTTL}, {"max_jwt_svid_ttl", c.MaxJWTSVIDTTL},
	}
	for _, p := range pos {
		if p.d <= 0 {
			return fmt.Errorf("ca: %s must be positive, got %s", p.name, p.d)
		}
	}
	if c.IntermediateTTL >= c.RootTTL {
		return fmt.Errorf("ca: intermediate_ttl %s must be shorter than root_ttl %s", c.IntermediateTTL, c.RootTTL)
	}
	// Activation happens with 1/6 of the intermediate's life left; the
	// default SVID must fit in that window or every SVID would be clamped.
	if c.X509SVIDTTL > c.IntermediateTTL/6 {
		return fmt.Errorf("ca: x509_svid_ttl %s must be at most intermediate_ttl/6 (%s)", c.X509SVIDTTL, c.IntermediateTTL/6)
	}
	if c.X509SVIDTTL > c.MaxX509SVIDTTL {
		return fmt.Errorf("ca: x509_svid_ttl %s exceeds max_x509_svid_ttl %s", c.X509SVIDTTL, c.MaxX509SVIDTTL)
	}
	if c.JWTSVIDTTL > c.MaxJWTSVIDTTL {
		return fmt.Errorf("ca: jwt_svid_ttl %s exceeds max_jwt_svid_ttl %s", c.JWTSVIDTTL, c.MaxJWTSVIDTTL)
	}
	if c.Backdate < 0 || c.Backdate > time.Hour {
		return fmt.Errorf("ca: backdate %s out of range [0,1h]", c.Backdate)
	}
	return nil
}
