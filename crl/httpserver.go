package crl

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// HTTPServer serves the revocation endpoints over HTTP/1.1.
//
// An OCSP responder's load is one request shape repeated: GET
// /ocsp/<base64> or POST /ocsp with a small body, answered from the
// pre-signed cache. net/http spends most of a request's CPU around such a
// lookup, so HTTPServer parses and answers exactly that shape itself, on
// the connection's goroutine, and hands the connection — with every byte
// it has read — to a standard http.Server the first time a request is
// anything else (CRLs, the feed, HEAD, chunked or oversized bodies,
// Expect, malformed HTTP...). That server then owns the connection for
// the rest of its life, so unusual HTTP always meets net/http's checks.
type HTTPServer struct {
	r        *responder
	fallback *http.Server
	queue    *connQueue
	idle     time.Duration
	header   time.Duration
	ctx      context.Context
	cancel   context.CancelFunc

	startFallback sync.Once
	closing       atomic.Bool
	mu            sync.Mutex
	lns           []net.Listener
	conns         map[net.Conn]struct{}
	lean          sync.WaitGroup // connection goroutines
	date          atomic.Pointer[httpDate]
}

// leanBufSize bounds a request the lean path answers, head and body
// together; anything larger goes to the fallback server.
const leanBufSize = 8 << 10

// NewHTTPServer returns a server for s's endpoints. fallback serves every
// request the lean path does not; its Handler must serve s.Handler()'s
// paths and whatever else shares the listener. fallback's
// ReadHeaderTimeout (default 5s) and IdleTimeout (default 2m) also bound
// the lean path's connections.
func (s *Service) NewHTTPServer(fallback *http.Server) *HTTPServer {
	h := &HTTPServer{
		r: s.ocsp, fallback: fallback, conns: map[net.Conn]struct{}{},
		idle: fallback.IdleTimeout, header: fallback.ReadHeaderTimeout,
	}
	if h.idle <= 0 {
		h.idle = 2 * time.Minute
	}
	if h.header <= 0 {
		h.header = 5 * time.Second
	}
	h.ctx, h.cancel = context.WithCancel(context.Background())
	h.queue = &connQueue{ch: make(chan net.Conn), done: make(chan struct{})}
	return h
}

// Serve accepts connections on ln until Shutdown or Close, then returns
// http.ErrServerClosed.
func (h *HTTPServer) Serve(ln net.Listener) error {
	h.mu.Lock()
	if h.closing.Load() {
		h.mu.Unlock()
		ln.Close()
		return http.ErrServerClosed
	}
	h.lns = append(h.lns, ln)
	h.mu.Unlock()
	h.startFallback.Do(func() {
		h.queue.addr = ln.Addr()
		go h.fallback.Serve(h.queue)
	})
	var delay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if h.closing.Load() {
				return http.ErrServerClosed
			}
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			// Out of file descriptors and the like: back off as net/http does.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			time.Sleep(delay)
			continue
		}
		delay = 0
		h.mu.Lock()
		if h.closing.Load() {
			h.mu.Unlock()
			c.Close()
			return http.ErrServerClosed
		}
		h.conns[c] = struct{}{}
		h.lean.Add(1)
		h.mu.Unlock()
		go h.serveConn(c)
	}
}

// Shutdown stops accepting, closes idle connections, waits for requests
// in flight (or ctx), then shuts the fallback server down the same way.
func (h *HTTPServer) Shutdown(ctx context.Context) error {
	h.stop(false)
	done := make(chan struct{})
	go func() { h.lean.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		h.Close()
		return ctx.Err()
	}
	h.cancel()
	return h.fallback.Shutdown(ctx)
}

// Close closes the listeners and every connection at once.
func (h *HTTPServer) Close() error {
	h.stop(true)
	h.cancel()
	err := h.fallback.Close()
	h.queue.Close()
	return err
}

