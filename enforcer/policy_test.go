package enforcer

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

const goodPolicy = `version: 1
rules:
  - name: web-from-frontend
    from: spiffe://example.org/node/frontend
    to: spiffe://example.org/node/web
    protocol: tcp
    ports: ["8080", "9000-9002"]
  - name: dns-from-all-nodes
    from: spiffe://example.org/node/*
    to: spiffe://example.org/node/web
    protocol: udp
    ports: ["53"]
  - name: ping-web
    from: spiffe://example.org/node/frontend
    to: spiffe://example.org/node/web
    protocol: icmp
  - name: frontend-to-db
    from: spiffe://example.org/node/web
    to: spiffe://example.org/node/db
    protocol: tcp
    ports: ["5432"]
`

func id(t testing.TB, s string) spiffeid.ID {
	t.Helper()
	v, err := spiffeid.FromString(s)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestParsePolicyErrors(t *testing.T) {
	tests := []struct {
		name, yaml, want string
	}{
		{"empty", "", "empty file"},
		{"unknown key", "version: 1\nrulez: []\n", "rulez"},
		{"bad version", "version: 2\nrules: []\n", "version 2"},
		{"missing name", "version: 1\nrules:\n  - from: spiffe://a/b\n    to: spiffe://a/c\n    protocol: tcp\n    ports: [\"1\"]\n", "name missing"},
		{"duplicate name", "version: 1\nrules:\n  - {name: x, from: spiffe://a/b, to: spiffe://a/c, protocol: tcp, ports: [\"1\"]}\n  - {name: x, from: spiffe://a/b, to: spiffe://a/c, protocol: tcp, ports: [\"2\"]}\n", "also used by the rule on line 3"},
		{"bad from", "version: 1\nrules:\n  - {name: x, from: http://a/b, to: spiffe://a/c, protocol: tcp, ports: [\"1\"]}\n", `from "http://a/b"`},
		{"bad protocol", "version: 1\nrules:\n  - {name: x, from: spiffe://a/b, to: spiffe://a/c, protocol: sctp, ports: [\"1\"]}\n", `protocol "sctp"`},
		{"port zero", "version: 1\nrules:\n  - {name: x, from: spiffe://a/b, to: spiffe://a/c, protocol: tcp, ports: [\"0\"]}\n", `port "0"`},
		{"port too big", "version: 1\nrules:\n  - {name: x, from: spiffe://a/b, to: spiffe://a/c, protocol: tcp, ports: [\"65536\"]}\n", `port "65536"`},
		{"reversed range", "version: 1\nrules:\n  - {name: x, from: spiffe://a/b, to: spiffe://a/c, protocol: tcp, ports: [\"9-1\"]}\n", "reversed"},
		{"huge range", "version: 1\nrules:\n  - {name: x, from: spiffe://a/b, to: spiffe://a/c, protocol: tcp, ports: [\"1-65535\"]}\n", "more than 4096"},
		{"icmp with ports", "version: 1\nrules:\n  - {name: x, from: spiffe://a/b, to: spiffe://a/c, protocol: icmp, ports: [\"1\"]}\n", "icmp takes no ports"},
		{"tcp without ports", "version: 1\nrules:\n  - {name: x, from: spiffe://a/b, to: spiffe://a/c, protocol: tcp}\n", "ports missing"},
		{"two documents", "version: 1\nrules: []\n---\nversion: 1\n", "more than one"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParsePolicy([]byte(tt.yaml))
			if !errors.Is(err, ErrPolicy) {
				t.Fatalf("err = %v, want ErrPolicy", err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tt.want)
			}
		})
	}
}

