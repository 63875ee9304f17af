package crl

import (
	"bufio"
	"bytes"
	"net/http"
	"strings"
	"testing"
)

func TestHeadLen(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want int
	}{
		{"empty", "", 0},
		{"partial line", "GET /ocsp/x HTTP/1.1\r", 0},
		{"no blank line yet", "GET /ocsp/x HTTP/1.1\r\nHost: a\r\n", 0},
		{"complete", "GET /ocsp/x HTTP/1.1\r\nHost: a\r\n\r\n", 33},
		{"complete with body after", "POST /ocsp HTTP/1.1\r\n\r\nBODY", 23},
		{"bare LF in request line", "GET /ocsp/x HTTP/1.1\nHost: a\r\n\r\n", -1},
		{"bare LF ends head", "GET /ocsp/x HTTP/1.1\r\nHost: a\r\n\n", -1},
		{"leading LF", "\n", -1},
		{"blank first line", "\r\n", 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := headLen([]byte(tc.in)); got != tc.want {
				t.Fatalf("headLen = %d, want %d", got, tc.want)
			}
		})
	}
}

func TestParseLean(t *testing.T) {
	const get = "GET /ocsp/MEow HTTP/1.1\r\nHost: ocsp\r\n"
	const post = "POST /ocsp HTTP/1.1\r\nHost: ocsp\r\nContent-Length: 10\r\n"
	tests := []struct {
		name string
		head string // without the final CRLF
		ok   bool
		want leanRequest
	}{
		{"get", get, true, leanRequest{path: []byte("/ocsp/MEow")}},
		{"get percent-escaped", "GET /ocsp/ME%2Bw%3D HTTP/1.1\r\nHost: o\r\n", true, leanRequest{path: []byte("/ocsp/ME%2Bw%3D")}},
		{"post", post, true, leanRequest{post: true, bodyLen: 10}},
		{"post header case", "POST /ocsp HTTP/1.1\r\nhOsT: o\r\ncontent-LENGTH:\t10 \r\n", true, leanRequest{post: true, bodyLen: 10}},
		{"connection close", get + "Connection: keep-alive, Close\r\n", true, leanRequest{path: []byte("/ocsp/MEow"), close: true}},
		{"if-none-match", get + "If-None-Match: \"abc\"\r\n", true, leanRequest{path: []byte("/ocsp/MEow"), ifNoneMatch: []byte(`"abc"`)}},
		{"http/1.0 closes", "POST /ocsp HTTP/1.0\r\nContent-Length: 3\r\n", true, leanRequest{post: true, bodyLen: 3, http10: true, close: true}},
		{"http/1.0 keep-alive", "POST /ocsp HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: 3\r\n", true, leanRequest{post: true, bodyLen: 3, http10: true}},
		{"unknown headers ignored", get + "User-Agent: x\r\nAccept: */*\r\n", true, leanRequest{path: []byte("/ocsp/MEow")}},

		{"http/1.1 without host", "GET /ocsp/MEow HTTP/1.1\r\n", false, leanRequest{}},
		{"two hosts", get + "Host: b\r\n", false, leanRequest{}},
		{"http/2 preface", "PRI * HTTP/2.0\r\n", false, leanRequest{}},
		{"http/1.2", "GET /ocsp/MEow HTTP/1.2\r\nHost: o\r\n", false, leanRequest{}},
		{"head", "HEAD /ocsp/MEow HTTP/1.1\r\nHost: o\r\n", false, leanRequest{}},
		{"lowercase method", "get /ocsp/MEow HTTP/1.1\r\nHost: o\r\n", false, leanRequest{}},
		{"crl path", "GET /crl/current.crl HTTP/1.1\r\nHost: o\r\n", false, leanRequest{}},
		{"empty ocsp path", "GET /ocsp/ HTTP/1.1\r\nHost: o\r\n", false, leanRequest{}},
		{"query", "GET /ocsp/MEow?x=1 HTTP/1.1\r\nHost: o\r\n", false, leanRequest{}},
		{"bad escape", "GET /ocsp/ME%2 HTTP/1.1\r\nHost: o\r\n", false, leanRequest{}},
		{"absolute form", "GET http://o/ocsp/MEow HTTP/1.1\r\nHost: o\r\n", false, leanRequest{}},
		{"post elsewhere", "POST /ocsp/x HTTP/1.1\r\nHost: o\r\nContent-Length: 1\r\n", false, leanRequest{}},
		{"post without length", "POST /ocsp HTTP/1.1\r\nHost: o\r\n", false, leanRequest{}},
		{"chunked", "POST /ocsp HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: chunked\r\n", false, leanRequest{}},
		{"length and chunked", post + "Transfer-Encoding: chunked\r\n", false, leanRequest{}},
		{"two lengths", post + "Content-Length: 10\r\n", false, leanRequest{}},
		{"signed length", "POST /ocsp HTTP/1.1\r\nHost: o\r\nContent-Length: +10\r\n", false, leanRequest{}},
		{"empty length", "POST /ocsp HTTP/1.1\r\nHost: o\r\nContent-Length: \r\n", false, leanRequest{}},
		{"length over max", "POST /ocsp HTTP/1.1\r\nHost: o\r\nContent-Length: 4097\r\n", false, leanRequest{}},
		{"get with body", get + "Content-Length: 1\r\n", false, leanRequest{}},
		{"expect", post + "Expect: 100-continue\r\n", false, leanRequest{}},
		{"upgrade", get + "Upgrade: h2c\r\n", false, leanRequest{}},
		{"obs-fold", get + "X-A: 1\r\n 2\r\n", false, leanRequest{}},
		{"space before colon", get + "X-A : 1\r\n", false, leanRequest{}},
		{"no colon", get + "garbage\r\n", false, leanRequest{}},
		{"control in value", get + "X-A: 1\x002\r\n", false, leanRequest{}},
		{"two if-none-match", get + "If-None-Match: a\r\nIf-None-Match: b\r\n", false, leanRequest{}},
		{"one space", "GET\r\n", false, leanRequest{}},
		{"blank", "", false, leanRequest{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := parseLean([]byte(tc.head+"\r\n"), 4096)
			if ok != tc.ok {
				t.Fatalf("ok = %v, want %v", ok, tc.ok)
			}
			if !ok {
				return
			}
			if got.post != tc.want.post || got.bodyLen != tc.want.bodyLen || got.http10 != tc.want.http10 ||
				got.close != tc.want.close || !bytes.Equal(got.path, tc.want.path) || !bytes.Equal(got.ifNoneMatch, tc.want.ifNoneMatch) {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

// FuzzParseLean checks the lean parser against net/http's: whatever head
// parseLean accepts, http.ReadRequest must read as the same request.
func FuzzParseLean(f *testing.F) {
	f.Add([]byte("GET /ocsp/MEow HTTP/1.1\r\nHost: o\r\n\r\n"))
	f.Add([]byte("POST /ocsp HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: 3\r\n\r\n"))
	f.Add([]byte("POST /ocsp HTTP/1.1\r\nHost: o\r\nContent-Length: 10\r\nConnection: close\r\n\r\n"))
	f.Add([]byte("GET /ocsp/a%2Fb HTTP/1.1\r\nHost: o\r\nIf-None-Match: \"x\"\r\n\r\n"))
	f.Add([]byte("GET /ocsp/MEow HTTP/1.1\r\nhost: o\r\nUser-Agent: a\r\nConnection: Keep-Alive, close\r\nAccept: */*\r\n\r\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		n := headLen(b)
		if n <= 0 {
			return
		}
		head := b[:n]
		lr, ok := parseLean(head, 4096)
		if !ok {
			return
		}
		req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(head)))
		if err != nil {
			t.Fatalf("lean accepted what net/http rejects (%v): %q", err, head)
		}
		wantMethod := "GET"
		if lr.post {
			wantMethod = "POST"
		}
		switch {
		case req.Method != wantMethod:
			t.Fatalf("method %q vs %q", req.Method, wantMethod)
		case lr.post && req.ContentLength != int64(lr.bodyLen):
			t.Fatalf("Content-Length %d vs %d", req.ContentLength, lr.bodyLen)
		case !lr.post && req.RequestURI != string(lr.path):
			t.Fatalf("path %q vs %q", req.RequestURI, lr.path)
		case lr.close != req.Close:
			t.Fatalf("close %v vs %v: %q", lr.close, req.Close, head)
		case (req.ProtoMinor == 0) != lr.http10:
			t.Fatalf("protocol %s vs http10=%v", req.Proto, lr.http10)
		case len(req.TransferEncoding) != 0:
			t.Fatalf("transfer encoding %v accepted", req.TransferEncoding)
		case string(lr.ifNoneMatch) != strings.TrimSpace(req.Header.Get("If-None-Match")):
			t.Fatalf("If-None-Match %q vs %q", lr.ifNoneMatch, req.Header.Get("If-None-Match"))
		}
	})
}
