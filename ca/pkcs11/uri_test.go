package pkcs11

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestParseURI(t *testing.T) {
	slot := func(n int) *int { return &n }
	tests := []struct {
		name string
		in   string
		want URI
	}{
		{"token only", "pkcs11:token=ca", URI{Token: "ca"}},
		{"scheme case", "PKCS11:token=ca", URI{Token: "ca"}},
		{"empty path", "pkcs11:", URI{}},
		{"key with query", "pkcs11:token=My%20Token;object=root;type=private?module-path=/usr/lib/x.so&pin-source=file:/run/pin",
			URI{Token: "My Token", Object: "root", Type: "private", ModulePath: "/usr/lib/x.so", PinSource: "file:/run/pin"}},
		{"id bytes", "pkcs11:id=%01%ff%00A", URI{ID: []byte{1, 0xff, 0, 'A'}}},
		{"all token attrs", "pkcs11:manufacturer=SoftHSM%20project;serial=abc;model=SoftHSM%20v2;slot-id=7;slot-description=d;slot-manufacturer=m",
			URI{Manufacturer: "SoftHSM project", Serial: "abc", Model: "SoftHSM v2", Slot: slot(7), SlotDescription: "d", SlotManufacturer: "m"}},
		{"library attrs", "pkcs11:library-manufacturer=L;library-description=D;library-version=2.6",
			URI{LibraryManufacturer: "L", LibraryDescription: "D", LibraryVersion: "2.6"}},
		{"pin value", "pkcs11:token=t?pin-value=12%2634", URI{Token: "t", PinValue: "12&34"}},
		{"module name", "pkcs11:token=t?module-name=softhsm2", URI{Token: "t", ModuleName: "softhsm2"}},
		{"env pin", "pkcs11:token=t?pin-source=env:HSM_PIN", URI{Token: "t", PinSource: "env:HSM_PIN"}},
		{"reserved chars", "pkcs11:object=a:b@c!$'()*+,=[]", URI{Object: "a:b@c!$'()*+,=[]"}},
		{"query slash", "pkcs11:token=t?module-path=/a/b?c|d", URI{Token: "t", ModulePath: "/a/b?c|d"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseURI(tt.in)
			if err != nil {
				t.Fatalf("ParseURI(%q): %v", tt.in, err)
			}
			if !reflect.DeepEqual(*got, tt.want) {
				t.Errorf("ParseURI(%q) = %+v, want %+v", tt.in, *got, tt.want)
			}
		})
	}
}

func TestParseURIErrors(t *testing.T) {
	tests := []struct {
		name, in, wantMsg string
	}{
		{"wrong scheme", "pkcs12:token=a", `must start with "pkcs11:"`},
		{"no scheme", "token=a", `must start with`},
		{"unknown path attr", "pkcs11:tokn=a", `unknown path attribute "tokn"`},
		{"vendor attr", "pkcs11:x-foo=a", `unknown path attribute "x-foo"`},
		{"unknown query attr", "pkcs11:token=a?pin=1", `unknown query attribute "pin"`},
		{"path attr in query", "pkcs11:?token=a", `unknown query attribute "token"`},
		{"query attr in path", "pkcs11:module-path=/x", `unknown path attribute "module-path"`},
		{"duplicate", "pkcs11:token=a;token=b", `"token" given more than once`},
		{"duplicate query", "pkcs11:token=a?module-path=/a&module-path=/b", `"module-path" given more than once`},
		{"bad pct", "pkcs11:object=a%zz", `bad percent-encoding at byte 1 of object`},
		{"truncated pct", "pkcs11:object=a%2", `bad percent-encoding`},
		{"space", "pkcs11:token=My Token", `character ' ' at byte 2 of token must be percent-encoded`},
		{"slash in path", "pkcs11:object=a/b", `character '/' at byte 1 of object`},
		{"no equals", "pkcs11:token", `path attribute "token" has no '='`},
		{"empty value", "pkcs11:token=", `"token" has an empty value`},
		{"stray semicolon", "pkcs11:token=a;", `empty path attribute`},
		{"empty query", "pkcs11:token=a?", `empty query`},
		{"bad type", "pkcs11:type=secret", `type "secret" is not one of`},
		{"bad slot", "pkcs11:slot-id=-1", `slot-id "-1" is not a decimal number`},
		{"huge slot", "pkcs11:slot-id=99999999999999999999", `slot-id "99999999999999999999" out of range`},
		{"bad version", "pkcs11:library-version=1.x", `library-version "1.x"`},
		{"pin twice", "pkcs11:token=a?pin-value=1&pin-source=file:/p", `both pin-source and pin-value`},
		{"fragment", "pkcs11:token=a#b", `character '#'`},
		{"too long", "pkcs11:object=" + strings.Repeat("a", maxURILen), `longer than`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u, err := ParseURI(tt.in)
			if err == nil {
				t.Fatalf("ParseURI(%q) = %v, want error", tt.in, u)
			}
			if !errors.Is(err, ErrInvalidURI) {
				t.Errorf("error %v does not wrap ErrInvalidURI", err)
			}
			if !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("error %q does not contain %q", err, tt.wantMsg)
			}
		})
	}
}

