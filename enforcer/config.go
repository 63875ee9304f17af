package enforcer

import (
	"cmp"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Config is the enforcer section of the agent's YAML config.
type Config struct {
	// Interfaces to enforce on (ingress), by name.
	Interfaces []string `yaml:"interfaces"`
	// Attach: auto (TCX, tc clsact fallback), tcx or tc.
	Attach string `yaml:"attach"`
	// Mode: enforce or audit.
	Mode string `yaml:"mode"`
	// PinDir on bpffs holds maps, program and links across restarts.
	PinDir string `yaml:"pin_dir"`
	// StateDir holds admissions.json (durable admission records).
	StateDir string `yaml:"state_dir"`
	// AdmissionAddress is the listen address, host only (empty: all).
	AdmissionAddress string `yaml:"admission_address"`
	// AdmissionPort is the listening and dialing port of admission.
	AdmissionPort uint16 `yaml:"admission_port"`
	// MaxAdmission caps an admission below the SVID's not-after.
	MaxAdmission time.Duration `yaml:"max_admission"`
	// RecheckInterval between revocation re-checks of admitted peers.
	RecheckInterval time.Duration `yaml:"recheck_interval"`
	// RevocationGrace keeps admitted peers while revocation status is
	// unknown (appliance unreachable, CRL not yet fetched) this long.
	RevocationGrace time.Duration `yaml:"revocation_grace"`
	// TrustDomain of admitted peers, e.g. example.org.
	TrustDomain string `yaml:"trust_domain"`
	// TrustBundle is a PEM file of trust anchors (unless the agent
	// passes a bundle source in Deps).
	TrustBundle string `yaml:"trust_bundle"`
	// PolicyFile is the policy-as-code file.
	PolicyFile string `yaml:"policy_file"`
	// Peers this node admits itself to ahead of traffic: "addr" or
	// "addr:port" / "[v6]:port" (port defaults to AdmissionPort).
	Peers []string `yaml:"peers"`
	// FlowLog is the JSON Lines flow log (`palisade flows`). Empty: none.
	FlowLog string `yaml:"flow_log"`
	// FlowLogMaxBytes rotates the flow log to FlowLog.1 beyond this size.
	FlowLogMaxBytes int64 `yaml:"flow_log_max_bytes"`
	// Infrastructure: "addr:port" TCP services, or "addr:port/udp" UDP
	// services (the appliance: SVIDs, attestation, CRLs; DNS, NTP) this
	// node reaches without admission. Only their answers pass.
	Infrastructure []string `yaml:"infrastructure"`
	// OnDemandAdmission attaches an egress program that triggers admission
	// when this node sends a TCP SYN to a destination it is not admitted
	// to (the fallback to Peers; the first SYN is lost). Default true.
	OnDemandAdmission *bool `yaml:"on_demand_admission"`
}

// Defaults.
const (
	DefaultPinDir          = "/sys/fs/bpf/palisade"
	DefaultStateDir        = "/var/lib/palisade/enforcer"
	DefaultAdmissionPort   = 7443
	DefaultMaxAdmission    = time.Hour
	DefaultRecheckInterval = 250 * time.Millisecond
	DefaultFlowLogMaxBytes = 64 << 20
	DefaultRevocationGrace = time.Minute
)

// SetDefaults fills unset fields.
func (c *Config) SetDefaults() {
	c.Attach = cmp.Or(c.Attach, string(AttachAuto))
	c.Mode = cmp.Or(c.Mode, "enforce")
	c.PinDir = cmp.Or(c.PinDir, DefaultPinDir)
	c.StateDir = cmp.Or(c.StateDir, DefaultStateDir)
	c.AdmissionPort = cmp.Or(c.AdmissionPort, DefaultAdmissionPort)
	c.MaxAdmission = cmp.Or(c.MaxAdmission, DefaultMaxAdmission)
	c.RecheckInterval = cmp.Or(c.RecheckInterval, DefaultRecheckInterval)
	c.RevocationGrace = cmp.Or(c.RevocationGrace, DefaultRevocationGrace)
	c.FlowLogMaxBytes = cmp.Or(c.FlowLogMaxBytes, DefaultFlowLogMaxBytes)
	if c.OnDemandAdmission == nil {
		on := true
		c.OnDemandAdmission = &on
	}
}

// Validate checks the config (after SetDefaults).
func (c *Config) Validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s", ErrConfig, fmt.Sprintf(format, a...))
	}
	if len(c.Interfaces) == 0 {
		return bad("interfaces: at least one")
	}
	switch AttachMode(c.Attach) {
	case AttachAuto, AttachTCX, AttachTC:
	default:
		return bad("attach %q (want auto, tcx or tc)", c.Attach)
	}
	if _, err := ParseMode(c.Mode); err != nil {
		return err
	}
	if !filepath.IsAbs(c.PinDir) || !filepath.IsAbs(c.StateDir) {
		return bad("pin_dir and state_dir must be absolute paths")
	}
	if c.AdmissionAddress != "" {
		if _, err := netip.ParseAddr(c.AdmissionAddress); err != nil {
			return bad("admission_address %q: %v", c.AdmissionAddress, err)
		}
	}
	if c.AdmissionPort == 0 {
		return bad("admission_port missing")
	}
	if c.MaxAdmission < time.Minute {
		return bad("max_admission %v is under a minute", c.MaxAdmission)
	}
	if c.RecheckInterval <= 0 || c.RecheckInterval > time.Second {
		return bad("recheck_interval %v: want (0, 1s] so revocation applies within a second", c.RecheckInterval)
	}
	if td, err := spiffeid.TrustDomainFromString(c.TrustDomain); err != nil || td.Name() != c.TrustDomain {
		return bad("trust_domain %q: want a bare trust domain name like example.org", c.TrustDomain)
	}
	if c.PolicyFile == "" {
		return bad("policy_file missing")
	}
	if c.RevocationGrace < 0 || c.RevocationGrace > c.MaxAdmission {
		return bad("revocation_grace %v: want 0 to max_admission", c.RevocationGrace)
	}
	if c.FlowLogMaxBytes < 4096 {
		return bad("flow_log_max_bytes %d is under 4096", c.FlowLogMaxBytes)
	}
	if _, err := c.PeerAddrs(); err != nil {
		return err
	}
	if _, err := c.InfrastructureAddrs(); err != nil {
		return err
	}
	return nil
}

