package crl

import (
	"context"
	"encoding/base64"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// ServeHTTP answers RFC 6960 Appendix A requests: POST with a DER body, or
// GET /ocsp/<base64(DER)>. Protocol errors are HTTP 200 with an unsigned
// OCSP error status, as clients expect.
func (r *responder) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	var der []byte
	switch req.Method {
	case http.MethodPost:
		body, err := io.ReadAll(http.MaxBytesReader(w, req.Body, int64(r.cfg.MaxRequestBytes)))
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			r.m.Malformed.Add(1)
			writeOCSPError(w, http.StatusRequestEntityTooLarge, respMalformed)
			return
		}
		if err != nil {
			r.m.Malformed.Add(1)
			writeOCSPError(w, http.StatusOK, respMalformed)
			return
		}
		der = body
	case http.MethodGet, http.MethodHead:
		p := req.URL.EscapedPath()
		i := strings.Index(p, "/ocsp/")
		if i < 0 {
			r.m.Malformed.Add(1)
			writeOCSPError(w, http.StatusOK, respMalformed)
			return
		}
		enc := p[i+len("/ocsp/"):]
		if len(enc) > r.cfg.MaxRequestBytes*2 {
			r.m.Malformed.Add(1)
			writeOCSPError(w, http.StatusRequestURITooLong, respMalformed)
			return
		}
		dec, err := decodeGET(enc)
		if err != nil {
			r.m.Malformed.Add(1)
			writeOCSPError(w, http.StatusOK, respMalformed)
			return
		}
		der = dec
	default:
		w.Header().Set("Allow", "GET, POST")
		http.Error(w, "OCSP takes GET or POST", http.StatusMethodNotAllowed)
		return
	}
	r.answer(w, req, der)
}

// decodeGET undoes the URL and base64 encodings of a GET request, accepting
// the padded, unpadded and URL-safe alphabets clients use.
func decodeGET(enc string) ([]byte, error) {
	s := enc
	if strings.IndexByte(enc, '%') >= 0 {
		var err error
		if s, err = url.PathUnescape(enc); err != nil {
			return nil, err
		}
	}
	s = strings.TrimRight(s, "=")
	if strings.ContainsAny(s, "-_") {
		return base64.RawURLEncoding.DecodeString(s)
	}
	return base64.RawStdEncoding.DecodeString(s)
}

var ctOCSPResponse = []string{"application/ocsp-response"}

func writeOCSPError(w http.ResponseWriter, code int, body []byte) {
	h := w.Header()
	h.Set("Content-Type", "application/ocsp-response")
	h.Set("Cache-Control", "no-store")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(code)
	w.Write(body)
}

func (r *responder) answer(w http.ResponseWriter, hr *http.Request, der []byte) {
	r.m.Requests.Add(1)
	req, err := ParseRequest(der)
	if err != nil {
		r.m.Malformed.Add(1)
		writeOCSPError(w, http.StatusOK, respMalformed)
		return
	}
	oi, c := r.lookup(req)
	if oi == nil {
		r.m.Unauthorized.Add(1)
		writeOCSPError(w, http.StatusOK, respUnauthorized)
		return
	}
	now := r.now()
	if c != nil && !now.Before(c.nextUpdate) {
		c = nil
	}
	if c != nil {
		r.m.CacheHits.Add(1)
	}
	if req.Nonce != nil {
		if der, ok := r.signNonce(hr.Context(), oi, req, c); ok {
			h := w.Header()
			h.Set("Content-Type", "application/ocsp-response")
			h.Set("Cache-Control", "no-store")
			h.Set("Content-Length", strconv.Itoa(len(der)))
			w.WriteHeader(http.StatusOK)
			w.Write(der)
			return
		}
	}
	if c == nil {
		c, err = r.miss(hr.Context(), oi, req.HashAlg, req.Serial)
		if err != nil {
			if !errors.Is(err, errBusy) && !errors.Is(err, context.Canceled) {
				r.log.Error("OCSP on-demand signature failed", "issuer", oi.iss.KeyID, "err", err)
			}
			r.m.TryLater.Add(1)
			writeOCSPError(w, http.StatusOK, respTryLater)
			return
		}
	}
	// Header values are precomputed per answer: a request is a lookup.
	h := w.Header()
	h["Content-Type"] = ctOCSPResponse
	h["Etag"] = c.hETag
	h["Last-Modified"] = c.hLastModified
	h["Expires"] = c.hExpires
	maxAge := int(c.nextUpdate.Sub(now) / time.Second)
	if maxAge < 0 {
		maxAge = 0
	}
	h["Cache-Control"] = []string{"max-age=" + strconv.Itoa(maxAge) + ", public, no-transform, must-revalidate"}
	if hr.Method != http.MethodPost && etagMatch(hr.Header.Get("If-None-Match"), c.etag) {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	h["Content-Length"] = c.hLength
	w.WriteHeader(http.StatusOK)
	if hr.Method != http.MethodHead {
		w.Write(c.der)
	}
}

func etagMatch(header, etag string) bool {
	if header == "" {
		return false
	}
	for _, t := range strings.Split(header, ",") {
		t = strings.TrimPrefix(strings.TrimSpace(t), "W/")
		if t == etag || t == "*" {
			return true
		}
	}
	return false
}

// signNonce signs a fresh answer echoing the request's nonce. ok is false
// when no signature slot freed up in time or signing failed: the caller
// then sends the pre-signed answer.
func (r *responder) signNonce(ctx context.Context, oi *ocspIssuer, req *Request, c *cached) ([]byte, bool) {
	rs := oi.rs.Load()
	if rs == nil || !r.acquire(ctx, 100*time.Millisecond) {
		return nil, false
	}
	defer r.release()
	a, _, err := r.answerFor(oi, req.HashAlg, req.Serial)
	if err != nil {
		r.log.Error("OCSP nonce answer failed", "err", err)
		return nil, false
	}
	a.certID = req.CertID
	der, err := encodeResponse(rs, a, req.Nonce, r.now())
	if err != nil {
		r.m.SignFailures.Add(1)
		r.log.Error("OCSP nonce signature failed; sending pre-signed answer", "issuer", oi.iss.KeyID, "err", err)
		return nil, false
	}
	r.m.Signatures.Add(1)
	return der, true
}
