// Package config is palisade-server's one configuration file: YAML, strict
// (an unknown key is an error, so a typo never silently falls back to a
// default), shared by the server and by the operator CLI verbs that work on
// the appliance's files directly (ceremony, audit verify).
package config

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/palisade-id/palisade/attestor"
	"github.com/palisade-id/palisade/ca"
	"github.com/palisade-id/palisade/crl"
)

// Server is palisade-server's configuration.
type Server struct {
	DataDir string `yaml:"data_dir"`
	// HSM names the token holding every CA key, as an RFC 7512 URI with
	// module-path and pin-source (never the PIN itself on a command line).
	HSM     HSM           `yaml:"hsm"`
	CA      ca.Config     `yaml:"ca"`
	Admin   Admin         `yaml:"admin"`
	NodeAPI Listener      `yaml:"node_api"`
	HTTP    HTTP          `yaml:"http"`
	Metrics Listener      `yaml:"metrics"`
	Audit   Audit         `yaml:"audit"`
	Log     Log           `yaml:"log"`
	Rotate  time.Duration `yaml:"rotation_interval"`
	// CRL configures revocation (CRLs, OCSP, the enforcers' feed).
	CRL crl.Config `yaml:"crl"`
	// Attestor configures TPM node attestation.
	Attestor attestor.Config `yaml:"attestor"`
}

// HSM selects the PKCS#11 token.
type HSM struct {
	Token string `yaml:"token"`
}

// Admin is the operator socket.
type Admin struct {
	Socket string `yaml:"socket"`
}

// Listener is a TCP listen address.
type Listener struct {
	Listen string `yaml:"listen"`
}

// HTTP serves CRLs and OCSP inside the enclave.
type HTTP struct {
	Listen string `yaml:"listen"`
	// PublicURL is the base written into CDP and AIA of every certificate.
	PublicURL string `yaml:"public_url"`
}

// Audit is the tamper-evident log.
type Audit struct {
	Path               string        `yaml:"path"`
	CheckpointEvery    int           `yaml:"checkpoint_every"`
	CheckpointInterval time.Duration `yaml:"checkpoint_interval"`
	// SegmentBytes seals the log with a checkpoint and starts a new file
	// once it reaches this size (0: never), so opening stays fast.
	SegmentBytes int64 `yaml:"segment_bytes"`
}

// Log configures slog; both daemons use it.
type Log struct {
	Level string `yaml:"level"` // debug, info, warn, error
}

// Validate accepts the four level names.
func (l Log) Validate() error {
	switch l.Level {
	case "debug", "info", "warn", "error":
		return nil
	}
	return fmt.Errorf("log.level %q: want debug, info, warn or error", l.Level)
}

// NewLogger is a daemon's JSON logger on stderr at l's level.
func (l Log) NewLogger() *slog.Logger {
	var lv slog.Level
	_ = lv.UnmarshalText([]byte(l.Level))
	return slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: lv}))
}

// Load reads and validates path.
func Load(path string) (*Server, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	cfg, err := Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return cfg, nil
}

// Parse decodes raw strictly, applies defaults and validates.
func Parse(raw []byte) (*Server, error) {
	var cfg Server
	if err := DecodeStrict(raw, &cfg); err != nil {
		return nil, err
	}
	cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &cfg, nil
}

// DecodeStrict decodes exactly one YAML document from raw into v; an
// unknown key, an empty file or a second document is an error. Every
// binary's configuration goes through it.
func DecodeStrict(raw []byte, v any) error {
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil {
		if errors.Is(err, io.EOF) {
			return errors.New("empty configuration")
		}
		return err
	}
	if !onlyEmptyDocuments(dec) {
		return errors.New("more than one YAML document")
	}
	return nil
}

