package pkcs11

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"

	"github.com/ThalesIgnite/crypto11"
	p11 "github.com/miekg/pkcs11"
)

// Data objects hold small values whose integrity matters more than their
// secrecy (the audit log's anchor): CKO_DATA, CKA_TOKEN and CKA_PRIVATE, so
// only a session logged in with the user PIN can see, create or delete
// them. Lookups ask for CKA_PRIVATE=true: a public object with the same
// label, which a token lets anyone create without the PIN, is never read.
//
// Tokens may refuse to change CKA_VALUE once an object exists (SoftHSM2
// does), so SetData creates a new object and then destroys the old ones.
// CKA_APPLICATION carries a generation ("palisade-gen=N") so that a crash
// between the two steps leaves the newer value readable, not an ambiguity.

// ErrDataNotFound: no private data object with that label on the token.
var ErrDataNotFound = errors.New("pkcs11: data object not found")

const genPrefix = "palisade-gen="

// dataMu makes "find, create, destroy" atomic for all Tokens of this
// process, as genMu does for keys.
var dataMu sync.Mutex

// Data returns the value of the private token data object labelled label
// (the newest, should an interrupted SetData have left two).
// ErrDataNotFound if there is none.
func (t *Token) Data(label string) ([]byte, error) {
	if err := validLabel(label); err != nil {
		return nil, err
	}
	var value []byte
	err := t.withSession(func(sh p11.SessionHandle) error {
		objs, err := t.findData(sh, label)
		if err != nil {
			return err
		}
		if len(objs) == 0 {
			return ErrDataNotFound
		}
		newest := objs[0]
		for _, o := range objs[1:] {
			if o.gen > newest.gen {
				newest = o
			}
		}
		attrs, err := t.raw.GetAttributeValue(sh, newest.h, []*p11.Attribute{p11.NewAttribute(p11.CKA_VALUE, nil)})
		if err != nil {
			return fmt.Errorf("C_GetAttributeValue: %w", err)
		}
		value = attrs[0].Value
		return nil
	})
	if err != nil {
		return nil, t.wrap(fmt.Sprintf("read data object %q", label), err, false)
	}
	return value, nil
}

// SetData stores value in a new private token data object labelled label
// and then destroys the objects it replaces. If the second step fails, the
// new value is stored (Data returns it) and the error says what is left.
func (t *Token) SetData(label string, value []byte) error {
	if err := validLabel(label); err != nil {
		return err
	}
	dataMu.Lock()
	defer dataMu.Unlock()
	err := t.withSession(func(sh p11.SessionHandle) error {
		old, err := t.findData(sh, label)
		if err != nil {
			return err
		}
		var gen uint64
		for _, o := range old {
			gen = max(gen, o.gen)
		}
		_, err = t.raw.CreateObject(sh, append(dataTemplate(label),
			p11.NewAttribute(p11.CKA_APPLICATION, genPrefix+strconv.FormatUint(gen+1, 10)),
			p11.NewAttribute(p11.CKA_VALUE, value)))
		if err != nil {
			return fmt.Errorf("C_CreateObject: %w", err)
		}
		for _, o := range old {
			if err := t.raw.DestroyObject(sh, o.h); err != nil {
				return fmt.Errorf("new value stored, but C_DestroyObject on the one it replaces: %w", err)
			}
		}
		return nil
	})
	if err != nil {
		return t.wrap(fmt.Sprintf("write data object %q", label), err, false)
	}
	return nil
}

func dataTemplate(label string) []*p11.Attribute {
	return []*p11.Attribute{
		p11.NewAttribute(p11.CKA_CLASS, p11.CKO_DATA),
		p11.NewAttribute(p11.CKA_TOKEN, true),
		p11.NewAttribute(p11.CKA_PRIVATE, true),
		p11.NewAttribute(p11.CKA_LABEL, label),
	}
}

type dataObj struct {
	h   p11.ObjectHandle
	gen uint64 // 0 when CKA_APPLICATION carries none
}

func (t *Token) findData(sh p11.SessionHandle, label string) ([]dataObj, error) {
	if err := t.raw.FindObjectsInit(sh, dataTemplate(label)); err != nil {
		return nil, fmt.Errorf("C_FindObjectsInit: %w", err)
	}
	var hs []p11.ObjectHandle
	for {
		batch, _, err := t.raw.FindObjects(sh, 16)
		if err != nil {
			_ = t.raw.FindObjectsFinal(sh)
			return nil, fmt.Errorf("C_FindObjects: %w", err)
		}
		if len(batch) == 0 {
			break
		}
		hs = append(hs, batch...)
	}
	if err := t.raw.FindObjectsFinal(sh); err != nil {
		return nil, fmt.Errorf("C_FindObjectsFinal: %w", err)
	}
	out := make([]dataObj, len(hs))
	for i, h := range hs {
		out[i].h = h
		attrs, err := t.raw.GetAttributeValue(sh, h, []*p11.Attribute{p11.NewAttribute(p11.CKA_APPLICATION, nil)})
		if err != nil {
			return nil, fmt.Errorf("C_GetAttributeValue: %w", err)
		}
		if s, ok := strings.CutPrefix(string(attrs[0].Value), genPrefix); ok {
			out[i].gen, _ = strconv.ParseUint(s, 10, 64)
		}
	}
	return out, nil
}

// withSession runs f in a read-write session of its own on the token's
// slot. The session shares the login of crypto11's persistent session
// (PKCS#11 login state is per application and token); holding the Context
// keeps that session, and so the login, alive meanwhile.
func (t *Token) withSession(f func(sh p11.SessionHandle) error) error {
	return t.withCtx(func(_ *crypto11.Context, _ uint64) error {
		sh, err := t.raw.OpenSession(t.found.slot, p11.CKF_SERIAL_SESSION|p11.CKF_RW_SESSION)
		if err != nil {
			return fmt.Errorf("C_OpenSession: %w", err)
		}
		defer t.raw.CloseSession(sh)
		return f(sh)
	})
}
