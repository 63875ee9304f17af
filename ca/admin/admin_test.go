package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/palisade-id/palisade/ca"
	"github.com/palisade-id/palisade/ca/store"
	"github.com/palisade-id/palisade/test/memca"
	"github.com/palisade-id/palisade/test/testca"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

const td = "example.org"

// records lists rec's records as "kind actor".
func records(rec *memca.Recorder) []string {
	var out []string
	for _, r := range rec.Snapshot() {
		out = append(out, r.Kind+" "+r.Actor)
	}
	return out
}

// serve listens on a fresh socket with m and returns a client for it.
func serve(t *testing.T, m *Mux) (*Client, string) {
	t.Helper()
	// Socket paths must stay under 108 bytes; t.TempDir() may be longer.
	dir, err := os.MkdirTemp("", "admin")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "admin.sock")
	srv, err := Listen(path, m, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve() }()
	t.Cleanup(func() {
		srv.Shutdown(context.Background())
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return NewClient(path), path
}

// raw sends body as-is and returns the status and error message.
func raw(t *testing.T, path, method, route string, body []byte) (int, string) {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}}}
	req, err := http.NewRequest(method, "http://palisade"+route, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var eb errorBody
	if json.Unmarshal(b, &eb) == nil && eb.Error != "" {
		return resp.StatusCode, eb.Error
	}
	return resp.StatusCode, string(b)
}

type echoReq struct {
	Name string `json:"name"`
}

func TestHandleDecodesStrictly(t *testing.T) {
	m := NewMux()
	var got Operator
	Handle(m, "POST /v1/echo", func(_ context.Context, op Operator, _ *http.Request, req *echoReq) (echoReq, error) {
		got = op
		return *req, nil
	})
	_, path := serve(t, m)
	tests := []struct {
		name   string
		body   string
		status int
		errHas string
	}{
		{name: "valid", body: `{"name":"a"}`, status: http.StatusOK},
		{name: "empty body", body: ``, status: http.StatusOK},
		{name: "unknown field", body: `{"name":"a","nmae":"b"}`, status: http.StatusBadRequest, errHas: `unknown field "nmae"`},
		{name: "malformed", body: `{"name":`, status: http.StatusBadRequest, errHas: "request body"},
		{name: "wrong type", body: `{"name":1}`, status: http.StatusBadRequest, errHas: "name"},
		{name: "trailing data", body: `{"name":"a"} {"name":"b"}`, status: http.StatusBadRequest, errHas: "after the JSON object"},
		{name: "oversized", body: `{"name":"` + strings.Repeat("x", MaxRequestBody) + `"}`, status: http.StatusRequestEntityTooLarge, errHas: "too large"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, msg := raw(t, path, "POST", "/v1/echo", []byte(tt.body))
			if status != tt.status || !strings.Contains(msg, tt.errHas) {
				t.Fatalf("status %d %q, want %d containing %q", status, msg, tt.status, tt.errHas)
			}
		})
	}
	// The operator is the peer process, from the kernel, not from anything
	// the request says.
	if got.UID != os.Getuid() || got.PID != os.Getpid() {
		t.Fatalf("operator %+v, want uid %d pid %d", got, os.Getuid(), os.Getpid())
	}
}

var errMapped = errors.New("mapped")

func TestErrorStatus(t *testing.T) {
	m := NewMux()
	m.MapError(errMapped, http.StatusConflict)
	Handle(m, "GET /v1/fail/{how}", func(_ context.Context, _ Operator, r *http.Request, _ *Empty) (Empty, error) {
		switch r.PathValue("how") {
		case "mapped":
			return Empty{}, fmt.Errorf("wrapped: %w", errMapped)
		case "status":
			return Empty{}, WithStatus(http.StatusTeapot, errors.New("explicit"))
		default:
			return Empty{}, errors.New("unexpected")
		}
	})
	c, _ := serve(t, m)
	for how, want := range map[string]int{"mapped": http.StatusConflict, "status": http.StatusTeapot, "other": http.StatusInternalServerError} {
		err := c.Do(context.Background(), "GET", "/v1/fail/"+how, nil, nil)
		var ae *APIError
		if !errors.As(err, &ae) || ae.Status != want {
			t.Errorf("%s: %v, want status %d", how, err, want)
		}
	}
}

