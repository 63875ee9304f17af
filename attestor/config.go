package attestor

import (
	"cmp"
	"fmt"
	"time"
)

// Config is the attestor section of the server configuration.
type Config struct {
	// NonceTTL is how long a quote nonce stays valid (default 30s).
	NonceTTL time.Duration `yaml:"nonce_ttl"`
	// SessionTimeout bounds one whole Attest stream (default 60s).
	SessionTimeout time.Duration `yaml:"session_timeout"`
	// HelloTimeout bounds the wait for a stream's first message (default
	// 5s), so that idle streams cannot hold session slots.
	HelloTimeout time.Duration `yaml:"hello_timeout"`
	// StepTimeout bounds each later wait for the node's next message (its
	// credential activation, its quote; default 10s): a TPM answers in well
	// under a second, and a silent stream must not hold a session slot.
	StepTimeout time.Duration `yaml:"step_timeout"`
	// MaxMessageBytes caps every protocol message (default 256 KiB: a
	// quote may carry a firmware event log).
	MaxMessageBytes int `yaml:"max_message_bytes"`
	// MaxPendingNonces caps outstanding nonces (default 65536).
	MaxPendingNonces int `yaml:"max_pending_nonces"`
	// MaxSessions caps concurrent Attest streams (default 512); more are
	// refused with ResourceExhausted.
	MaxSessions int `yaml:"max_sessions"`
	// UnknownEKAuditPerMinute is the audit budget (token bucket, burst of
	// one minute's worth) for refusals of EKs not in the manifest, which
	// anyone on the network can mint (default 60). A budget of the same
	// size, apart, covers refusals of manifest EKs before the peer proved it
	// holds the EK's TPM (EKs are public). Within either, one EK gets at
	// most min(5, this) a minute. Over it refusals are only counted and
	// summarised once a minute.
	UnknownEKAuditPerMinute int `yaml:"unknown_ek_audit_per_minute"`
}

// Defaults.
const (
	DefaultNonceTTL         = 30 * time.Second
	DefaultSessionTimeout   = 60 * time.Second
	DefaultHelloTimeout     = 5 * time.Second
	DefaultStepTimeout      = 10 * time.Second
	DefaultMaxMessageBytes  = 256 << 10
	DefaultMaxPendingNonces = 1 << 16
	DefaultMaxSessions      = 512

	DefaultUnknownEKAuditPerMinute = 60
)

// WithDefaults returns c with zero fields set to their defaults.
func (c Config) WithDefaults() Config {
	c.NonceTTL = cmp.Or(c.NonceTTL, DefaultNonceTTL)
	c.SessionTimeout = cmp.Or(c.SessionTimeout, DefaultSessionTimeout)
	c.HelloTimeout = cmp.Or(c.HelloTimeout, min(DefaultHelloTimeout, c.SessionTimeout))
	c.StepTimeout = cmp.Or(c.StepTimeout, min(DefaultStepTimeout, c.SessionTimeout))
	c.MaxMessageBytes = cmp.Or(c.MaxMessageBytes, DefaultMaxMessageBytes)
	c.MaxPendingNonces = cmp.Or(c.MaxPendingNonces, DefaultMaxPendingNonces)
	c.MaxSessions = cmp.Or(c.MaxSessions, DefaultMaxSessions)
	c.UnknownEKAuditPerMinute = cmp.Or(c.UnknownEKAuditPerMinute, DefaultUnknownEKAuditPerMinute)
	return c
}

// Validate checks ranges (after WithDefaults).
func (c Config) Validate() error {
	switch {
	case c.NonceTTL < time.Second || c.NonceTTL > 5*time.Minute:
		return fmt.Errorf("attestor: nonce_ttl %v outside [1s, 5m]", c.NonceTTL)
	case c.SessionTimeout < time.Second || c.SessionTimeout > 10*time.Minute:
		return fmt.Errorf("attestor: session_timeout %v outside [1s, 10m]", c.SessionTimeout)
	case c.HelloTimeout < 100*time.Millisecond || c.HelloTimeout > c.SessionTimeout:
		return fmt.Errorf("attestor: hello_timeout %v outside [100ms, session_timeout %v]", c.HelloTimeout, c.SessionTimeout)
	case c.StepTimeout < 100*time.Millisecond || c.StepTimeout > c.SessionTimeout:
		return fmt.Errorf("attestor: step_timeout %v outside [100ms, session_timeout %v]", c.StepTimeout, c.SessionTimeout)
	case c.MaxMessageBytes < 4<<10 || c.MaxMessageBytes > 1<<20:
		return fmt.Errorf("attestor: max_message_bytes %d outside [4 KiB, 1 MiB]", c.MaxMessageBytes)
	case c.MaxPendingNonces < 1 || c.MaxPendingNonces > 1<<22:
		return fmt.Errorf("attestor: max_pending_nonces %d outside [1, 4194304]", c.MaxPendingNonces)
	case c.MaxSessions < 1 || c.MaxSessions > 1<<16:
		return fmt.Errorf("attestor: max_sessions %d outside [1, 65536]", c.MaxSessions)
	case c.UnknownEKAuditPerMinute < 1 || c.UnknownEKAuditPerMinute > 6000:
		return fmt.Errorf("attestor: unknown_ek_audit_per_minute %d outside [1, 6000]", c.UnknownEKAuditPerMinute)
	}
	return nil
}
