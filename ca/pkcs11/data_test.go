package pkcs11

import (
	"bytes"
	"context"
	"errors"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	p11 "github.com/miekg/pkcs11"

	"github.com/palisade-id/palisade/ca/audit"
	"github.com/palisade-id/palisade/test/testenv"
)

func TestDataRoundTrip(t *testing.T) {
	tok := openToken(t)
	label := uniqueLabel("data")
	if _, err := tok.Data(label); !errors.Is(err, ErrDataNotFound) {
		t.Fatalf("Data before SetData: %v, want ErrDataNotFound", err)
	}
	for _, v := range [][]byte{[]byte("one"), []byte("a longer second value"), {}} {
		if err := tok.SetData(label, v); err != nil {
			t.Fatal(err)
		}
		got, err := tok.Data(label)
		if err != nil || !bytes.Equal(got, v) {
			t.Fatalf("Data = %q, %v; want %q", got, err, v)
		}
	}
	if err := tok.SetData("", []byte("x")); err == nil {
		t.Fatal("SetData accepted an empty label")
	}

	// Another Token (the same login) and a Reopen see the stored value.
	if err := tok.SetData(label, []byte("kept")); err != nil {
		t.Fatal(err)
	}
	if err := tok.Reopen(); err != nil {
		t.Fatal(err)
	}
	other := openToken(t)
	for _, tk := range []*Token{tok, other} {
		if got, err := tk.Data(label); err != nil || string(got) != "kept" {
			t.Fatalf("Data after Reopen / from another Token = %q, %v", got, err)
		}
	}
}

// TestDataInterruptedUpdate: a crash between SetData's create and destroy
// leaves two objects; the newer one is read and the next SetData removes
// both.
func TestDataInterruptedUpdate(t *testing.T) {
	tok := openToken(t)
	label := uniqueLabel("interrupted")
	err := tok.withSession(func(sh p11.SessionHandle) error {
		for _, v := range []string{"7:newer", "5:older"} {
			gen, val, _ := strings.Cut(v, ":")
			if _, err := tok.raw.CreateObject(sh, append(dataTemplate(label),
				p11.NewAttribute(p11.CKA_APPLICATION, genPrefix+gen), p11.NewAttribute(p11.CKA_VALUE, []byte(val)))); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := tok.Data(label); err != nil || string(got) != "newer" {
		t.Fatalf("Data = %q, %v; want the newer value", got, err)
	}
	if err := tok.SetData(label, []byte("next")); err != nil {
		t.Fatal(err)
	}
	err = tok.withSession(func(sh p11.SessionHandle) error {
		objs, err := tok.findData(sh, label)
		if err != nil || len(objs) != 1 || objs[0].gen != 8 {
			t.Fatalf("after SetData: %+v, %v; want one object of generation 8", objs, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestDataIsPrivateTokenObject: the object needs the PIN to be seen or
// changed, and a public look-alike (which a token lets anyone create
// without the PIN) is never read.
func TestDataIsPrivateTokenObject(t *testing.T) {
	tok := openToken(t)
	label := uniqueLabel("private")
	if err := tok.SetData(label, []byte("genuine")); err != nil {
		t.Fatal(err)
	}
	err := tok.withSession(func(sh p11.SessionHandle) error {
		objs, err := tok.findData(sh, label)
		if err != nil || len(objs) != 1 {
			t.Fatalf("findData: %d objects, %v", len(objs), err)
		}
		attrs, err := tok.raw.GetAttributeValue(sh, objs[0].h, []*p11.Attribute{
			p11.NewAttribute(p11.CKA_TOKEN, nil), p11.NewAttribute(p11.CKA_PRIVATE, nil),
		})
		if err != nil {
			return err
		}
		for _, a := range attrs {
			if len(a.Value) != 1 || a.Value[0] != 1 {
				t.Errorf("attribute %#x = %v, want true", a.Type, a.Value)
			}
		}
		_, err = tok.raw.CreateObject(sh, []*p11.Attribute{
			p11.NewAttribute(p11.CKA_CLASS, p11.CKO_DATA), p11.NewAttribute(p11.CKA_TOKEN, true),
			p11.NewAttribute(p11.CKA_PRIVATE, false), p11.NewAttribute(p11.CKA_LABEL, label),
			p11.NewAttribute(p11.CKA_APPLICATION, genPrefix+"99"), p11.NewAttribute(p11.CKA_VALUE, []byte("forged")),
		})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := tok.Data(label); err != nil || string(got) != "genuine" {
		t.Fatalf("Data with a public look-alike present = %q, %v; want the private object", got, err)
	}

	// Another process without the PIN does not see it.
	testenv.Require(t, "pkcs11-tool")
	list, err := exec.Command("pkcs11-tool", "--module", hsm.Module, "--token-label", hsm.Label,
		"--list-objects", "--type", "data").CombinedOutput()
	if err != nil {
		t.Fatalf("pkcs11-tool --list-objects: %v: %s", err, list)
	}
	if strings.Contains(string(list), genPrefix+"1'") || strings.Count(string(list), "'"+label+"'") != 1 {
		t.Fatalf("listing without login shows the private object or misses the public one:\n%s", list)
	}
}

// BenchmarkSetData measures one update of an existing data object: what an
// audit checkpoint adds to anchor itself in the token.
func BenchmarkSetData(b *testing.B) {
	tok := openToken(b)
	label := uniqueLabel("bench-data")
	v := []byte(`{"v":"palisade-audit-anchor-v1","seq":123456,"hash":"` + strings.Repeat("ab", 32) + `"}`)
	if err := tok.SetData(label, v); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := tok.SetData(label, v); err != nil {
			b.Fatal(err)
		}
	}
}

// tokenAnchor is the appliance's audit.AnchorStore on a Token.
type tokenAnchor struct {
	t     *Token
	label string
}

func (a tokenAnchor) LoadAnchor() ([]byte, error) {
	v, err := a.t.Data(a.label)
	if errors.Is(err, ErrDataNotFound) {
		return nil, nil
	}
	return v, err
}

func (a tokenAnchor) StoreAnchor(v []byte) error { return a.t.SetData(a.label, v) }

// BenchmarkAuditCheckpoint measures a whole audit checkpoint (HSM
// signature and fsync) without and with its anchor update in the token.
func BenchmarkAuditCheckpoint(b *testing.B) {
	tok := openToken(b)
	s, _ := newSigner(b, tok, "bench-audit")
	for _, anchored := range []bool{false, true} {
		name := "anchor=none"
		if anchored {
			name = "anchor=hsm"
		}
		b.Run(name, func(b *testing.B) {
			var opts audit.Options
			if anchored { // a fresh anchor per log: b.Run calls this once per b.N
				opts.Anchor = tokenAnchor{tok, uniqueLabel("bench-anchor")}
			}
			l, err := audit.Open(filepath.Join(b.TempDir(), "audit.log"), s, opts)
			if err != nil {
				b.Fatal(err)
			}
			defer l.Close()
			ctx := context.Background()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := l.Checkpoint(ctx); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