func TestListenSocket(t *testing.T) {
	m := NewMux()
	Handle(m, "GET /v1/ping", func(context.Context, Operator, *http.Request, *Empty) (Empty, error) { return Empty{}, nil })
	c, path := serve(t, m)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Errorf("socket mode %o, want 600: only the server's account may administer it", perm)
	}
	if _, err := Listen(path, m, slog.New(slog.DiscardHandler)); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Errorf("second Listen on a live socket: %v, want refusal", err)
	}
	if err := c.Do(context.Background(), "GET", "/v1/ping", nil, nil); err != nil {
		t.Fatalf("first server stopped answering: %v", err)
	}

	// A socket file left by a killed server is replaced.
	stale := filepath.Join(filepath.Dir(path), "stale.sock")
	ln, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	srv, err := Listen(stale, m, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("stale socket: %v", err)
	}
	srv.Shutdown(context.Background())
}

func csrPEM(t *testing.T, id string) string {
	t.Helper()
	der, _ := testca.CSR(t, id)
	return DecodePEMCSR(der)
}

func TestCARoutes(t *testing.T) {
	rec := &memca.Recorder{}
	f := memca.New(t, td, rec, nil)
	c, st := f.CA, f.Store
	m := NewMux()
	(&CARoutes{CA: c, Store: st, Audit: rec}).Register(m)
	cl, _ := serve(t, m)
	ctx := context.Background()
	do := func(method, route string, req, resp any) (int, string) {
		err := cl.Do(ctx, method, route, req, resp)
		var ae *APIError
		switch {
		case err == nil:
			return http.StatusOK, ""
		case errors.As(err, &ae):
			return ae.Status, ae.Message
		default:
			t.Fatal(err)
			return 0, ""
		}
	}
	var created Entry
	if status, msg := do("POST", "/v1/entries", Entry{SPIFFEID: "spiffe://example.org/web", ParentID: "spiffe://example.org/node/1",
		Selectors: []string{"unix:uid:1000"}, X509TTL: "30m"}, &created); status != http.StatusOK {
		t.Fatalf("create entry: %d %s", status, msg)
	}
	if created.ID == "" || created.X509TTL != "30m0s" || len(created.Selectors) != 1 {
		t.Fatalf("created entry %+v", created)
	}

	operatorActor := Operator{UID: os.Getuid(), PID: os.Getpid()}.String()
	bad := []struct {
		name         string
		method, path string
		req          any
		status       int
		errHas       string
	}{
		{"foreign trust domain", "POST", "/v1/entries", Entry{SPIFFEID: "spiffe://other.org/web", ParentID: "spiffe://example.org/n"}, http.StatusBadRequest, "other.org"},
		{"not a SPIFFE ID", "POST", "/v1/entries", Entry{SPIFFEID: "https://example.org/web", ParentID: "spiffe://example.org/n"}, http.StatusBadRequest, "spiffe_id"},
		{"trust domain as workload", "POST", "/v1/entries", Entry{SPIFFEID: "spiffe://example.org", ParentID: "spiffe://example.org/n", Selectors: []string{"unix:uid:1"}}, http.StatusBadRequest, "names the trust domain"},
		{"selector without value", "POST", "/v1/entries", Entry{SPIFFEID: "spiffe://example.org/w", ParentID: "spiffe://example.org/n", Selectors: []string{"unix"}}, http.StatusBadRequest, "type:value"},
		{"TTL over the cap", "POST", "/v1/entries", Entry{SPIFFEID: "spiffe://example.org/w", ParentID: "spiffe://example.org/n", X509TTL: "9999h"}, http.StatusBadRequest, "x509_svid_ttl"},
		{"negative TTL", "POST", "/v1/entries", Entry{SPIFFEID: "spiffe://example.org/w", ParentID: "spiffe://example.org/n", JWTTTL: "-1m"}, http.StatusBadRequest, "jwt_svid_ttl"},
		{"no selectors", "POST", "/v1/entries", Entry{SPIFFEID: "spiffe://example.org/w", ParentID: "spiffe://example.org/n"}, http.StatusBadRequest, "no selectors"},
		{"entry exists", "POST", "/v1/entries", Entry{SPIFFEID: "spiffe://example.org/web", ParentID: "spiffe://example.org/node/1", Selectors: []string{"unix:uid:1000", "unix:uid:1000"}}, http.StatusConflict, created.ID},
		{"unknown entry", "GET", "/v1/entries/nope", nil, http.StatusNotFound, "nope"},
		{"delete unknown entry", "DELETE", "/v1/entries/nope", nil, http.StatusNotFound, "nope"},
		{"CSR not PEM or DER", "POST", "/v1/x509/mint", MintX509Request{CSRPEM: "garbage"}, http.StatusBadRequest, "CSR"},
		{"CSR for another ID", "POST", "/v1/x509/mint", MintX509Request{SPIFFEID: "spiffe://example.org/a", CSRPEM: csrPEM(t, "spiffe://example.org/b")}, http.StatusBadRequest, "spiffe://example.org/a"},
		{"CSR in a foreign domain", "POST", "/v1/x509/mint", MintX509Request{CSRPEM: csrPEM(t, "spiffe://other.org/b")}, http.StatusBadRequest, "other.org"},
		{"mint TTL over the cap", "POST", "/v1/x509/mint", MintX509Request{CSRPEM: csrPEM(t, "spiffe://example.org/b"), TTL: "9999h"}, http.StatusBadRequest, "9999h"},
		{"JWT without audience", "POST", "/v1/jwt/mint", MintJWTRequest{SPIFFEID: "spiffe://example.org/b"}, http.StatusBadRequest, "audience"},
	}
	before := len(records(rec))
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			status, msg := do(tt.method, tt.path, tt.req, nil)
			if status != tt.status || !strings.Contains(msg, tt.errHas) {
				t.Fatalf("%d %q, want %d naming %q", status, msg, tt.status, tt.errHas)
			}
		})
	}
	if got := records(rec); len(got) != before {
		t.Fatalf("refused requests were audited as changes: %v", got[before:])
	}
	if st, err := st.Stats(); err != nil || st.Certs != 0 || st.Entries != 1 {
		t.Fatalf("refused requests changed the store: %+v %v", st, err)
	}

	var minted MintX509Response
	if status, msg := do("POST", "/v1/x509/mint", MintX509Request{SPIFFEID: "spiffe://example.org/web", CSRPEM: csrPEM(t, "spiffe://example.org/web")}, &minted); status != http.StatusOK {
		t.Fatalf("mint: %d %s", status, msg)
	}
	chain, err := ca.ParseCertsPEM([]byte(minted.ChainPEM))
	if err != nil {
		t.Fatal(err)
	}
	id, _, err := x509svid.Verify(chain, c.Bundle())
	if err != nil || id != spiffeid.RequireFromString("spiffe://example.org/web") {
		t.Fatalf("minted SVID: %v %v", id, err)
	}
	if status, msg := do("DELETE", "/v1/entries/"+created.ID, nil, nil); status != http.StatusOK {
		t.Fatalf("delete: %d %s", status, msg)
	}
	want := []string{"entry.created " + operatorActor, store.KindX509SVID + ".issued " + operatorActor, "entry.deleted " + operatorActor}
	got := records(rec)[before-1:]
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("audit records:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// faultyEntries fails entry writes whose error is set, before anything is
// written.
type faultyEntries struct {
	*store.Store
	createErr, deleteErr error
}

func (s *faultyEntries) CreateEntry(e store.Entry) (store.Entry, error) {
	if s.createErr != nil {
		return store.Entry{}, s.createErr
	}
	return s.Store.CreateEntry(e)
}

func (s *faultyEntries) DeleteEntry(id string) (store.Entry, error) {
	if s.deleteErr != nil {
		return store.Entry{}, s.deleteErr
	}
	return s.Store.DeleteEntry(id)
}

// An entry change the audit log cannot record does not happen, and one the
// store refuses after its record leaves a record of the attempt: never a
// change without a record. The retry records the change exactly once.
func TestCARoutesAuditBeforeChange(t *testing.T) {
	errDisk := errors.New("no space left on device")
	valid := Entry{SPIFFEID: "spiffe://example.org/x", ParentID: "spiffe://example.org/n", Selectors: []string{"unix:uid:7"}}
	for _, tt := range []struct {
		name     string
		delete   bool // refuse the deletion of an existing entry, else the creation
		audit    bool // fail the audit sink, else the store
		kind     string
		attempts int // records of kind the refused change leaves
	}{
		{name: "create, audit fails", audit: true, kind: "entry.created"},
		{name: "create, store fails", kind: "entry.created", attempts: 1},
		{name: "delete, audit fails", delete: true, audit: true, kind: "entry.deleted"},
		{name: "delete, store fails", delete: true, kind: "entry.deleted", attempts: 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			rec := &memca.Recorder{}
			f := memca.New(t, td, rec, nil)
			st := &faultyEntries{Store: f.Store}
			m := NewMux()
			(&CARoutes{CA: f.CA, Store: st, Audit: rec}).Register(m)
			cl, _ := serve(t, m)
			ctx := context.Background()
			var body any = valid
			method, route := "POST", "/v1/entries"
			if tt.delete {
				var e Entry
				if err := cl.Do(ctx, "POST", "/v1/entries", valid, &e); err != nil {
					t.Fatal(err)
				}
				body, method, route = nil, "DELETE", "/v1/entries/"+e.ID
			}
			entries := func() []store.Entry {
				t.Helper()
				es, err := f.Store.ListEntries(store.EntryFilter{})
				if err != nil {
					t.Fatal(err)
				}
				return es
			}
			before := entries()

			switch {
			case tt.audit:
				rec.Fail(errDisk)
			case tt.delete:
				st.deleteErr = errDisk
			default:
				st.createErr = errDisk
			}
			var ae *APIError
			if err := cl.Do(ctx, method, route, body, nil); !errors.As(err, &ae) || ae.Status != http.StatusInternalServerError {
				t.Fatalf("refused change: %v, want status 500", err)
			}
			if got := entries(); !reflect.DeepEqual(got, before) {
				t.Fatalf("store after the refused change: %+v, want %+v", got, before)
			}
			if n := rec.Count(tt.kind); n != tt.attempts {
				t.Fatalf("%d %s records after the refused change, want %d", n, tt.kind, tt.attempts)
			}

			rec.Fail(nil)
			st.createErr, st.deleteErr = nil, nil
			var out Entry
			if err := cl.Do(ctx, method, route, body, &out); err != nil {
				t.Fatalf("retry after the fault was removed: %v", err)
			}
			recs := rec.OfKind(tt.kind)
			if len(recs) != tt.attempts+1 {
				t.Fatalf("%d %s records after the retry, want exactly one more than %d", len(recs), tt.kind, tt.attempts)
			}
			if got := recs[len(recs)-1].Data; !reflect.DeepEqual(got, out) {
				t.Fatalf("%s record %+v, want the entry as answered %+v", tt.kind, got, out)
			}
			if got := entries(); len(got) == len(before) {
				t.Fatalf("retry left the store unchanged: %+v", got)
			}
		})
	}
}

// A request that did not come over the unix socket has no operator the audit
// log could name, so it is refused before its handler runs.
func TestHandleRefusesUnknownCaller(t *testing.T) {
	m := NewMux()
	ran := false
	Handle(m, "POST /v1/echo", func(context.Context, Operator, *http.Request, *echoReq) (echoReq, error) {
		ran = true
		return echoReq{}, nil
	})
	srv := httptest.NewServer(m)
	defer srv.Close()
	resp, err := http.Post(srv.URL+"/v1/echo", "application/json", strings.NewReader(`{"name":"a"}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden || ran {
		t.Fatalf("status %d, handler ran: %v; want 403 and no call", resp.StatusCode, ran)
	}
}
