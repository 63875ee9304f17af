package softhsm

import (
	"os/exec"
	"strings"
	"testing"
)

func TestNewTokenIsInitialised(t *testing.T) {
	tok := NewToken(t)
	out, err := exec.Command("softhsm2-util", "--show-slots").CombinedOutput()
	if err != nil {
		t.Fatalf("show-slots: %v: %s", err, out)
	}
	if !strings.Contains(string(out), tok.Label) {
		t.Fatalf("token %q not listed:\n%s", tok.Label, out)
	}
}

func TestPctEncode(t *testing.T) {
	tests := []struct {
		name, in string
		query    bool
		want     string
	}{
		{"plain", "root-ca_1", false, "root-ca_1"},
		{"space-and-semicolon", "my key;x", false, "my%20key%3Bx"},
		{"slash-in-path-attr", "/a/b", false, "%2Fa%2Fb"},
		{"slash-in-query", "/usr/lib/x.so", true, "/usr/lib/x.so"},
		{"ampersand-in-query", "a&b", true, "a%26b"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := pctEncode(tt.in, tt.query); got != tt.want {
				t.Fatalf("pctEncode(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

func TestAnotherSharesConfAndPIN(t *testing.T) {
	tok := NewToken(t)
	other, err := tok.Another("second")
	if err != nil {
		t.Fatal(err)
	}
	if other.ConfPath != tok.ConfPath || other.PIN != tok.PIN || other.Label != "second" {
		t.Fatalf("unexpected token %+v", other)
	}
	out, err := exec.Command("softhsm2-util", "--show-slots").CombinedOutput()
	if err != nil {
		t.Fatalf("show-slots: %v: %s", err, out)
	}
	for _, l := range []string{tok.Label, "second"} {
		if !strings.Contains(string(out), "Label:            "+l) {
			t.Fatalf("token %q not listed:\n%s", l, out)
		}
	}
}