func TestParsePolicyEntryLimit(t *testing.T) {
	// full rules of maxPortsPerRule ports, plus icmp rules (2 entries each).
	policy := func(full, icmp int) string {
		var b strings.Builder
		b.WriteString("version: 1\nrules:\n")
		for i := range full {
			fmt.Fprintf(&b, "  - {name: t%d, from: spiffe://a/b, to: spiffe://a/c, protocol: tcp, ports: [\"1-%d\"]}\n", i, maxPortsPerRule)
		}
		for i := range icmp {
			fmt.Fprintf(&b, "  - {name: i%d, from: spiffe://a/b, to: spiffe://a/c, protocol: icmp}\n", i)
		}
		return b.String()
	}
	full := maxPolicyEntries / maxPortsPerRule
	tests := []struct {
		name       string
		full, icmp int
		wantErr    bool
	}{
		{"exactly the limit", full, 0, false},
		{"one icmp rule over", full, 1, true},
		{"one port rule over", full + 1, 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParsePolicy([]byte(policy(tt.full, tt.icmp)))
			if !tt.wantErr {
				if err != nil {
					t.Fatalf("ParsePolicy: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrPolicy) || !strings.Contains(err.Error(), fmt.Sprintf("more than %d", maxPolicyEntries)) {
				t.Fatalf("err = %v, want ErrPolicy naming the limit %d", err, maxPolicyEntries)
			}
		})
	}
}

// The entry limit is derived from the kernel map's size.
func TestPolicyMapEntriesMatchesSpec(t *testing.T) {
	spec, err := loadPalisade()
	if err != nil {
		t.Fatal(err)
	}
	if got := spec.Maps[palisadeMapPolicy].MaxEntries; got != policyMapEntries {
		t.Fatalf("policy map max_entries = %d, policyMapEntries = %d", got, policyMapEntries)
	}
}

func TestPolicyGrants(t *testing.T) {
	p, err := ParsePolicy([]byte(goodPolicy))
	if err != nil {
		t.Fatal(err)
	}
	// YAML writers end files with "---": an empty document, not a second policy.
	if _, err := ParsePolicy([]byte(goodPolicy + "---\n")); err != nil {
		t.Fatalf("policy with a trailing separator: %v", err)
	}
	web := id(t, "spiffe://example.org/node/web")
	tests := []struct {
		name        string
		local, peer string
		want        []Grant
	}{
		{"frontend to web", "spiffe://example.org/node/web", "spiffe://example.org/node/frontend", []Grant{
			{0, ProtoICMP, Inbound}, {8080, ProtoTCP, Inbound}, {9000, ProtoTCP, Inbound}, {9001, ProtoTCP, Inbound},
			{9002, ProtoTCP, Inbound}, {53, ProtoUDP, Inbound}, {0, ProtoICMPv6, Inbound}}},
		{"prefix rule only", "spiffe://example.org/node/web", "spiffe://example.org/node/other", []Grant{{53, ProtoUDP, Inbound}}},
		{"prefix matches whole segments", "spiffe://example.org/node/web", "spiffe://example.org/nodex/other", []Grant{}},
		{"prefix needs the trust domain", "spiffe://example.org/node/web", "spiffe://evil.org/node/frontend", []Grant{}},
		{"reply direction", "spiffe://example.org/node/frontend", "spiffe://example.org/node/web", []Grant{
			{0, ProtoICMP, Reply}, {8080, ProtoTCP, Reply}, {9000, ProtoTCP, Reply}, {9001, ProtoTCP, Reply},
			{9002, ProtoTCP, Reply}, {53, ProtoUDP, Reply}, {0, ProtoICMPv6, Reply}}},
		{"db sees web", "spiffe://example.org/node/db", web.String(), []Grant{{5432, ProtoTCP, Inbound}, {53, ProtoUDP, Reply}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := p.Grants(id(t, tt.local), id(t, tt.peer))
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("Grants = %v\nwant %v", got, tt.want)
			}
		})
	}
}

