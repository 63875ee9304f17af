package enforcer

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"gopkg.in/yaml.v3"
)

// Policy-as-code file format (YAML, unknown keys rejected):
//
//	version: 1
//	rules:
//	  - name: web-from-frontend            # unique
//	    from: spiffe://example.org/node/frontend
//	    to: spiffe://example.org/node/web   # exact, or a path prefix ending in "/*"
//	    protocol: tcp                       # tcp, udp or icmp
//	    ports: ["8080", "9000-9010"]        # tcp/udp only
//
// A rule lets `from` open flows to `to` on the ports. Anything not allowed
// by some rule is denied.

// maxPortsPerRule bounds the map entries one rule can expand to.
const maxPortsPerRule = 4096

// policyMapEntries is the kernel policy map's max_entries (bpf/enforcer.c).
const policyMapEntries = 262144

// maxPolicyEntries bounds the entries all rules together expand to, half
// the map, since a reload holds old and new entries at once. It is not a
// cap on the map: peers whose grant sets overlap carry shared grants once
// per set. Past the map's size the kernel refuses the reload and the old
// policy stays in force (Admitter.SetPolicy).
const maxPolicyEntries = policyMapEntries / 2

// PolicyVersion is the only file format version.
const PolicyVersion = 1

// Policy is a parsed, validated policy file.
type Policy struct {
	Version int    `yaml:"version"`
	Rules   []Rule `yaml:"rules"`
}

// Rule allows flows from one set of SPIFFE IDs to another.
type Rule struct {
	Name     string   `yaml:"name"`
	From     string   `yaml:"from"`
	To       string   `yaml:"to"`
	Protocol string   `yaml:"protocol"`
	Ports    []string `yaml:"ports"`

	line  int
	from  idMatcher
	to    idMatcher
	proto uint8
	ports []portRange
}

type portRange struct{ lo, hi uint16 }

// idMatcher is an exact SPIFFE ID, or a trust domain plus path prefix
// matching whole segments ("spiffe://td/a/*" matches /a/b, not /ab).
type idMatcher struct {
	id     spiffeid.ID
	prefix bool
}

func parseMatcher(s string) (idMatcher, error) {
	if base, ok := strings.CutSuffix(s, "/*"); ok {
		id, err := spiffeid.FromString(base)
		if err != nil {
			return idMatcher{}, err
		}
		return idMatcher{id: id, prefix: true}, nil
	}
	id, err := spiffeid.FromString(s)
	if err != nil {
		return idMatcher{}, err
	}
	return idMatcher{id: id}, nil
}

func (m idMatcher) match(id spiffeid.ID) bool {
	if !m.prefix {
		return m.id == id
	}
	if id.TrustDomain() != m.id.TrustDomain() {
		return false
	}
	p := m.id.Path()
	return strings.HasPrefix(id.Path(), p+"/")
}

// Line is the rule's line in the policy file.
func (r *Rule) Line() int { return r.line }

// ParsePolicy parses and validates a policy file. The error names every
// problem found, with rule names and lines.
func ParsePolicy(data []byte) (*Policy, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var p Policy
	if err := dec.Decode(&p); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%w: empty file", ErrPolicy)
		}
		return nil, fmt.Errorf("%w: %w", ErrPolicy, err)
	}
	if !onlyEmptyDocuments(dec) {
		return nil, fmt.Errorf("%w: more than one YAML document", ErrPolicy)
	}
	// Line numbers for messages.
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err == nil && len(root.Content) == 1 {
		m := root.Content[0]
		for i := 0; i+1 < len(m.Content); i += 2 {
			if m.Content[i].Value == "rules" && m.Content[i+1].Kind == yaml.SequenceNode {
				for j, n := range m.Content[i+1].Content {
					if j < len(p.Rules) {
						p.Rules[j].line = n.Line
					}
				}
			}
		}
	}
	if err := p.validate(); err != nil {
		return nil, err
	}
	return &p, nil
}

// LoadPolicy reads and parses a policy file.
func LoadPolicy(path string) (*Policy, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("enforcer: read policy: %w", err)
	}
	p, err := ParsePolicy(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return p, nil
}

// CheckPolicyFile validates a policy file: `palisade policy check FILE`.
func CheckPolicyFile(path string) error {
	_, err := LoadPolicy(path)
	return err
}