// InfrastructureAddrs parses Infrastructure.
func (c *Config) InfrastructureAddrs() ([]Service, error) {
	var out []Service
	for _, s := range c.Infrastructure {
		addr, proto := s, ProtoTCP
		if a, ok := strings.CutSuffix(s, "/udp"); ok {
			addr, proto = a, ProtoUDP
		} else if a, ok := strings.CutSuffix(s, "/tcp"); ok {
			addr = a
		}
		ap, err := netip.ParseAddrPort(addr)
		if err != nil || ap.Port() == 0 {
			return nil, fmt.Errorf("%w: infrastructure %q: want address:port[/tcp|/udp]", ErrConfig, s)
		}
		out = append(out, Service{AddrPort: ap, Proto: proto})
	}
	return out, nil
}

func (c *Config) listenAddr() string {
	addr := netip.IPv6Unspecified()
	if c.AdmissionAddress != "" {
		addr = netip.MustParseAddr(c.AdmissionAddress)
	}
	return netip.AddrPortFrom(addr, c.AdmissionPort).String()
}

// PeerAddrs parses Peers.
func (c *Config) PeerAddrs() ([]netip.AddrPort, error) {
	var out []netip.AddrPort
	for _, p := range c.Peers {
		if ap, err := netip.ParseAddrPort(p); err == nil {
			out = append(out, ap)
			continue
		}
		a, err := netip.ParseAddr(p)
		if err != nil {
			return nil, fmt.Errorf("%w: peer %q: want an address or address:port", ErrConfig, p)
		}
		out = append(out, netip.AddrPortFrom(a, c.AdmissionPort))
	}
	return out, nil
}