// stop marks the server closing and closes its listeners. Lean
// connections are closed (hard) or woken from their wait for a request.
// A connection goroutine re-checks closing after each deadline it sets,
// so none sleeps through this.
func (h *HTTPServer) stop(hard bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.closing.Store(true)
	for _, ln := range h.lns {
		ln.Close()
	}
	for c := range h.conns {
		if hard {
			c.Close()
		} else {
			c.SetReadDeadline(time.Now())
		}
	}
}

func (h *HTTPServer) untrack(c net.Conn) {
	h.mu.Lock()
	delete(h.conns, c)
	h.mu.Unlock()
}

// serveConn answers lean requests on c until it closes, errs, times out or
// meets a request for the fallback server.
func (h *HTTPServer) serveConn(c net.Conn) {
	defer h.lean.Done()
	handed := false
	defer func() {
		h.untrack(c)
		if !handed {
			c.Close()
		}
	}()
	br := bufio.NewReaderSize(c, leanBufSize)
	out := make([]byte, 0, 2048)
	flush := func() bool {
		if len(out) == 0 {
			return true
		}
		_, err := c.Write(out)
		out = out[:0]
		return err == nil
	}
	// deadline sets a deadline, then re-checks closing (see stop).
	deadline := func(d time.Duration) bool {
		c.SetDeadline(time.Now().Add(d))
		return !h.closing.Load()
	}
	handoff := func() {
		if !flush() {
			return
		}
		c.SetDeadline(time.Time{})
		h.r.m.HTTPHandoffs.Add(1)
		handed = true
		h.queue.put(&replayConn{Conn: c, r: br})
	}
	for {
		if br.Buffered() == 0 {
			// Responses go out when no pipelined request is waiting.
			if !flush() || !deadline(h.idle) {
				return
			}
			if _, err := br.Peek(1); err != nil {
				return
			}
		}
		// The rest of the request, and its response, within header; set
		// per request so a long pipelined stream is not cut.
		if !deadline(h.header) {
			return
		}
		n := 0
		for {
			b, _ := br.Peek(br.Buffered())
			if n = headLen(b); n != 0 {
				break
			}
			if br.Buffered() == br.Size() {
				handoff()
				return
			}
			if !flush() {
				return
			}
			if _, err := br.Peek(br.Buffered() + 1); err != nil {
				return
			}
		}
		if n < 0 {
			handoff()
			return
		}
		head, _ := br.Peek(n)
		lr, ok := parseLean(head, h.r.cfg.MaxRequestBytes)
		if !ok || n+lr.bodyLen > br.Size() {
			handoff()
			return
		}
		if br.Buffered() < n+lr.bodyLen && !flush() {
			return
		}
		msg, err := br.Peek(n + lr.bodyLen)
		if err != nil {
			return
		}
		var rp reply
		if lr.post {
			rp = h.r.answer(h.ctx, msg[n:], "")
		} else {
			rp = h.r.get(h.ctx, string(lr.path), string(lr.ifNoneMatch))
		}
		out = h.appendReply(out, rp, lr)
		br.Discard(n + lr.bodyLen)
		if lr.close {
			flush()
			return
		}
		if len(out) > leanBufSize && !flush() {
			return
		}
	}
}