func TestCheckPolicyFile(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(good, []byte(goodPolicy), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bad, []byte(strings.Replace(goodPolicy, `"8080"`, `"80800"`, 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := CheckPolicyFile(good); err != nil {
		t.Fatalf("good policy: %v", err)
	}
	err := CheckPolicyFile(bad)
	if !errors.Is(err, ErrPolicy) || !strings.Contains(err.Error(), `rule "web-from-frontend" (line 3)`) || !strings.Contains(err.Error(), bad) {
		t.Fatalf("bad policy: err = %v, want ErrPolicy naming file, rule and line", err)
	}
}

func TestDrift(t *testing.T) {
	p, err := ParsePolicy([]byte(goodPolicy))
	if err != nil {
		t.Fatal(err)
	}
	recs := []FlowRecord{
		{From: "spiffe://example.org/node/frontend", To: "spiffe://example.org/node/web", Port: 8080, Proto: "tcp", Verdict: "pass"},
		{From: "spiffe://example.org/node/x", To: "spiffe://example.org/node/web", Port: 53, Proto: "udp", Verdict: "pass"},
		{From: "spiffe://example.org/node/frontend", To: "spiffe://example.org/node/web", Port: 22, Proto: "tcp", Verdict: "audit"},
		{From: "spiffe://example.org/node/frontend", To: "spiffe://example.org/node/web", Port: 22, Proto: "tcp", Verdict: "audit"},
		{To: "spiffe://example.org/node/web", Port: 8080, Proto: "tcp", Verdict: "drop"},
	}
	var buf bytes.Buffer
	for _, r := range recs {
		if err := WriteFlowRecord(&buf, r); err != nil {
			t.Fatal(err)
		}
	}
	back, err := ReadFlowLog(&buf)
	if err != nil {
		t.Fatal(err)
	}
	got := Drift(p, back)
	want := DriftReport{
		NotAllowed:   []FlowKey{{"spiffe://example.org/node/frontend", "spiffe://example.org/node/web", 22, "tcp"}},
		Unidentified: []FlowKey{{"invalid IP", "spiffe://example.org/node/web", 8080, "tcp"}},
		UnusedRules:  []string{"ping-web", "frontend-to-db"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Drift = %+v\nwant %+v", got, want)
	}
	var out bytes.Buffer
	if err := got.Format(&out); err != nil || !strings.Contains(out.String(), "rules never used: 2") {
		t.Fatalf("Format = %q, %v", out.String(), err)
	}
}

func FuzzParsePolicy(f *testing.F) {
	f.Add([]byte(goodPolicy))
	f.Add([]byte("version: 1\nrules: []\n"))
	f.Add([]byte("version: 1\nrules:\n  - {name: x, from: spiffe://a/b/*, to: spiffe://a/c, protocol: tcp, ports: [\"1-3\"]}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := ParsePolicy(data)
		if err != nil {
			if !errors.Is(err, ErrPolicy) {
				t.Fatalf("error without ErrPolicy: %v", err)
			}
			return
		}
		// A valid policy never expands a rule beyond the bound.
		for i := range p.Rules {
			if n := len(p.Rules[i].grants(Inbound)); n > maxPortsPerRule {
				t.Fatalf("rule %d expands to %d entries", i, n)
			}
		}
	})
}

// FuzzReadFlowLog: whatever precedes it, a record on its own line is read
// (a torn line never takes the next one with it), and skipped lines are
// reported by number.
func FuzzReadFlowLog(f *testing.F) {
	good := `{"time":"2026-01-01T00:00:00Z","from":"spiffe://a/b","to":"spiffe://a/c","from_addr":"10.0.0.1","to_addr":"10.0.0.2","port":80,"proto":"tcp","verdict":"pass","reason":"policy","ifindex":2}`
	f.Add([]byte(good + "\n"))
	f.Add([]byte("{}\n\n{\"to\":\"x\",\"from_addr\":\"::1\",\"to_addr\":\"\"}\n"))
	f.Add([]byte(good + "\n" + good[:40]))
	f.Add([]byte(good + good + "\r\nnull\n{\"to\":1}\n"))
	p, err := ParsePolicy([]byte(goodPolicy))
	if err != nil {
		f.Fatal(err)
	}
	var want FlowRecord
	if err := json.Unmarshal([]byte(good), &want); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		recs, err := ReadFlowLog(bytes.NewReader(data))
		var bad *MalformedLinesError
		if err != nil && !errors.As(err, &bad) {
			t.Fatalf("error other than malformed lines: %v", err)
		}
		lines := bytes.Count(data, []byte("\n")) + 1
		if bad != nil {
			if !slices.IsSorted(bad.Lines) || bad.Lines[0] < 1 || bad.Lines[len(bad.Lines)-1] > lines {
				t.Fatalf("malformed lines %v out of order or range (%d lines)", bad.Lines, lines)
			}
			if len(recs)+len(bad.Lines) > lines {
				t.Fatalf("%d records and %d malformed lines from %d lines", len(recs), len(bad.Lines), lines)
			}
		}
		more := slices.Concat(data, []byte("\n"+good+"\n"))
		recs2, err2 := ReadFlowLog(bytes.NewReader(more))
		var bad2 *MalformedLinesError
		if err2 != nil && !errors.As(err2, &bad2) {
			t.Fatalf("error other than malformed lines: %v", err2)
		}
		if len(recs2) != len(recs)+1 || !reflect.DeepEqual(recs2[len(recs)], want) {
			t.Fatalf("a record after %q: read %d records, want %d ending with it", data, len(recs2), len(recs)+1)
		}
		if (bad == nil) != (bad2 == nil) || (bad != nil && !slices.Equal(bad.Lines, bad2.Lines)) {
			t.Fatalf("malformed lines %v, then %v with a record appended", bad, bad2)
		}
		rep := Drift(p, recs)
		if len(rep.UnusedRules) > len(p.Rules) {
			t.Fatalf("more unused rules than rules: %v", rep.UnusedRules)
		}
	})
}
