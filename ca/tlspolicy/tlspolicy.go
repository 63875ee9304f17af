package tlspolicy

import (
	"crypto/tls"
	"errors"
	"fmt"
	_ "unsafe" // for go:linkname
)

// Suite is the only TLS 1.3 cipher suite Palisade accepts.
const Suite = tls.TLS_AES_256_GCM_SHA384

// ErrCipherSuite is returned by the VerifyConnection hook when a peer
// negotiated a suite other than Suite or a version other than TLS 1.3.
var ErrCipherSuite = errors.New("tlspolicy: connection refused: TLS 1.3 with TLS_AES_256_GCM_SHA384 required")

//go:linkname defaultCipherSuitesTLS13 crypto/tls.defaultCipherSuitesTLS13
var defaultCipherSuitesTLS13 []uint16

//go:linkname defaultCipherSuitesTLS13NoAES crypto/tls.defaultCipherSuitesTLS13NoAES
var defaultCipherSuitesTLS13NoAES []uint16

func init() {
	defaultCipherSuitesTLS13 = []uint16{Suite}
	defaultCipherSuitesTLS13NoAES = []uint16{Suite}
}

// Check refuses a connection state that does not meet the policy.
func Check(cs tls.ConnectionState) error {
	if cs.Version != tls.VersionTLS13 || cs.CipherSuite != Suite {
		return fmt.Errorf("%w (negotiated %s, %s)", ErrCipherSuite,
			tls.VersionName(cs.Version), tls.CipherSuiteName(cs.CipherSuite))
	}
	return nil
}

// Apply pins cfg to TLS 1.3 and chains Check in front of any
// VerifyConnection hook cfg already has. It returns cfg for chaining.
func Apply(cfg *tls.Config) *tls.Config {
	cfg.MinVersion = tls.VersionTLS13
	cfg.MaxVersion = tls.VersionTLS13
	next := cfg.VerifyConnection
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		if err := Check(cs); err != nil {
			return err
		}
		if next != nil {
			return next(cs)
		}
		return nil
	}
	return cfg
}
