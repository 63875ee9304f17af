package crl_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ocsp"

	"github.com/palisade-id/palisade/crl"
)

var maxAgeRE = regexp.MustCompile(`max-age=[0-9]+`)

// rawConn dials the env's server for hand-written HTTP.
func rawConn(t *testing.T, e *env) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", strings.TrimPrefix(e.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return c, bufio.NewReader(c)
}

func readResp(t *testing.T, br *bufio.Reader, method string) (*http.Response, []byte) {
	t.Helper()
	resp, err := http.ReadResponse(br, &http.Request{Method: method})
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, body
}

func TestHTTPServerMatchesHandler(t *testing.T) {
	e := newEnv(t, crl.Config{})
	leaf := e.mint(t, "n")
	der, _ := ocsp.CreateRequest(leaf, e.ca.Intermediate(), nil)
	path := "/ocsp/" + base64.StdEncoding.EncodeToString(der)
	waitFor(t, "pre-signed", func() bool { return e.svc.Metrics().Signatures.Load() >= 1 })
	tests := []struct {
		name string
		req  func() *http.Request
	}{
		{"get", func() *http.Request { r, _ := http.NewRequest(http.MethodGet, e.url+path, nil); return r }},
		{"post", func() *http.Request {
			r, _ := http.NewRequest(http.MethodPost, e.url+"/ocsp", bytes.NewReader(der))
			r.Header.Set("Content-Type", "application/ocsp-request")
			return r
		}},
		{"malformed post", func() *http.Request {
			r, _ := http.NewRequest(http.MethodPost, e.url+"/ocsp", strings.NewReader("junk"))
			return r
		}},
		{"not modified", func() *http.Request {
			r, _ := http.NewRequest(http.MethodGet, e.url+path, nil)
			r.Header.Set("If-None-Match", "*")
			return r
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := e.svc.Metrics().HTTPHandoffs.Load()
			resp, err := http.DefaultClient.Do(tc.req())
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if n := e.svc.Metrics().HTTPHandoffs.Load(); n != before {
				t.Fatalf("request was handed to net/http (%d hand-offs)", n-before)
			}
			// The same request through the net/http handler alone.
			r := tc.req()
			w := httptest.NewRecorder()
			hr := httptest.NewRequest(r.Method, r.URL.String(), r.Body)
			hr.Header = r.Header
			e.svc.Handler().ServeHTTP(w, hr)
			for k := range w.Header() {
				got, want := resp.Header.Get(k), w.Header().Get(k)
				if k == "Cache-Control" { // max-age may tick between the two
					got, want = maxAgeRE.ReplaceAllString(got, "max-age=N"), maxAgeRE.ReplaceAllString(want, "max-age=N")
				}
				if got != want {
					t.Errorf("header %s: lean %q, net/http %q", k, got, want)
				}
			}
			if resp.StatusCode != w.Code || !bytes.Equal(body, w.Body.Bytes()) {
				t.Fatalf("lean HTTP %d (%d bytes), net/http %d (%d bytes)", resp.StatusCode, len(body), w.Code, w.Body.Len())
			}
			if resp.Header.Get("Date") == "" || resp.Header.Get("Cache-Control") == "" {
				t.Fatalf("missing Date or Cache-Control: %v", resp.Header)
			}
		})
	}
}

// Pipelined requests, the third of which the lean path hands to net/http
// mid-connection: answers come back complete and in order.
func TestHTTPServerPipelineAndHandoff(t *testing.T) {
	e := newEnv(t, crl.Config{})
	leaf := e.mint(t, "n")
	der, _ := ocsp.CreateRequest(leaf, e.ca.Intermediate(), nil)
	get := fmt.Sprintf("GET /ocsp/%s HTTP/1.1\r\nHost: o\r\n\r\n", base64.StdEncoding.EncodeToString(der))
	post := fmt.Sprintf("POST /ocsp HTTP/1.1\r\nHost: o\r\nContent-Length: %d\r\n\r\n%s", len(der), der)
	crlReq := "GET /crl/current.crl HTTP/1.1\r\nHost: o\r\n\r\n"
	head := "HEAD /ocsp/" + base64.StdEncoding.EncodeToString(der) + " HTTP/1.1\r\nHost: o\r\n\r\n"
	waitFor(t, "CRL", func() bool { return e.svc.Metrics().CRLBuilds.Load() > 0 })
	before := e.svc.Metrics().HTTPHandoffs.Load()
	c, br := rawConn(t, e)
	if _, err := io.WriteString(c, get+post+crlReq+get+head+post); err != nil {
		t.Fatal(err)
	}
	for i, want := range []string{"ocsp", "ocsp", "crl", "ocsp", "head", "ocsp"} {
		method := http.MethodGet
		if want == "head" {
			method = http.MethodHead
		}
		resp, body := readResp(t, br, method)
		if resp.StatusCode != 200 {
			t.Fatalf("response %d: HTTP %d", i, resp.StatusCode)
		}
		switch want {
		case "ocsp":
			r, err := ocsp.ParseResponseForCert(body, leaf, e.ca.Intermediate())
			if err != nil || r.Status != ocsp.Good {
				t.Fatalf("response %d: %v", i, err)
			}
		case "crl":
			if _, err := x509.ParseRevocationList(body); err != nil {
				t.Fatalf("response %d: %v", i, err)
			}
		case "head":
			if len(body) != 0 || resp.ContentLength <= 0 {
				t.Fatalf("HEAD: %d bytes, Content-Length %d", len(body), resp.ContentLength)
			}
		}
	}
	if n := e.svc.Metrics().HTTPHandoffs.Load() - before; n != 1 {
		t.Fatalf("%d hand-offs, want 1", n)
	}
}