func TestParseURIErrorHidesPIN(t *testing.T) {
	for _, in := range []string{
		"pkcs11:token=a?pin-value=s3cr3t%zz",
		"pkcs11:token=a?pin-value=s3cr3t#x",
	} {
		_, err := ParseURI(in)
		if err == nil {
			t.Fatalf("ParseURI(%q): no error", in)
		}
		if strings.Contains(err.Error(), "s3cr3t") {
			t.Errorf("error %q leaks the PIN", err)
		}
	}
}

func TestURIStringRoundTrip(t *testing.T) {
	for _, in := range []string{
		"pkcs11:token=My%20Token;object=root;type=private;id=%01%02?module-path=/usr/lib/x.so&pin-source=file:/run/pin",
		"pkcs11:token=a;manufacturer=m;serial=s;model=mo;library-manufacturer=lm;library-description=ld;library-version=1.2;slot-description=sd;slot-manufacturer=sm;slot-id=3;object=%C3%A9t%C3%A9;type=cert?module-name=mod&module-path=/p&pin-source=env:X",
		"pkcs11:",
		"pkcs11:object=%3B%3F%26%25",
	} {
		u, err := ParseURI(in)
		if err != nil {
			t.Fatalf("ParseURI(%q): %v", in, err)
		}
		s := u.String()
		if s != in {
			t.Errorf("String() = %q, want canonical %q", s, in)
		}
		again, err := ParseURI(s)
		if err != nil {
			t.Fatalf("reparse %q: %v", s, err)
		}
		if again.String() != s {
			t.Errorf("not stable: %q -> %q", s, again.String())
		}
	}
}

func TestURIStringRedactsPIN(t *testing.T) {
	u, err := ParseURI("pkcs11:token=a;object=k?pin-value=hunter2")
	if err != nil {
		t.Fatal(err)
	}
	if u.PinValue != "hunter2" {
		t.Fatalf("PinValue = %q", u.PinValue)
	}
	for _, s := range []string{u.String(), fmt.Sprint(u), fmt.Sprintf("%v %s %#v", u, u, u)} {
		if strings.Contains(s, "hunter2") || strings.Contains(s, "pin-value") {
			t.Errorf("%q leaks the PIN", s)
		}
	}
	if got, want := u.String(), "pkcs11:token=a;object=k"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
}

