package store

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

func entry(spiffeID, parent string, sels ...string) Entry {
	e := Entry{SPIFFEID: spiffeID, ParentID: parent, X509TTL: time.Hour, JWTTTL: 5 * time.Minute}
	for _, s := range sels {
		typ, val, _ := strings.Cut(s, ":")
		e.Selectors = append(e.Selectors, Selector{Type: typ, Value: val})
	}
	return e
}

func TestCreateEntry(t *testing.T) {
	s := openTest(t)
	tests := []struct {
		name string
		in   Entry
		want error
	}{
		{name: "ok", in: entry("spiffe://example.org/web", nodeA, "unix:uid:1000", "k8s:ns:web")},
		{name: "same with selectors reordered", in: entry("spiffe://example.org/web", nodeA, "k8s:ns:web", "unix:uid:1000"), want: ErrEntryExists},
		{name: "duplicate selectors collapse", in: entry("spiffe://example.org/web", nodeA, "k8s:ns:web", "unix:uid:1000", "k8s:ns:web"), want: ErrEntryExists},
		{name: "other parent", in: entry("spiffe://example.org/web", nodeB, "unix:uid:1000", "k8s:ns:web")},
		{name: "subset of selectors", in: entry("spiffe://example.org/web", nodeA, "unix:uid:1000")},
		{name: "empty SPIFFE ID", in: entry("", nodeA, "unix:uid:1"), want: ErrInvalid},
		{name: "not a SPIFFE ID", in: entry("https://example.org/x", nodeA, "unix:uid:1"), want: ErrInvalid},
		{name: "empty parent", in: entry("spiffe://example.org/x", "", "unix:uid:1"), want: ErrInvalid},
		{name: "no selectors", in: entry("spiffe://example.org/x", nodeA), want: ErrInvalid},
		{name: "empty selector value", in: entry("spiffe://example.org/x", nodeA, "unix:"), want: ErrInvalid},
		{name: "negative TTL", in: func() Entry { e := entry("spiffe://example.org/x", nodeA, "unix:uid:1"); e.X509TTL = -1; return e }(), want: ErrInvalid},
		{name: "bad ID", in: func() Entry { e := entry("spiffe://example.org/x", nodeA, "unix:uid:1"); e.ID = "a/b"; return e }(), want: ErrInvalid},
		{name: "NUL in SPIFFE ID", in: entry("spiffe://example.org/x\x00", nodeA, "unix:uid:1"), want: ErrInvalid},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := stats(t, s).Entries
			got, err := s.CreateEntry(tc.in)
			wantErr(t, err, tc.want)
			after := stats(t, s).Entries
			if tc.want != nil {
				if after != before {
					t.Fatalf("failed create changed the entry count %d → %d", before, after)
				}
				return
			}
			if after != before+1 {
				t.Fatalf("entry count %d → %d", before, after)
			}
			if len(got.ID) != 32 || got.CreatedAt.IsZero() {
				t.Fatalf("ID %q / CreatedAt %s not assigned", got.ID, got.CreatedAt)
			}
			read, err := s.Entry(got.ID)
			if err != nil {
				t.Fatal(err)
			}
			if !read.CreatedAt.Equal(got.CreatedAt) {
				t.Fatalf("CreatedAt %s, want %s", read.CreatedAt, got.CreatedAt)
			}
			read.CreatedAt = got.CreatedAt
			if !reflect.DeepEqual(read, got) {
				t.Fatalf("Entry = %+v, want %+v", read, got)
			}
			for i := 1; i < len(read.Selectors); i++ {
				if read.Selectors[i-1].Type > read.Selectors[i].Type {
					t.Fatalf("selectors not sorted: %v", read.Selectors)
				}
			}
		})
	}
	t.Run("explicit ID reused", func(t *testing.T) {
		e := entry("spiffe://example.org/y", nodeA, "unix:uid:2")
		e.ID = "fixed-id"
		if _, err := s.CreateEntry(e); err != nil {
			t.Fatal(err)
		}
		e.SPIFFEID = "spiffe://example.org/z"
		_, err := s.CreateEntry(e)
		wantErr(t, err, ErrEntryExists)
	})
}