// A request that trickles in a byte at a time is still answered.
func TestHTTPServerSlowClient(t *testing.T) {
	e := newEnv(t, crl.Config{})
	leaf := e.mint(t, "n")
	der, _ := ocsp.CreateRequest(leaf, e.ca.Intermediate(), nil)
	req := fmt.Sprintf("POST /ocsp HTTP/1.1\r\nHost: o\r\nContent-Length: %d\r\n\r\n%s", len(der), der)
	c, br := rawConn(t, e)
	for i := 0; i < len(req); i++ {
		if _, err := c.Write([]byte{req[i]}); err != nil {
			t.Fatal(err)
		}
		if i%16 == 0 {
			time.Sleep(time.Millisecond)
		}
	}
	resp, body := readResp(t, br, http.MethodPost)
	if r, err := ocsp.ParseResponseForCert(body, leaf, e.ca.Intermediate()); resp.StatusCode != 200 || err != nil || r.Status != ocsp.Good {
		t.Fatalf("HTTP %d: %v", resp.StatusCode, err)
	}
}

// Connection handling the way net/http does it: HTTP/1.0 closes unless
// asked to keep alive, "Connection: close" closes, bad HTTP gets a 400.
func TestHTTPServerConnections(t *testing.T) {
	e := newEnv(t, crl.Config{})
	leaf := e.mint(t, "n")
	der, _ := ocsp.CreateRequest(leaf, e.ca.Intermediate(), nil)
	post := func(proto, extra string) string {
		return fmt.Sprintf("POST /ocsp %s\r\nHost: o\r\n%sContent-Length: %d\r\n\r\n%s", proto, extra, len(der), der)
	}
	tests := []struct {
		name      string
		send      string
		code      int
		proto     string
		keepAlive bool
	}{
		{"http/1.0", post("HTTP/1.0", ""), 200, "HTTP/1.0", false},
		{"http/1.0 keep-alive", post("HTTP/1.0", "Connection: keep-alive\r\n"), 200, "HTTP/1.0", true},
		{"http/1.1", post("HTTP/1.1", ""), 200, "HTTP/1.1", true},
		{"http/1.1 close", post("HTTP/1.1", "Connection: close\r\n"), 200, "HTTP/1.1", false},
		{"bare LF", "GET /ocsp/" + base64.StdEncoding.EncodeToString(der) + " HTTP/1.1\nHost: o\n\n", 200, "HTTP/1.1", true},
		{"no host", "GET /ocsp/" + base64.StdEncoding.EncodeToString(der) + " HTTP/1.1\r\n\r\n", 400, "HTTP/1.1", false},
		{"not http", "HELLO\r\n\r\n", 400, "HTTP/1.1", false},
		{"oversized body", fmt.Sprintf("POST /ocsp HTTP/1.1\r\nHost: o\r\nContent-Length: %d\r\n\r\n%s", 5000, bytes.Repeat([]byte{0x30}, 5000)), 413, "HTTP/1.1", false},
		{"oversized head", "GET /ocsp/x HTTP/1.1\r\nHost: o\r\nX-Big: " + strings.Repeat("a", 10000) + "\r\n\r\n", 200, "HTTP/1.1", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, br := rawConn(t, e)
			if _, err := io.WriteString(c, tc.send); err != nil {
				t.Fatal(err)
			}
			resp, _ := readResp(t, br, http.MethodPost)
			if resp.StatusCode != tc.code || resp.Proto != tc.proto {
				t.Fatalf("%s %d, want %s %d", resp.Proto, resp.StatusCode, tc.proto, tc.code)
			}
			c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
			_, err := br.ReadByte()
			var ne net.Error
			open := errors.As(err, &ne) && ne.Timeout()
			if open != tc.keepAlive {
				t.Fatalf("connection open after response = %v, want %v (read: %v)", open, tc.keepAlive, err)
			}
		})
	}
}

