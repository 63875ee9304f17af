package enforcer

import (
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func TestAgentRecordOrientation(t *testing.T) {
	p := newPair(t, "", nil)
	p.admit(t)
	pol, err := ParsePolicy([]byte(admissionPolicy))
	if err != nil {
		t.Fatal(err)
	}
	// On the client, the server's answer from 8080 is a reply: the record
	// names the client as initiator, as the rule does.
	a := &Agent{adm: p.cli.a, local: spiffeid.RequireFromString("spiffe://example.org/node/client")}
	tests := []struct {
		name string
		ev   FlowEvent
		want FlowRecord
	}{
		{"reply from reachable service", FlowEvent{Ifindex: 1, Identity: 1, Src: serverAddr, Dst: clientAddr, SrcPort: 8080, DstPort: 40000, Proto: ProtoTCP, Verdict: VerdictPass, Reason: ReasonPolicy},
			FlowRecord{From: "spiffe://example.org/node/client", To: "spiffe://example.org/node/server", FromAddr: clientAddr, ToAddr: serverAddr, Port: 8080, Proto: "tcp", Verdict: "pass", Reason: "policy", Ifindex: 1}},
		{"drop of an unadmitted source", FlowEvent{Ifindex: 1, Src: netip.MustParseAddr("127.0.5.5"), Dst: clientAddr, SrcPort: 1, DstPort: 22, Proto: ProtoTCP, Verdict: VerdictDrop, Reason: ReasonNotAdmitted},
			FlowRecord{To: "spiffe://example.org/node/client", FromAddr: netip.MustParseAddr("127.0.5.5"), ToAddr: clientAddr, Port: 22, Proto: "tcp", Verdict: "drop", Reason: "not-admitted", Ifindex: 1}},
		{"admitted peer to a closed port", FlowEvent{Ifindex: 1, Identity: 1, Src: serverAddr, Dst: clientAddr, SrcPort: 1, DstPort: 22, Proto: ProtoTCP, Verdict: VerdictDrop, Reason: ReasonNoPolicy},
			FlowRecord{From: "spiffe://example.org/node/server", To: "spiffe://example.org/node/client", FromAddr: serverAddr, ToAddr: clientAddr, Port: 22, Proto: "tcp", Verdict: "drop", Reason: "no-policy", Ifindex: 1}},
		{"icmp has no port", FlowEvent{Ifindex: 1, Src: netip.MustParseAddr("127.0.5.5"), Dst: clientAddr, SrcPort: 8 << 8, Proto: ProtoICMP, Verdict: VerdictAudit, Reason: ReasonNotAdmitted},
			FlowRecord{To: "spiffe://example.org/node/client", FromAddr: netip.MustParseAddr("127.0.5.5"), ToAddr: clientAddr, Port: 0, Proto: "icmp", Verdict: "audit", Reason: "not-admitted", Ifindex: 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := a.record(pol, tt.ev); got != tt.want {
				t.Fatalf("record =\n%+v\nwant\n%+v", got, tt.want)
			}
		})
	}
}

func TestDriftFromFiles(t *testing.T) {
	dir := t.TempDir()
	pp, fp := filepath.Join(dir, "p.yaml"), filepath.Join(dir, "flows.jsonl")
	if err := os.WriteFile(pp, []byte(goodPolicy), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(fp)
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteFlowRecord(f, FlowRecord{From: "spiffe://example.org/node/web", To: "spiffe://example.org/node/db", Port: 5432, Proto: "tcp", Verdict: "pass"}); err != nil {
		t.Fatal(err)
	}
	f.Close()
	rep, err := DriftFromFiles(pp, fp)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.UnusedRules) != 3 || len(rep.NotAllowed) != 0 {
		t.Fatalf("report = %+v", rep)
	}
	if _, err := DriftFromFiles(pp, filepath.Join(dir, "missing")); err == nil {
		t.Fatal("missing flow log accepted")
	}
}

func TestRotatingFlowLog(t *testing.T) {
	path := filepath.Join(t.TempDir(), "flows.jsonl")
	r, err := openRotating(path, 100)
	if err != nil {
		t.Fatal(err)
	}
	line := []byte(`{"to":"spiffe://a/b","from_addr":"10.0.0.1","to_addr":"10.0.0.2"}` + "\n") // 67 bytes
	for i := 0; i < 3; i++ {
		if _, err := r.Write(line); err != nil {
			t.Fatal(err)
		}
	}
	r.Close()
	cur, err1 := os.ReadFile(path)
	old, err2 := os.ReadFile(path + ".1")
	if err1 != nil || err2 != nil {
		t.Fatal(err1, err2)
	}
	if len(cur) != len(line) || len(old) != len(line) {
		t.Fatalf("current %d bytes, rotated %d bytes; want one line each", len(cur), len(old))
	}
	// Reopening continues the current file's size.
	r, err = openRotating(path, 100)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if r.size != int64(len(line)) {
		t.Fatalf("size after reopen = %d", r.size)
	}
}
