package crl

import (
	"cmp"
	"errors"
	"fmt"
	"time"
)

// Config is the revocation section of the server config.
type Config struct {
	// DataDir holds crl-state.json (CRL numbers). Required.
	DataDir string `yaml:"data_dir"`
	// CRLValidity is nextUpdate - thisUpdate for full and delta CRLs; they
	// are rebuilt when half of it has passed. Default 1h.
	CRLValidity time.Duration `yaml:"crl_validity"`
	// DeltaBaseInterval is how long a full CRL stays the base the deltas
	// refer to; a newer full CRL is always a valid base too. Default 1h.
	DeltaBaseInterval time.Duration `yaml:"delta_base_interval"`
	// FullCRLMinInterval coalesces full CRL rebuilds after revocations
	// (deltas are rebuilt at once). Default 10s.
	FullCRLMinInterval time.Duration `yaml:"full_crl_min_interval"`
	// OCSPValidity is nextUpdate - thisUpdate of OCSP responses; they are
	// re-signed when half of it has passed. Default 1h.
	OCSPValidity time.Duration `yaml:"ocsp_validity"`
	// ResponderCertValidity bounds the delegated OCSP signing certificate
	// (also by its issuer's notAfter); renewed at two thirds. Default 72h.
	ResponderCertValidity time.Duration `yaml:"responder_cert_validity"`
	// MaxRequestBytes caps OCSP request bodies. Default 4096.
	MaxRequestBytes int `yaml:"max_request_bytes"`
	// SignConcurrency bounds concurrent on-demand signatures (unknown
	// serials, nonces). Default 4.
	SignConcurrency int `yaml:"sign_concurrency"`
	// LongPollTimeout is how long /revocations holds a request. Default 25s.
	LongPollTimeout time.Duration `yaml:"long_poll_timeout"`
}

// Defaults fills zero fields.
func (c *Config) Defaults() {
	c.CRLValidity = cmp.Or(c.CRLValidity, time.Hour)
	c.DeltaBaseInterval = cmp.Or(c.DeltaBaseInterval, time.Hour)
	c.FullCRLMinInterval = cmp.Or(c.FullCRLMinInterval, 10*time.Second)
	c.OCSPValidity = cmp.Or(c.OCSPValidity, time.Hour)
	c.ResponderCertValidity = cmp.Or(c.ResponderCertValidity, 72*time.Hour)
	c.LongPollTimeout = cmp.Or(c.LongPollTimeout, 25*time.Second)
	c.MaxRequestBytes = cmp.Or(c.MaxRequestBytes, 4096)
	c.SignConcurrency = cmp.Or(c.SignConcurrency, 4)
}

// Validate reports the first invalid field.
func (c *Config) Validate() error {
	if c.DataDir == "" {
		return errors.New("crl: data_dir is required")
	}
	for name, d := range map[string]time.Duration{
		"crl_validity": c.CRLValidity, "delta_base_interval": c.DeltaBaseInterval,
		"full_crl_min_interval": c.FullCRLMinInterval, "ocsp_validity": c.OCSPValidity,
		"responder_cert_validity": c.ResponderCertValidity, "long_poll_timeout": c.LongPollTimeout,
	} {
		if d < 0 {
			return fmt.Errorf("crl: %s must not be negative", name)
		}
	}
	if c.CRLValidity < 2*time.Second || c.OCSPValidity < 2*time.Second {
		return errors.New("crl: crl_validity and ocsp_validity must be at least 2s")
	}
	if c.MaxRequestBytes < 64 || c.MaxRequestBytes > 1<<20 {
		return errors.New("crl: max_request_bytes must be within [64, 1MiB]")
	}
	if c.SignConcurrency < 1 || c.SignConcurrency > 256 {
		return errors.New("crl: sign_concurrency must be within [1, 256]")
	}
	return nil
}
