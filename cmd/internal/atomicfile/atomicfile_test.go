package atomicfile

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestWriteFiles(t *testing.T) {
	tests := []struct {
		name    string
		files   []File
		wantErr string
	}{
		{"two files", []File{{"a.pem", []byte("A"), 0o600}, {"b.pem", []byte("B"), 0o644}}, ""},
		{"path in name", []File{{"a.pem", []byte("A"), 0o600}, {"../b.pem", []byte("B"), 0o600}}, "not a base name"},
		{"empty name", []File{{"", []byte("A"), 0o600}}, "not a base name"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "a.pem"), []byte("old"), 0o600); err != nil {
				t.Fatal(err)
			}
			err := WriteFiles(dir, tc.files...)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				// Nothing replaced, no temporary file left.
				if got, _ := os.ReadFile(filepath.Join(dir, "a.pem")); string(got) != "old" {
					t.Fatalf("a.pem = %q after a refused write", got)
				}
				if ents, _ := os.ReadDir(dir); len(ents) != 1 {
					t.Fatalf("directory holds %d entries, want 1", len(ents))
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for _, f := range tc.files {
				fi, err := os.Stat(filepath.Join(dir, f.Name))
				if err != nil {
					t.Fatal(err)
				}
				got, _ := os.ReadFile(filepath.Join(dir, f.Name))
				if string(got) != string(f.Data) || fi.Mode().Perm() != f.Mode {
					t.Fatalf("%s: %q mode %v, want %q mode %v", f.Name, got, fi.Mode().Perm(), f.Data, f.Mode)
				}
			}
			if ents, _ := os.ReadDir(dir); len(ents) != len(tc.files) {
				t.Fatalf("directory holds %d entries, want %d", len(ents), len(tc.files))
			}
		})
	}
}

func TestWriteFilesNeedsDirectory(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "f")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{filepath.Join(dir, "missing"), file} {
		if err := WriteFiles(d, File{"a", []byte("A"), 0o600}); err == nil {
			t.Errorf("WriteFiles(%s) succeeded", d)
		}
	}
}
