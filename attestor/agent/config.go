package agent

import (
	"cmp"
	"context"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"strings"

	"github.com/google/go-tpm/tpm2"
	"github.com/palisade-id/palisade/attestor/attestorpb"
	"github.com/palisade-id/palisade/attestor/device"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Config is the attestation section of the node agent's configuration.
type Config struct {
	// Server is host:port of the attestation endpoint.
	Server string `yaml:"server"`
	// ServerID is the SPIFFE ID the endpoint must prove (default
	// spiffe://<trust_domain>/palisade/server).
	ServerID string `yaml:"server_id"`
	// TrustDomain is the appliance's trust domain.
	TrustDomain string `yaml:"trust_domain"`
	// TrustBundle is the PEM file of roots provisioned at install, used to
	// verify the endpoint.
	TrustBundle string `yaml:"trust_bundle"`
	// TPM is "/dev/tpmrm0" (default), another character device path, or
	// "swtpm:unix:<socket>" / "swtpm:tcp:<host:port>" for a software TPM.
	TPM string `yaml:"tpm"`
	// EKHandle and EKCertIndex override the TCG defaults 0x81010001 and
	// 0x01c00002.
	EKHandle    uint32 `yaml:"ek_handle"`
	EKCertIndex uint32 `yaml:"ek_cert_index"`
	// EKIntermediates are PEM files of CA certificates between the EK
	// certificate and the manufacturer root, sent along with the EK.
	EKIntermediates []string `yaml:"ek_intermediates"`
	// EventLog is the firmware event log sent with quotes (default: the
	// securityfs log for a TPM device, none for swtpm; "none" disables).
	EventLog string `yaml:"event_log"`
}

// DefaultTPM is the kernel resource-managed TPM device.
const DefaultTPM = "/dev/tpmrm0"

// WithDefaults fills zero fields.
func (c Config) WithDefaults() Config {
	c.TPM = cmp.Or(c.TPM, DefaultTPM)
	if c.EventLog == "" && !strings.HasPrefix(c.TPM, "swtpm:") {
		c.EventLog = device.DefaultEventLog
	}
	return c
}

// Validate checks the configuration (after WithDefaults).
func (c Config) Validate() error {
	if _, _, err := net.SplitHostPort(c.Server); err != nil {
		return fmt.Errorf("agent: server %q: %w", c.Server, err)
	}
	if _, err := c.ServerSPIFFEID(); err != nil {
		return err
	}
	if c.TrustBundle == "" {
		return fmt.Errorf("agent: trust_bundle is required")
	}
	if _, _, err := parseTPMSpec(c.TPM); err != nil {
		return err
	}
	return nil
}

func parseTPMSpec(spec string) (network, addr string, err error) {
	if !strings.HasPrefix(spec, "swtpm:") {
		if !strings.HasPrefix(spec, "/") {
			return "", "", fmt.Errorf("agent: tpm %q: want an absolute device path or swtpm:<unix|tcp>:<addr>", spec)
		}
		return "", spec, nil
	}
	network, addr, ok := strings.Cut(strings.TrimPrefix(spec, "swtpm:"), ":")
	if !ok || (network != "unix" && network != "tcp") || addr == "" {
		return "", "", fmt.Errorf("agent: tpm %q: want swtpm:unix:<path> or swtpm:tcp:<host:port>", spec)
	}
	return network, addr, nil
}

// OpenTPM opens the configured TPM.
func (c Config) OpenTPM() (*device.TPM, error) {
	c = c.WithDefaults()
	network, addr, err := parseTPMSpec(c.TPM)
	if err != nil {
		return nil, err
	}
	var tr interface {
		Send([]byte) ([]byte, error)
		Close() error
	}
	if network == "" {
		tr, err = device.OpenDevice(addr)
	} else {
		tr, err = device.DialSwtpm(network, addr)
	}
	if err != nil {
		return nil, err
	}
	logPath := c.EventLog
	if logPath == "none" {
		logPath = ""
	}
	return device.Open(tr, device.Options{EKHandle: tpm2.TPMHandle(c.EKHandle), EKCertIndex: tpm2.TPMHandle(c.EKCertIndex), EventLog: logPath})
}

// Roots loads the trust bundle.
func (c Config) Roots() ([]*x509.Certificate, error) {
	b, err := os.ReadFile(c.TrustBundle)
	if err != nil {
		return nil, fmt.Errorf("agent: trust bundle: %w", err)
	}
	var out []*x509.Certificate
	for blk, rest := pem.Decode(b); blk != nil; blk, rest = pem.Decode(rest) {
		if blk.Type != "CERTIFICATE" {
			continue
		}
		cert, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("agent: trust bundle %s: %w", c.TrustBundle, err)
		}
		out = append(out, cert)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("agent: trust bundle %s holds no certificate", c.TrustBundle)
	}
	return out, nil
}

// ServerSPIFFEID is the SPIFFE ID the attestation endpoint must present.
func (c Config) ServerSPIFFEID() (spiffeid.ID, error) {
	if c.ServerID != "" {
		id, err := spiffeid.FromString(c.ServerID)
		if err != nil {
			return spiffeid.ID{}, fmt.Errorf("agent: server_id %q: %w", c.ServerID, err)
		}
		return id, nil
	}
	td, err := spiffeid.TrustDomainFromString(c.TrustDomain)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("agent: trust_domain %q (or server_id) is required: %w", c.TrustDomain, err)
	}
	return spiffeid.FromPath(td, "/palisade/server")
}

// Intermediates loads the EK chain intermediates as DER.
func (c Config) Intermediates() ([][]byte, error) {
	var out [][]byte
	for _, p := range c.EKIntermediates {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("agent: EK intermediate: %w", err)
		}
		for blk, rest := pem.Decode(b); blk != nil; blk, rest = pem.Decode(rest) {
			if blk.Type == "CERTIFICATE" {
				out = append(out, blk.Bytes)
			}
		}
	}
	return out, nil
}

// AttestOnce is one complete node attestation from configuration: it opens
// the TPM, connects to the endpoint, and returns the node SVID for key
// (whose CSR, naming the node's expected ID, it builds). Renewal is calling it again before expiry.
func (c Config) AttestOnce(ctx context.Context, key crypto.Signer) (*Result, error) {
	c = c.WithDefaults()
	if err := c.Validate(); err != nil {
		return nil, err
	}
	roots, err := c.Roots()
	if err != nil {
		return nil, err
	}
	inter, err := c.Intermediates()
	if err != nil {
		return nil, err
	}
	tpm, err := c.OpenTPM()
	if err != nil {
		return nil, err
	}
	defer tpm.Close()
	serverID, err := c.ServerSPIFFEID()
	if err != nil {
		return nil, err
	}
	nodeID, err := ExpectedNodeID(serverID.TrustDomain(), tpm.EKPublic())
	if err != nil {
		return nil, err
	}
	csr, err := NewNodeCSR(key, nodeID)
	if err != nil {
		return nil, fmt.Errorf("agent: CSR: %w", err)
	}
	cc, err := Dial(c.Server, ClientTLSConfig(roots, serverID))
	if err != nil {
		return nil, err
	}
	defer cc.Close()
	return Attest(ctx, attestorpb.NewAttestorClient(cc), tpm, csr, inter...)
}
