package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// MaxRequestBody bounds an admin request; the largest legitimate one is a
// CSR or a manifest of EK certificates.
const MaxRequestBody = 4 << 20

// Operator is the local account behind an admin request.
type Operator struct {
	UID, GID, PID int
}

// String is the audit log's actor name.
func (o Operator) String() string {
	return "operator:uid=" + strconv.Itoa(o.UID) + ",pid=" + strconv.Itoa(o.PID)
}

type ctxKey struct{}

// OperatorFrom returns the operator of an admin request.
func OperatorFrom(ctx context.Context) (Operator, bool) {
	op, ok := ctx.Value(ctxKey{}).(Operator)
	return op, ok
}

// StatusError carries an HTTP status chosen by a handler.
type StatusError struct {
	Status int
	Err    error
}

func (e *StatusError) Error() string { return e.Err.Error() }
func (e *StatusError) Unwrap() error { return e.Err }

// WithStatus attaches status to err.
func WithStatus(status int, err error) error { return &StatusError{Status: status, Err: err} }

// Mux routes admin requests.
type Mux struct {
	mux    *http.ServeMux
	errMap []errStatus
}

type errStatus struct {
	err    error
	status int
}

// NewMux returns an empty Mux.
func NewMux() *Mux { return &Mux{mux: http.NewServeMux()} }

// MapError makes handlers' errors matching target (errors.Is) answer with
// status. Unmapped errors answer 500.
func (m *Mux) MapError(target error, status int) {
	m.errMap = append(m.errMap, errStatus{target, status})
}

// ServeHTTP implements http.Handler.
func (m *Mux) ServeHTTP(w http.ResponseWriter, r *http.Request) { m.mux.ServeHTTP(w, r) }

// Empty is the request type of handlers that take no body.
type Empty struct{}

// Handle registers fn for pattern (Go ServeMux syntax, e.g. "POST /v1/entries").
// The request body (if any) decodes strictly into Req; fn's result is sent as
// JSON.
func Handle[Req, Resp any](m *Mux, pattern string, fn func(ctx context.Context, op Operator, r *http.Request, req *Req) (Resp, error)) {
	m.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		op, ok := OperatorFrom(r.Context())
		if !ok {
			// Every change is audited under the peer's uid: without the
			// kernel's word for it there is no one to attribute it to.
			writeError(w, http.StatusForbidden, errors.New("admin: the caller's credentials are unknown"))
			return
		}
		req := new(Req)
		if r.Body != nil && r.ContentLength != 0 {
			if err := decodeStrict(r.Body, req); err != nil {
				status := http.StatusBadRequest
				if _, tooLarge := errors.AsType[*http.MaxBytesError](err); tooLarge {
					status = http.StatusRequestEntityTooLarge
				}
				writeError(w, status, fmt.Errorf("admin: request body: %w", err))
				return
			}
		}
		resp, err := fn(r.Context(), op, r, req)
		if err != nil {
			writeError(w, m.status(err), err)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(resp)
	})
}

// decodeStrict reads one JSON value into v: unknown fields and anything
// after the value are errors, so a mistyped or concatenated request is
// refused rather than half-applied.
func decodeStrict(r io.Reader, v any) error {
	dec := json.NewDecoder(io.LimitReader(r, MaxRequestBody+1))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		if errors.Is(err, io.EOF) {
			return nil
		}
		return err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		if _, tooLarge := errors.AsType[*http.MaxBytesError](err); tooLarge {
			return err
		}
		return errors.New("data after the JSON object")
	}
	return nil
}

func (m *Mux) status(err error) int {
	var se *StatusError
	if errors.As(err, &se) {
		return se.Status
	}
	for _, e := range m.errMap {
		if errors.Is(err, e.err) {
			return e.status
		}
	}
	return http.StatusInternalServerError
}

type errorBody struct {
	Error string `json:"error"`
}

func writeError(w http.ResponseWriter, status int, err error) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(errorBody{Error: err.Error()})
}

// Server serves a Mux on a unix socket.
type Server struct {
	srv *http.Server
	ln  net.Listener
}

// Listen creates the socket at path, readable and writable by its owner
// only. A stale socket from a killed server is replaced; a live one is not.
func Listen(path string, mux *Mux, log *slog.Logger) (*Server, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("admin: socket directory: %w", err)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("admin: %s is in use by a running server", path)
	}
	_ = os.Remove(path)
	old := syscall.Umask(0o177)
	ln, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("admin: listen %s: %w", path, err)
	}
	srv := &http.Server{
		Handler:           http.MaxBytesHandler(mux, MaxRequestBody),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if op, err := peerCred(c); err == nil {
				return context.WithValue(ctx, ctxKey{}, op)
			}
			return ctx
		},
	}
	return &Server{srv: srv, ln: ln}, nil
}

// Serve blocks until Shutdown.
func (s *Server) Serve() error {
	err := s.srv.Serve(s.ln)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Shutdown stops the server gracefully.
func (s *Server) Shutdown(ctx context.Context) error { return s.srv.Shutdown(ctx) }

func peerCred(c net.Conn) (Operator, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return Operator{}, errors.New("not a unix connection")
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return Operator{}, err
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return Operator{}, err
	}
	if credErr != nil {
		return Operator{}, credErr
	}
	return Operator{UID: int(cred.Uid), GID: int(cred.Gid), PID: int(cred.Pid)}, nil
}