// appendReply renders rp as an HTTP/1.x response with the same headers
// ServeHTTP sends, plus Date and Connection as net/http would.
func (h *HTTPServer) appendReply(b []byte, rp reply, lr leanRequest) []byte {
	if lr.http10 {
		b = append(b, "HTTP/1.0 "...)
	} else {
		b = append(b, "HTTP/1.1 "...)
	}
	b = strconv.AppendInt(b, int64(rp.code), 10)
	b = append(b, ' ')
	b = append(b, http.StatusText(rp.code)...)
	b = append(b, "\r\nCache-Control: "...)
	if rp.c != nil {
		b = append(b, "max-age="...)
		b = strconv.AppendInt(b, int64(rp.maxAge), 10)
		b = append(b, ccCachedSuffix+"\r\nEtag: "...)
		b = append(b, rp.c.etag...)
		b = append(b, "\r\nExpires: "...)
		b = append(b, rp.c.expires...)
		b = append(b, "\r\nLast-Modified: "...)
		b = append(b, rp.c.lastModified...)
	} else {
		b = append(b, noStore...)
	}
	if rp.code != http.StatusNotModified {
		b = append(b, "\r\nContent-Length: "...)
		b = strconv.AppendInt(b, int64(len(rp.body)), 10)
		b = append(b, "\r\nContent-Type: "+ctOCSPResponse...)
	}
	b = append(b, "\r\nDate: "...)
	b = append(b, h.dateHeader()...)
	switch {
	case lr.close:
		b = append(b, "\r\nConnection: close"...)
	case lr.http10:
		b = append(b, "\r\nConnection: keep-alive"...)
	}
	b = append(b, "\r\n\r\n"...)
	if rp.code != http.StatusNotModified {
		b = append(b, rp.body...)
	}
	return b
}

type httpDate struct {
	sec int64
	b   []byte
}

// dateHeader formats the Date header once a second, not once a request.
func (h *HTTPServer) dateHeader() []byte {
	now := time.Now()
	if d := h.date.Load(); d != nil && d.sec == now.Unix() {
		return d.b
	}
	d := &httpDate{sec: now.Unix(), b: now.UTC().AppendFormat(nil, http.TimeFormat)}
	h.date.Store(d)
	return d.b
}

// headLen returns the length of the request head at the start of b,
// through its empty line; 0 if b holds no complete head yet; -1 if a line
// ends in a bare LF, which only net/http's parser judges.
func headLen(b []byte) int {
	off := 0
	for {
		i := bytes.IndexByte(b[off:], '\n')
		if i < 0 {
			return 0
		}
		end := off + i
		if end == 0 || b[end-1] != '\r' {
			return -1
		}
		if end == off+1 { // "\r\n" alone
			return end + 1
		}
		off = end + 1
	}
}

// leanRequest is an OCSP request in a shape the lean path answers.
type leanRequest struct {
	post        bool
	path        []byte // GET: the request target, "/ocsp/..."
	bodyLen     int    // POST: Content-Length
	http10      bool
	close       bool // answer, then close the connection
	ifNoneMatch []byte
}

