package enforcer

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const flowLine = `{"time":"2026-01-01T00:00:00Z","from":"spiffe://example.org/node/web","to":"spiffe://example.org/node/db","from_addr":"10.0.0.1","to_addr":"10.0.0.2","port":5432,"proto":"tcp","verdict":"pass","reason":"policy","ifindex":2}`

func TestReadFlowLogSkipsMalformedLines(t *testing.T) {
	good := flowLine + "\n"
	torn := flowLine[:57] // a write cut short
	cases := []struct {
		name    string
		log     string
		records int
		bad     []int
		summary string
	}{
		{name: "clean", log: good + "\n" + good, records: 2},
		{name: "torn line between records", log: good + good + good + torn + "\n" + good, records: 4, bad: []int{4},
			summary: "1 malformed line skipped (line 4)"},
		{name: "record glued to a torn one", log: good + torn + good + good, records: 2, bad: []int{2}},
		{name: "record glued to a whole one", log: flowLine + good, bad: []int{1}},
		{name: "torn tail", log: good + torn, records: 1, bad: []int{2}},
		{name: "garbage and unknown fields", log: good + "not json\n" + good + `{"to":"x","extra":1}` + "\n", records: 2, bad: []int{2, 4},
			summary: "2 malformed lines skipped (lines 2, 4)"},
		{name: "line over the limit", log: good + strings.Repeat("x", maxFlowLine+1) + "\n" + good, records: 2, bad: []int{2}},
		{name: "many", log: strings.Repeat("x\n", 12) + good, records: 1, bad: []int{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12},
			summary: "12 malformed lines skipped (lines 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, …)"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			recs, err := ReadFlowLog(strings.NewReader(tc.log))
			if len(recs) != tc.records {
				t.Errorf("%d records, want %d (err %v)", len(recs), tc.records, err)
			}
			var bad *MalformedLinesError
			if tc.bad == nil {
				if err != nil {
					t.Fatalf("err = %v", err)
				}
				return
			}
			if !errors.As(err, &bad) {
				t.Fatalf("err = %v, want *MalformedLinesError", err)
			}
			if !slices.Equal(bad.Lines, tc.bad) {
				t.Errorf("malformed lines %v, want %v", bad.Lines, tc.bad)
			}
			if tc.summary != "" && bad.Summary() != tc.summary {
				t.Errorf("summary %q, want %q", bad.Summary(), tc.summary)
			}
		})
	}
}

func TestDriftFromFilesReportsMalformedLines(t *testing.T) {
	dir := t.TempDir()
	pp, fp := filepath.Join(dir, "p.yaml"), filepath.Join(dir, "flows.jsonl")
	if err := os.WriteFile(pp, []byte(goodPolicy), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(fp, []byte(flowLine[:30]+"\n"+flowLine+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	rep, err := DriftFromFiles(pp, fp)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.UnusedRules) != 3 || rep.Malformed == nil || !slices.Equal(rep.Malformed.Lines, []int{1}) {
		t.Fatalf("report = %+v", rep)
	}
	var out bytes.Buffer
	if err := rep.Format(&out); err != nil || !strings.Contains(out.String(), "1 malformed line skipped (line 1)") {
		t.Fatalf("Format = %q, %v", out.String(), err)
	}
}

// The writer never extends a torn last line: the next record gets a line
// of its own.
func TestFlowLogWriterEndsTornLine(t *testing.T) {
	rec := FlowRecord{To: "spiffe://example.org/node/db", Port: 5432, Proto: "tcp", Verdict: "pass"}
	var encoded bytes.Buffer
	if err := WriteFlowRecord(&encoded, rec); err != nil {
		t.Fatal(err)
	}
	torn := flowLine[:57]
	cases := []struct {
		name   string
		before string // the file as a previous run left it
		short  string // a write of this run cut short
		want   string
	}{
		{name: "new file", want: encoded.String()},
		{name: "whole lines", before: flowLine + "\n", want: flowLine + "\n" + encoded.String()},
		{name: "torn by a previous run", before: flowLine + "\n" + torn, want: flowLine + "\n" + torn + "\n" + encoded.String()},
		{name: "torn by this run", before: flowLine + "\n", short: torn, want: flowLine + "\n" + torn + "\n" + encoded.String()},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "flows.jsonl")
			if tc.before != "" {
				if err := os.WriteFile(path, []byte(tc.before), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			w, err := openRotating(path, 1<<20)
			if err != nil {
				t.Fatal(err)
			}
			if tc.short != "" {
				if n, err := w.Write([]byte(tc.short)); err != nil || n != len(tc.short) {
					t.Fatalf("Write = %d, %v", n, err)
				}
			}
			if err := WriteFlowRecord(w, rec); err != nil {
				t.Fatal(err)
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tc.want {
				t.Fatalf("file:\n%q\nwant:\n%q", got, tc.want)
			}
			if fi, _ := os.Stat(path); w.size != fi.Size() {
				t.Errorf("writer counts %d bytes, file has %d", w.size, fi.Size())
			}
			recs, _ := ReadFlowLog(bytes.NewReader(got))
			if len(recs) == 0 || recs[len(recs)-1] != rec {
				t.Errorf("last record read back = %+v, want %+v", recs, rec)
			}
		})
	}
}