func TestURIPIN(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	nl := write("nl", "1234\n")
	crlf := write("crlf", "1234\r\n")
	bare := write("bare", "1234")
	empty := write("empty", "")
	multi := write("multi", "1234\n5678\n")
	big := write("big", strings.Repeat("1", maxPINFile+1))
	t.Setenv("PALISADE_TEST_PIN", "9876")
	t.Setenv("PALISADE_TEST_EMPTY", "")
	tests := []struct {
		name, source, value string
		want                string
		wantErr             string
	}{
		{"file newline", "file:" + nl, "", "1234", ""},
		{"file crlf", "file:" + crlf, "", "1234", ""},
		{"file bare", "file:" + bare, "", "1234", ""},
		{"file triple slash", "file://" + bare, "", "1234", ""},
		{"file localhost", "file://localhost" + bare, "", "1234", ""},
		{"absolute path", bare, "", "1234", ""},
		{"env", "env:PALISADE_TEST_PIN", "", "9876", ""},
		{"value", "", "abcd", "abcd", ""},
		{"none", "", "", "", "neither pin-source nor pin-value"},
		{"missing file", "file:" + filepath.Join(dir, "nope"), "", "", "no such file"},
		{"empty file", "file:" + empty, "", "", "empty PIN"},
		{"multi line", "file:" + multi, "", "", "more than one line"},
		{"too big", "file:" + big, "", "", "larger than"},
		{"relative", "file:pin", "", "", "not an absolute path"},
		{"remote host", "file://host/pin", "", "", "remote host"},
		{"unset env", "env:PALISADE_TEST_UNSET_XYZ", "", "", `"PALISADE_TEST_UNSET_XYZ" is not set`},
		{"empty env", "env:PALISADE_TEST_EMPTY", "", "", "empty PIN"},
		{"bad scheme", "https://x/pin", "", "", "want file:/path"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u := &URI{Token: "t", PinSource: tt.source, PinValue: tt.value}
			got, err := u.PIN()
			if tt.wantErr != "" {
				if err == nil || !errors.Is(err, ErrPIN) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("PIN() = %q, %v; want ErrPIN containing %q", got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("PIN() = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

func TestParseAlgorithm(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want Algorithm
		ok   bool
	}{
		{"ecdsa-p256", ECDSAP256, true},
		{"ecdsa-p384", ECDSAP384, true},
		{"rsa-2048", 0, false},
		{"", 0, false},
		{"ECDSA-P256", 0, false},
	} {
		got, err := ParseAlgorithm(tt.in)
		if (err == nil) != tt.ok || tt.ok && got != tt.want {
			t.Errorf("ParseAlgorithm(%q) = %v, %v", tt.in, got, err)
		}
		if tt.ok && got.String() != tt.in {
			t.Errorf("%v.String() = %q, want %q", got, got.String(), tt.in)
		}
	}
}

func FuzzParseURI(f *testing.F) {
	for _, s := range []string{
		"pkcs11:token=My%20Token;object=root;type=private;id=%01%02?module-path=/usr/lib/x.so&pin-source=file:/run/pin",
		"pkcs11:slot-id=3;library-version=1.2",
		"pkcs11:token=a?pin-value=x",
		"pkcs11:object=%zz",
		"pkcs11:;;",
		"pkcs11:?&",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		u, err := ParseURI(s)
		if err != nil {
			if !errors.Is(err, ErrInvalidURI) {
				t.Fatalf("error %v does not wrap ErrInvalidURI", err)
			}
			return
		}
		out := u.String()
		again, err := ParseURI(out)
		if err != nil {
			t.Fatalf("String() %q of parsed %q does not parse: %v", out, s, err)
		}
		if again.String() != out {
			t.Fatalf("not canonical: %q -> %q", out, again.String())
		}
		if u.PinValue != "" && strings.Contains(out, "pin-value") {
			t.Fatalf("String() %q shows pin-value", out)
		}
		if !bytes.Equal(again.ID, u.ID) || again.Object != u.Object || again.Token != u.Token {
			t.Fatalf("round trip changed attributes: %q -> %q", s, out)
		}
	})
}