// parseLean parses one request head (as measured by headLen). ok is false
// for anything but a plain GET /ocsp/<enc> or a POST /ocsp with a
// Content-Length of at most maxBody: that request, and every one after it
// on its connection, is net/http's. Where net/http would reject a request
// (no Host in HTTP/1.1, a bad header line, conflicting lengths), parseLean
// declines it rather than judge, so the client gets net/http's answer.
func parseLean(head []byte, maxBody int) (lr leanRequest, ok bool) {
	i := bytes.IndexByte(head, '\n')
	line := head[:i-1]
	rest := head[i+1:]
	sp1 := bytes.IndexByte(line, ' ')
	if sp1 < 0 {
		return lr, false
	}
	method, line := line[:sp1], line[sp1+1:]
	sp2 := bytes.IndexByte(line, ' ')
	if sp2 < 0 {
		return lr, false
	}
	target, proto := line[:sp2], line[sp2+1:]
	switch string(proto) {
	case "HTTP/1.1":
	case "HTTP/1.0":
		lr.http10 = true
	default:
		return lr, false
	}
	switch string(method) {
	case "GET":
		if !bytes.HasPrefix(target, []byte("/ocsp/")) || len(target) == len("/ocsp/") {
			return lr, false
		}
		for i, c := range target {
			// A query, a fragment, a bad escape: net/http's to judge.
			if c == '?' || c == '#' || c <= ' ' || c >= 0x7f ||
				c == '%' && (i+2 >= len(target) || !isHex(target[i+1]) || !isHex(target[i+2])) {
				return lr, false
			}
		}
		lr.path = target
	case "POST":
		if string(target) != "/ocsp" {
			return lr, false
		}
		lr.post = true
	default:
		return lr, false
	}
	var host, length, keepAlive bool
	for len(rest) > 2 {
		i := bytes.IndexByte(rest, '\n')
		line := rest[:i-1]
		rest = rest[i+1:]
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 || !validFieldName(line[:colon]) {
			return lr, false // obs-fold, no colon, space before it, bad name
		}
		name := line[:colon]
		value := bytes.Trim(line[colon+1:], " \t")
		for _, c := range value {
			if (c < ' ' && c != '\t') || c == 0x7f {
				return lr, false
			}
		}
		switch {
		case asciiEqualFold(name, "host"):
			if host {
				return lr, false
			}
			host = true
		case asciiEqualFold(name, "content-length"):
			if length || !lr.post {
				return lr, false
			}
			length = true
			n, ok := parseLength(value)
			if !ok || n > maxBody {
				return lr, false
			}
			lr.bodyLen = n
		case asciiEqualFold(name, "transfer-encoding"), asciiEqualFold(name, "expect"),
			asciiEqualFold(name, "upgrade"), asciiEqualFold(name, "http2-settings"):
			return lr, false
		case asciiEqualFold(name, "connection"):
			for _, tok := range bytes.Split(value, []byte(",")) {
				tok = bytes.Trim(tok, " \t")
				switch {
				case asciiEqualFold(tok, "close"):
					lr.close = true
				case asciiEqualFold(tok, "keep-alive"):
					keepAlive = true
				}
			}
		case asciiEqualFold(name, "if-none-match"):
			if lr.ifNoneMatch != nil {
				return lr, false
			}
			lr.ifNoneMatch = value
		}
	}
	if (!host && !lr.http10) || (lr.post && !length) {
		return lr, false
	}
	if lr.http10 && !keepAlive {
		lr.close = true
	}
	return lr, true
}

// parseLength parses a Content-Length value: digits only, no sign.
func parseLength(b []byte) (int, bool) {
	if len(b) == 0 || len(b) > 9 {
		return 0, false
	}
	n := 0
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	return n, true
}

// validFieldName reports whether b is an RFC 9110 token.
func validFieldName(b []byte) bool {
	for _, c := range b {
		if c <= ' ' || c >= 0x7f || bytes.IndexByte([]byte(`"(),/:;<=>?@[\]{}`), c) >= 0 {
			return false
		}
	}
	return len(b) > 0
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func asciiEqualFold(b []byte, lower string) bool {
	if len(b) != len(lower) {
		return false
	}
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != lower[i] {
			return false
		}
	}
	return true
}

// replayConn is a connection handed to the fallback server: reads drain
// what the lean path buffered before reaching the socket.
type replayConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *replayConn) Read(p []byte) (int, error) {
	if c.r != nil {
		if c.r.Buffered() > 0 {
			return c.r.Read(p)
		}
		c.r = nil
	}
	return c.Conn.Read(p)
}

// CloseWrite half-closes as net/http does on a *net.TCPConn before it
// lingers and closes: the client sees the end of the reply at once.
func (c *replayConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// connQueue is the fallback server's listener: it accepts handed-off
// connections.
type connQueue struct {
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
	addr net.Addr
}

func (q *connQueue) put(c net.Conn) {
	select {
	case q.ch <- c:
	case <-q.done:
		c.Close()
	}
}

func (q *connQueue) Accept() (net.Conn, error) {
	select {
	case c := <-q.ch:
		return c, nil
	case <-q.done:
		return nil, net.ErrClosed
	}
}

func (q *connQueue) Close() error {
	q.once.Do(func() { close(q.done) })
	return nil
}

func (q *connQueue) Addr() net.Addr { return q.addr }