// Defaults fills unset fields.
func (c *Server) Defaults() {
	c.DataDir = cmp.Or(c.DataDir, "/var/lib/palisade")
	c.CA.Defaults()
	c.Admin.Socket = cmp.Or(c.Admin.Socket, "/run/palisade/admin.sock")
	c.NodeAPI.Listen = cmp.Or(c.NodeAPI.Listen, "127.0.0.1:8443")
	c.HTTP.Listen = cmp.Or(c.HTTP.Listen, "127.0.0.1:8080")
	c.HTTP.PublicURL = cmp.Or(c.HTTP.PublicURL, "http://"+c.HTTP.Listen)
	c.Metrics.Listen = cmp.Or(c.Metrics.Listen, "127.0.0.1:9090")
	c.Audit.Path = cmp.Or(c.Audit.Path, filepath.Join(c.DataDir, "audit.log"))
	c.Audit.CheckpointEvery = cmp.Or(c.Audit.CheckpointEvery, 1000)
	c.Audit.CheckpointInterval = cmp.Or(c.Audit.CheckpointInterval, time.Minute)
	c.Audit.SegmentBytes = cmp.Or(c.Audit.SegmentBytes, 256<<20)
	c.Log.Level = cmp.Or(c.Log.Level, "info")
	c.Rotate = cmp.Or(c.Rotate, time.Minute)
	c.CRL.DataDir = cmp.Or(c.CRL.DataDir, c.DataDir)
	c.CRL.Defaults()
	c.Attestor = c.Attestor.WithDefaults()
}

// AttestorStorePath is the attestor's bbolt file.
func (c *Server) AttestorStorePath() string { return filepath.Join(c.DataDir, "attestor.db") }

// StorePath is the bbolt file.
func (c *Server) StorePath() string { return filepath.Join(c.DataDir, "palisade.db") }

// Validate reports the first bad setting.
func (c *Server) Validate() error {
	if c.HSM.Token == "" {
		return errors.New("hsm.token: an RFC 7512 pkcs11: URI is required")
	}
	if err := c.CA.Validate(); err != nil {
		return err
	}
	if !filepath.IsAbs(c.DataDir) {
		return fmt.Errorf("data_dir %q must be absolute", c.DataDir)
	}
	if !filepath.IsAbs(c.Admin.Socket) || len(c.Admin.Socket) > 100 {
		return fmt.Errorf("admin.socket %q must be an absolute path under 100 bytes", c.Admin.Socket)
	}
	for name, addr := range map[string]string{"node_api.listen": c.NodeAPI.Listen, "http.listen": c.HTTP.Listen} {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return fmt.Errorf("%s %q: %w", name, addr, err)
		}
	}
	host, _, err := net.SplitHostPort(c.Metrics.Listen)
	if err != nil {
		return fmt.Errorf("metrics.listen %q: %w", c.Metrics.Listen, err)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return fmt.Errorf("metrics.listen %q: metrics are served on loopback only", c.Metrics.Listen)
	}
	if c.Audit.CheckpointEvery < 1 || c.Audit.CheckpointInterval < time.Second {
		return errors.New("audit: checkpoint_every must be ≥ 1 and checkpoint_interval ≥ 1s")
	}
	if c.Audit.SegmentBytes < 1<<20 {
		return fmt.Errorf("audit.segment_bytes %d: at least 1 MiB", c.Audit.SegmentBytes)
	}
	if err := c.Log.Validate(); err != nil {
		return err
	}
	if c.Rotate < time.Second {
		return fmt.Errorf("rotation_interval %s: at least 1s", c.Rotate)
	}
	if err := c.CRL.Validate(); err != nil {
		return err
	}
	if err := c.Attestor.Validate(); err != nil {
		return err
	}
	return nil
}

// onlyEmptyDocuments reports whether what dec has left is empty documents
// (a trailing "---" that YAML writers add), which carry nothing.
func onlyEmptyDocuments(dec *yaml.Decoder) bool {
	for {
		var extra any
		err := dec.Decode(&extra)
		if errors.Is(err, io.EOF) {
			return true
		}
		if err != nil || extra != nil {
			return false
		}
	}
}