func TestEntriesListDelete(t *testing.T) {
	s := openTest(t)
	var ids []string
	for _, e := range []Entry{
		entry("spiffe://example.org/a", nodeA, "unix:uid:1"),
		entry("spiffe://example.org/b", nodeA, "unix:uid:2"),
		entry("spiffe://example.org/a", nodeB, "unix:uid:1"),
		entry("spiffe://example.org/c", nodeB, "unix:uid:3"),
	} {
		got, err := s.CreateEntry(e)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, got.ID)
	}
	list := func(t *testing.T, f EntryFilter) []string {
		t.Helper()
		es, err := s.ListEntries(f)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, e := range es {
			out = append(out, e.SPIFFEID+"@"+e.ParentID[len(nodeA)-4:])
		}
		return out
	}
	tests := []struct {
		name string
		f    EntryFilter
		want int
	}{
		{"all", EntryFilter{}, 4},
		{"parent A", EntryFilter{ParentID: nodeA}, 2},
		{"parent B", EntryFilter{ParentID: nodeB}, 2},
		{"spiffe a", EntryFilter{SPIFFEID: "spiffe://example.org/a"}, 2},
		{"parent B spiffe a", EntryFilter{ParentID: nodeB, SPIFFEID: "spiffe://example.org/a"}, 1},
		{"unknown parent", EntryFilter{ParentID: "spiffe://example.org/none"}, 0},
		{"prefix of a parent", EntryFilter{ParentID: nodeA[:len(nodeA)-1]}, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := list(t, tc.f); len(got) != tc.want {
				t.Fatalf("ListEntries(%+v) = %v, want %d entries", tc.f, got, tc.want)
			}
		})
	}
	t.Run("bad filter", func(t *testing.T) {
		_, err := s.ListEntries(EntryFilter{ParentID: "x\x00"})
		wantErr(t, err, ErrInvalid)
	})
	t.Run("delete", func(t *testing.T) {
		del, err := s.DeleteEntry(ids[0])
		if err != nil || del.ID != ids[0] {
			t.Fatalf("DeleteEntry = %+v, %v", del, err)
		}
		_, err = s.Entry(ids[0])
		wantErr(t, err, ErrEntryNotFound)
		_, err = s.DeleteEntry(ids[0])
		wantErr(t, err, ErrEntryNotFound)
		_, err = s.DeleteEntry("")
		wantErr(t, err, ErrInvalid)
		if got := list(t, EntryFilter{ParentID: nodeA}); len(got) != 1 {
			t.Fatalf("parent index still lists the deleted entry: %v", got)
		}
		if got := list(t, EntryFilter{SPIFFEID: "spiffe://example.org/a"}); len(got) != 1 {
			t.Fatalf("SPIFFE ID index still lists the deleted entry: %v", got)
		}
		// The uniqueness key is gone too: the same entry can be made again.
		if _, err := s.CreateEntry(entry("spiffe://example.org/a", nodeA, "unix:uid:1")); err != nil {
			t.Fatalf("re-create after delete: %v", err)
		}
	})
}

// PrepareEntry answers what CreateEntry stores, so a caller can audit the
// entry before the write.
func TestPrepareEntry(t *testing.T) {
	s := openTest(t)
	tests := []struct {
		name string
		in   Entry
		want error
	}{
		{name: "normalised", in: entry("spiffe://example.org/prep", nodeA, "unix:uid:1", "k8s:ns:a", "unix:uid:1")},
		{name: "explicit ID kept", in: func() Entry {
			e := entry("spiffe://example.org/prep2", nodeA, "unix:uid:1")
			e.ID = "prep-id"
			return e
		}()},
		{name: "no selectors", in: entry("spiffe://example.org/prep3", nodeA), want: ErrInvalid},
		{name: "bad DNS name", in: func() Entry {
			e := entry("spiffe://example.org/prep4", nodeA, "unix:uid:1")
			e.DNSNames = []string{"a b"}
			return e
		}(), want: ErrInvalid},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := stats(t, s).Entries
			prep, err := PrepareEntry(tc.in)
			wantErr(t, err, tc.want)
			if after := stats(t, s).Entries; after != before {
				t.Fatalf("PrepareEntry changed the entry count %d → %d", before, after)
			}
			if tc.want != nil {
				return
			}
			if tc.in.ID != "" && prep.ID != tc.in.ID {
				t.Fatalf("ID %q, want %q", prep.ID, tc.in.ID)
			}
			got, err := s.CreateEntry(prep)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, prep) {
				t.Fatalf("CreateEntry stored %+v, prepared %+v", got, prep)
			}
		})
	}
}
