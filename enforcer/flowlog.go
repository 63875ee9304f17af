package enforcer

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
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

// maxFlowLine bounds a flow log line; a longer one is malformed.
const maxFlowLine = 1 << 20

// MalformedLinesError names the flow log lines ReadFlowLog skipped: torn
// by a short write (full disk) or a crash mid-write.
type MalformedLinesError struct {
	Lines []int // 1-based, ascending
	First error // why the first of them was rejected
}

func (e *MalformedLinesError) Error() string {
	return fmt.Sprintf("enforcer: flow log: %s: line %d: %v", e.Summary(), e.Lines[0], e.First)
}

// Summary reads "N malformed lines skipped (lines a, b, …)".
func (e *MalformedLinesError) Summary() string {
	const shown = 10
	var b strings.Builder
	fmt.Fprintf(&b, "%d malformed line", len(e.Lines))
	if len(e.Lines) != 1 {
		b.WriteByte('s')
	}
	b.WriteString(" skipped (line")
	if len(e.Lines) != 1 {
		b.WriteByte('s')
	}
	for i, n := range e.Lines[:min(len(e.Lines), shown)] {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, " %d", n)
	}
	if len(e.Lines) > shown {
		b.WriteString(", …")
	}
	b.WriteByte(')')
	return b.String()
}

// ReadFlowLog reads a flow log: `palisade flows` prints it, and Drift
// consumes it. Malformed lines are skipped: the well-formed records come
// with a *MalformedLinesError naming them. On any other error there are
// no records.
func ReadFlowLog(r io.Reader) ([]FlowRecord, error) {
	var (
		out []FlowRecord
		bad *MalformedLinesError
		buf []byte
	)
	br := bufio.NewReaderSize(r, 64*1024)
	for n := 1; ; n++ {
		line, tooLong, err := readLine(br, buf)
		if err != nil && !errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("enforcer: read flow log: %w", err)
		}
		buf = line
		if rec, ok, derr := decodeFlow(bytes.TrimSpace(line), tooLong); derr != nil {
			if bad == nil {
				bad = &MalformedLinesError{First: derr}
			}
			bad.Lines = append(bad.Lines, n)
		} else if ok {
			out = append(out, rec)
		}
		if err != nil {
			break
		}
	}
	if bad != nil {
		return out, bad
	}
	return out, nil
}

// readLine reads the next line into buf, without its '\n'. Of a line
// longer than maxFlowLine it keeps nothing and reports it too long.
func readLine(br *bufio.Reader, buf []byte) (line []byte, tooLong bool, err error) {
	line = buf[:0]
	for {
		chunk, err := br.ReadSlice('\n')
		chunk = bytes.TrimSuffix(chunk, []byte{'\n'})
		if tooLong = tooLong || len(line)+len(chunk) > maxFlowLine; !tooLong {
			line = append(line, chunk...)
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			return line, tooLong, err
		}
	}
}

// decodeFlow decodes one line: one record, nothing else (ok false: blank).
func decodeFlow(line []byte, tooLong bool) (rec FlowRecord, ok bool, err error) {
	if tooLong {
		return rec, false, fmt.Errorf("longer than %d bytes", maxFlowLine)
	}
	if len(line) == 0 {
		return rec, false, nil
	}
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&rec); err != nil {
		return rec, false, err
	}
	// A record glued to the next by a lost '\n' is not half-read.
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return rec, false, errors.New("data after the record")
	}
	return rec, true, nil
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
	// Malformed: flow log lines skipped as unreadable (DriftFromFiles).
	Malformed *MalformedLinesError
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
	if d.Malformed != nil {
		fmt.Fprintf(&b, "flow log: %s\n", d.Malformed.Summary())
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
	var bad *MalformedLinesError
	if err != nil && !errors.As(err, &bad) {
		return DriftReport{}, err
	}
	rep := Drift(p, recs)
	rep.Malformed = bad
	return rep, nil
}