func (p *Policy) validate() error {
	var errs []error
	if p.Version != PolicyVersion {
		errs = append(errs, fmt.Errorf("version %d (want %d)", p.Version, PolicyVersion))
	}
	names := map[string]int{}
	entries := 0
	for i := range p.Rules {
		r := &p.Rules[i]
		where := fmt.Sprintf("rule %d (line %d)", i+1, r.line)
		if r.Name != "" {
			where = fmt.Sprintf("rule %q (line %d)", r.Name, r.line)
		}
		bad := func(format string, a ...any) {
			errs = append(errs, fmt.Errorf("%s: %s", where, fmt.Sprintf(format, a...)))
		}
		if r.Name == "" {
			bad("name missing")
		} else if prev, dup := names[r.Name]; dup {
			bad("name also used by the rule on line %d", prev)
		} else {
			names[r.Name] = r.line
		}
		var err error
		if r.from, err = parseMatcher(r.From); err != nil {
			bad("from %q: %v", r.From, err)
		}
		if r.to, err = parseMatcher(r.To); err != nil {
			bad("to %q: %v", r.To, err)
		}
		if proto, ok := protoNumber(r.Protocol); ok {
			r.proto = proto
		} else {
			bad("protocol %q (want tcp, udp or icmp)", r.Protocol)
		}
		if r.Protocol == "icmp" {
			if len(r.Ports) != 0 {
				bad("icmp takes no ports")
			}
			entries += 2 // ICMP and ICMPv6
			continue
		}
		if len(r.Ports) == 0 && r.proto != 0 {
			bad("ports missing")
		}
		r.ports = r.ports[:0]
		total := 0
		for _, s := range r.Ports {
			pr, err := parsePortRange(s)
			if err != nil {
				bad("%v", err)
				continue
			}
			total += int(pr.hi) - int(pr.lo) + 1
			r.ports = append(r.ports, pr)
		}
		if total > maxPortsPerRule {
			bad("%d ports, more than %d", total, maxPortsPerRule)
		}
		entries += total
	}
	if entries > maxPolicyEntries {
		errs = append(errs, fmt.Errorf("rules expand to %d policy map entries, more than %d (half the kernel map's %d, which holds the old and new entries during a reload)",
			entries, maxPolicyEntries, policyMapEntries))
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %w", ErrPolicy, errors.Join(errs...))
	}
	return nil
}

func parsePortRange(s string) (portRange, error) {
	lo, hi, isRange := strings.Cut(s, "-")
	if !isRange {
		hi = lo
	}
	a, err1 := strconv.ParseUint(strings.TrimSpace(lo), 10, 16)
	b, err2 := strconv.ParseUint(strings.TrimSpace(hi), 10, 16)
	if err1 != nil || err2 != nil || a == 0 || b == 0 {
		return portRange{}, fmt.Errorf("port %q: want 1-65535 or LOW-HIGH", s)
	}
	if a > b {
		return portRange{}, fmt.Errorf("port range %q is reversed", s)
	}
	return portRange{uint16(a), uint16(b)}, nil
}

// Grant is one thing a peer may do, seen from the local node.
type Grant struct {
	Port  uint16 // 0 for ICMP
	Proto uint8
	Dir   Direction
}

func (r *Rule) grants(dir Direction) []Grant {
	if r.proto == ProtoICMP {
		return []Grant{{0, ProtoICMP, dir}, {0, ProtoICMPv6, dir}}
	}
	var out []Grant
	for _, pr := range r.ports {
		for p := uint32(pr.lo); p <= uint32(pr.hi); p++ {
			out = append(out, Grant{uint16(p), r.proto, dir})
		}
	}
	return out
}

// Grants returns what peer may do to local (Inbound) and which of peer's
// services local may reach (Reply), sorted and deduplicated. Empty: the
// policy has nothing between them.
func (p *Policy) Grants(local, peer spiffeid.ID) []Grant {
	set := map[Grant]bool{}
	for i := range p.Rules {
		r := &p.Rules[i]
		if r.from.match(peer) && r.to.match(local) {
			for _, g := range r.grants(Inbound) {
				set[g] = true
			}
		}
		if r.from.match(local) && r.to.match(peer) {
			for _, g := range r.grants(Reply) {
				set[g] = true
			}
		}
	}
	out := make([]Grant, 0, len(set))
	for g := range set {
		out = append(out, g)
	}
	slices.SortFunc(out, func(a, b Grant) int {
		if a.Dir != b.Dir {
			return int(a.Dir) - int(b.Dir)
		}
		if a.Proto != b.Proto {
			return int(a.Proto) - int(b.Proto)
		}
		return int(a.Port) - int(b.Port)
	})
	return out
}

// Allows reports whether a flow from → to on port/proto is allowed, and
// by which rules.
func (p *Policy) Allows(from, to spiffeid.ID, port uint16, proto uint8) []string {
	var names []string
	for i := range p.Rules {
		r := &p.Rules[i]
		if r.from.match(from) && r.to.match(to) && r.covers(port, proto) {
			names = append(names, r.Name)
		}
	}
	return names
}

func (r *Rule) covers(port uint16, proto uint8) bool {
	if r.proto == ProtoICMP {
		return proto == ProtoICMP || proto == ProtoICMPv6
	}
	if proto != r.proto {
		return false
	}
	for _, pr := range r.ports {
		if port >= pr.lo && port <= pr.hi {
			return true
		}
	}
	return false
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
