package enforcer

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// FlowRecord is one line of the flow log (JSON Lines), oriented like a
// policy rule: From opened a flow to To on Port/Proto. From is empty when
// the source was not admitted (no identity).
type FlowRecord struct {
	Time     time.Time  `json:"time"`
	From     string     `json:"from,omitempty"`
	To       string     `json:"to"`
	FromAddr netip.Addr `json:"from_addr"`
	ToAddr   netip.Addr `json:"to_addr"`
	Port     uint16     `json:"port"`
	Proto    string     `json:"proto"`
	Verdict  string     `json:"verdict"`
	Reason   string     `json:"reason"`
	Ifindex  int        `json:"ifindex"`
}

func protoName(p uint8) string {
	switch p {
	case ProtoTCP:
		return "tcp"
	case ProtoUDP:
		return "udp"
	case ProtoICMP, ProtoICMPv6:
		return "icmp"
	}
	return fmt.Sprintf("ip-%d", p)
}

func protoNumber(s string) (uint8, bool) {
	switch s {
	case "tcp":
		return ProtoTCP, true
	case "udp":
		return ProtoUDP, true
	case "icmp":
		return ProtoICMP, true
	}
	return 0, false
}

// WriteFlowRecord appends one record as a JSON line.
func WriteFlowRecord(w io.Writer, r FlowRecord) error {
	b, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("enforcer: encode flow: %w", err)
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

// ReadFlowLog reads a flow log: `palisade flows` prints it, and Drift
// consumes it. A malformed line is an error naming its number.
func ReadFlowLog(r io.Reader) ([]FlowRecord, error) {
	var out []FlowRecord
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		var rec FlowRecord
		dec := json.NewDecoder(strings.NewReader(line))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&rec); err != nil {
			return nil, fmt.Errorf("enforcer: flow log line %d: %w", n, err)
		}
		out = append(out, rec)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("enforcer: read flow log: %w", err)
	}
	return out, nil
}

// FormatFlows renders records as a table for `palisade flows`.
func FormatFlows(w io.Writer, recs []FlowRecord) error {
	if _, err := fmt.Fprintf(w, "%-30s %-7s %-14s %-40s %-40s %s\n", "TIME", "VERDICT", "REASON", "FROM", "TO", "PORT/PROTO"); err != nil {
		return err
	}
	for _, r := range recs {
		from := r.From
		if from == "" {
			from = "(unadmitted " + r.FromAddr.String() + ")"
		}
		if _, err := fmt.Fprintf(w, "%-30s %-7s %-14s %-40s %-40s %d/%s\n", r.Time.Format(time.RFC3339Nano),
			r.Verdict, r.Reason, from, r.To, r.Port, r.Proto); err != nil {
			return err
		}
	}
	return nil
}

// FlowKey is an observed flow, deduplicated.
type FlowKey struct {
	From, To string
	Port     uint16
	Proto    string
}

// DriftReport is what `palisade policy drift` prints.
type DriftReport struct {
	// NotAllowed: identified flows observed that no rule allows (dropped,
	// or passed in audit mode).
	NotAllowed []FlowKey
	// Unidentified: flows from sources without an admission, by address.
	Unidentified []FlowKey
	// UnusedRules: rules no observed flow used.
	UnusedRules []string
}

// Drift compares observed flows with the policy.
func Drift(p *Policy, recs []FlowRecord) DriftReport {
	used := map[string]bool{}
	notAllowed := map[FlowKey]bool{}
	unidentified := map[FlowKey]bool{}
	for _, r := range recs {
		proto, ok := protoNumber(r.Proto)
		if r.From == "" {
			unidentified[FlowKey{From: r.FromAddr.String(), To: r.To, Port: r.Port, Proto: r.Proto}] = true
			continue
		}
		from, err1 := spiffeid.FromString(r.From)
		to, err2 := spiffeid.FromString(r.To)
		var rules []string
		if ok && err1 == nil && err2 == nil {
			rules = p.Allows(from, to, r.Port, proto)
		}
		if len(rules) == 0 {
			notAllowed[FlowKey{r.From, r.To, r.Port, r.Proto}] = true
		}
		for _, n := range rules {
			used[n] = true
		}
	}
	var rep DriftReport
	for _, r := range p.Rules {
		if !used[r.Name] {
			rep.UnusedRules = append(rep.UnusedRules, r.Name)
		}
	}
	rep.NotAllowed = sortedKeys(notAllowed)
	rep.Unidentified = sortedKeys(unidentified)
	return rep
}

func sortedKeys(m map[FlowKey]bool) []FlowKey {
	out := make([]FlowKey, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.SortFunc(out, func(a, b FlowKey) int {
		return strings.Compare(fmt.Sprintf("%s %s %s %05d", a.From, a.To, a.Proto, a.Port),
			fmt.Sprintf("%s %s %s %05d", b.From, b.To, b.Proto, b.Port))
	})
	return out
}

// Format renders the report for `palisade policy drift`.
func (d DriftReport) Format(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "flows the policy does not allow: %d\n", len(d.NotAllowed))
	for _, k := range d.NotAllowed {
		fmt.Fprintf(&b, "  %s -> %s %d/%s\n", k.From, k.To, k.Port, k.Proto)
	}
	fmt.Fprintf(&b, "flows from unadmitted sources: %d\n", len(d.Unidentified))
	for _, k := range d.Unidentified {
		fmt.Fprintf(&b, "  %s -> %s %d/%s\n", k.From, k.To, k.Port, k.Proto)
	}
	fmt.Fprintf(&b, "rules never used: %d\n", len(d.UnusedRules))
	for _, n := range d.UnusedRules {
		fmt.Fprintf(&b, "  %s\n", n)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// DriftFromFiles loads a policy file and a flow log and compares them:
// `palisade policy drift POLICY FLOWLOG`.
func DriftFromFiles(policyPath, flowLogPath string) (DriftReport, error) {
	p, err := LoadPolicy(policyPath)
	if err != nil {
		return DriftReport{}, err
	}
	f, err := os.Open(flowLogPath)
	if err != nil {
		return DriftReport{}, fmt.Errorf("enforcer: open flow log: %w", err)
	}
	defer f.Close()
	recs, err := ReadFlowLog(f)
	if err != nil {
		return DriftReport{}, err
	}
	return Drift(p, recs), nil
}
