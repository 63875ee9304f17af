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
// OCSP error status, as clients expect. HTTPServer answers the common
// shapes of the same requests without net/http; both render one reply.
func (r *responder) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	var rp reply
	switch req.Method {
	case http.MethodPost:
		body, err := io.ReadAll(http.MaxBytesReader(w, req.Body, int64(r.cfg.MaxRequestBytes)))
		var mbe *http.MaxBytesError
		switch {
		case errors.As(err, &mbe):
			rp = r.malformed(http.StatusRequestEntityTooLarge)
		case err != nil:
			rp = r.malformed(http.StatusOK)
		default:
			rp = r.answer(req.Context(), body, "")
		}
	case http.MethodGet, http.MethodHead:
		rp = r.get(req.Context(), req.URL.EscapedPath(), req.Header.Get("If-None-Match"))
	default:
		w.Header().Set("Allow", "GET, POST")
		http.Error(w, "OCSP takes GET or POST", http.StatusMethodNotAllowed)
		return
	}
	h := w.Header()
	if rp.c != nil {
		h["Etag"] = []string{rp.c.etag}
		h["Last-Modified"] = []string{rp.c.lastModified}
		h["Expires"] = []string{rp.c.expires}
		h["Cache-Control"] = []string{cacheControl(rp.maxAge)}
	} else {
		h["Cache-Control"] = []string{noStore}
	}
	if rp.code == http.StatusNotModified {
		w.WriteHeader(rp.code)
		return
	}
	h["Content-Type"] = []string{ctOCSPResponse}
	h["Content-Length"] = []string{strconv.Itoa(len(rp.body))}
	w.WriteHeader(rp.code)
	if req.Method != http.MethodHead {
		w.Write(rp.body)
	}
}

// reply is one OCSP answer over HTTP, before rendering.
type reply struct {
	code   int     // HTTP status
	body   []byte  // OCSP response DER; none with 304
	c      *cached // the pre-signed answer sent, if any: caching headers
	maxAge int     // seconds, with c
}

// Header values both renderers send.
const (
	ctOCSPResponse = "application/ocsp-response"
	noStore        = "no-store"
	ccCachedSuffix = ", public, no-transform, must-revalidate" // after max-age=N
)

func cacheControl(maxAge int) string {
	return "max-age=" + strconv.Itoa(maxAge) + ccCachedSuffix
}

func (r *responder) malformed(code int) reply {
	r.m.Malformed.Add(1)
	return reply{code: code, body: respMalformed}
}

// get answers GET .../ocsp/<enc>; escapedPath is the request path as sent.
func (r *responder) get(ctx context.Context, escapedPath, ifNoneMatch string) reply {
	i := strings.Index(escapedPath, "/ocsp/")
	if i < 0 {
		return r.malformed(http.StatusOK)
	}
	enc := escapedPath[i+len("/ocsp/"):]
	if len(enc) > r.cfg.MaxRequestBytes*2 {
		return r.malformed(http.StatusRequestURITooLong)
	}
	der, err := decodeGET(enc)
	if err != nil {
		return r.malformed(http.StatusOK)
	}
	return r.answer(ctx, der, ifNoneMatch)
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

// answer looks up (or, for a nonce or a cache miss, signs) the response to
// the DER request der; ifNoneMatch is a GET's header ("" for POST). It keeps
// no reference to der.
func (r *responder) answer(ctx context.Context, der []byte, ifNoneMatch string) reply {
	r.m.Requests.Add(1)
	req, err := ParseRequest(der)
	if err != nil {
		return r.malformed(http.StatusOK)
	}
	oi, c := r.lookup(req)
	if oi == nil {
		r.m.Unauthorized.Add(1)
		return reply{code: http.StatusOK, body: respUnauthorized}
	}
	now := r.now()
	if c != nil && !now.Before(c.nextUpdate) {
		c = nil
	}
	if c != nil {
		r.m.CacheHits.Add(1)
	}
	if req.Nonce != nil {
		if der, ok := r.signNonce(ctx, oi, req, c); ok {
			return reply{code: http.StatusOK, body: der}
		}
	}
	if c == nil {
		c, err = r.miss(ctx, oi, req.HashAlg, req.Serial)
		if err != nil {
			if !errors.Is(err, errBusy) && !errors.Is(err, context.Canceled) {
				r.log.Error("OCSP on-demand signature failed", "issuer", oi.iss.KeyID, "err", err)
			}
			r.m.TryLater.Add(1)
			return reply{code: http.StatusOK, body: respTryLater}
		}
	}
	rp := reply{code: http.StatusOK, body: c.der, c: c, maxAge: max(int(c.nextUpdate.Sub(now)/time.Second), 0)}
	if etagMatch(ifNoneMatch, c.etag) {
		rp.code, rp.body = http.StatusNotModified, nil
	}
	return rp
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