// Shutdown closes idle keep-alive connections and makes Serve return.
func TestHTTPServerShutdown(t *testing.T) {
	e := newEnv(t, crl.Config{})
	leaf := e.mint(t, "n")
	der, _ := ocsp.CreateRequest(leaf, e.ca.Intermediate(), nil)
	c, br := rawConn(t, e)
	fmt.Fprintf(c, "POST /ocsp HTTP/1.1\r\nHost: o\r\nContent-Length: %d\r\n\r\n%s", len(der), der)
	if resp, _ := readResp(t, br, http.MethodPost); resp.StatusCode != 200 {
		t.Fatalf("HTTP %d", resp.StatusCode)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	if err := e.http.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("idle connection after Shutdown: %v, want EOF", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("Shutdown took %v", d)
	}
	if _, err := net.DialTimeout("tcp", strings.TrimPrefix(e.url, "http://"), time.Second); err == nil {
		t.Fatal("listener still accepts after Shutdown")
	}
}

// A request head that stalls is cut after the fallback server's
// ReadHeaderTimeout; an idle keep-alive connection after its IdleTimeout.
func TestHTTPServerTimeouts(t *testing.T) {
	e := newEnv(t, crl.Config{})
	leaf := e.mint(t, "n")
	der, _ := ocsp.CreateRequest(leaf, e.ca.Intermediate(), nil)
	hs := e.svc.NewHTTPServer(&http.Server{Handler: e.svc.Handler(), ReadHeaderTimeout: 200 * time.Millisecond, IdleTimeout: 400 * time.Millisecond})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go hs.Serve(ln)
	t.Cleanup(func() { hs.Close() })
	tests := []struct {
		name     string
		send     string
		response bool
		min, max time.Duration
	}{
		{"stalled head", "POST /ocsp HTTP/1.1\r\nHost: o\r\n", false, 150 * time.Millisecond, 2 * time.Second},
		{"stalled body", fmt.Sprintf("POST /ocsp HTTP/1.1\r\nHost: o\r\nContent-Length: %d\r\n\r\n%s", len(der), der[:10]), false, 150 * time.Millisecond, 2 * time.Second},
		{"idle", fmt.Sprintf("POST /ocsp HTTP/1.1\r\nHost: o\r\nContent-Length: %d\r\n\r\n%s", len(der), der), true, 350 * time.Millisecond, 2 * time.Second},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			start := time.Now()
			io.WriteString(c, tc.send)
			br := bufio.NewReader(c)
			if tc.response {
				if resp, _ := readResp(t, br, http.MethodPost); resp.StatusCode != 200 {
					t.Fatalf("HTTP %d", resp.StatusCode)
				}
			}
			if _, err := br.ReadByte(); err != io.EOF {
				t.Fatalf("read: %v, want EOF", err)
			}
			if d := time.Since(start); d < tc.min || d > tc.max {
				t.Fatalf("closed after %v, want within [%v, %v]", d, tc.min, tc.max)
			}
		})
	}
}

// Many keep-alive clients mixing lean OCSP requests with requests that
// hand their connection over: every answer is right (run with -race).
func TestHTTPServerConcurrentMix(t *testing.T) {
	e := newEnv(t, crl.Config{})
	leaf := e.mint(t, "n")
	der, _ := ocsp.CreateRequest(leaf, e.ca.Intermediate(), nil)
	get := e.url + "/ocsp/" + base64.StdEncoding.EncodeToString(der)
	waitFor(t, "CRL", func() bool { return e.svc.Metrics().CRLBuilds.Load() > 0 })
	tr := &http.Transport{MaxIdleConnsPerHost: 8}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	errs := make(chan error, 16)
	for w := 0; w < 16; w++ {
		go func() {
			var err error
			for i := 0; i < 40 && err == nil; i++ {
				var resp *http.Response
				switch (w + i) % 4 {
				case 0:
					resp, err = client.Get(get)
				case 1:
					resp, err = client.Post(e.url+"/ocsp", "application/ocsp-request", bytes.NewReader(der))
				case 2:
					resp, err = client.Get(e.url + "/crl/current.crl")
				case 3:
					resp, err = client.Head(get)
				}
				if err != nil {
					break
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				switch {
				case resp.StatusCode != 200:
					err = fmt.Errorf("request %d: HTTP %d", (w+i)%4, resp.StatusCode)
				case (w+i)%4 == 2:
					_, err = x509.ParseRevocationList(body)
				case (w+i)%4 == 3:
					if len(body) != 0 {
						err = fmt.Errorf("HEAD returned %d bytes", len(body))
					}
				default:
					var r *ocsp.Response
					if r, err = ocsp.ParseResponseForCert(body, leaf, e.ca.Intermediate()); err == nil && r.Status != ocsp.Good {
						err = fmt.Errorf("status %d", r.Status)
					}
				}
			}
			errs <- err
		}()
	}
	for w := 0; w < 16; w++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if e.svc.Metrics().HTTPHandoffs.Load() == 0 {
		t.Fatal("no connection was handed over")
	}
}
