package ca

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"encoding/asn1"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math/big"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// JWTRequest asks for one JWT-SVID.
type JWTRequest struct {
	ID       spiffeid.ID
	Audience []string
	TTL      time.Duration // 0: the configured default
	Actor    string
}

// JWTSVID is a signed token and its claims.
type JWTSVID struct {
	Token     string
	ID        spiffeid.ID
	Audience  []string
	IssuedAt  time.Time
	ExpiresAt time.Time
	KeyID     string
}

// SignJWTSVID issues a JWT-SVID signed in the HSM by the active generation's
// JWT key (ES256, or ES384 on a P-384 appliance). Issuance is audited before
// the token is returned.
func (c *CA) SignJWTSVID(ctx context.Context, req JWTRequest) (*JWTSVID, error) {
	if req.ID.IsZero() {
		return nil, fmt.Errorf("%w: empty", ErrInvalidSPIFFEID)
	}
	if req.ID.TrustDomain() != c.td {
		return nil, fmt.Errorf("%w: %s", ErrForeignTrustDomain, req.ID)
	}
	if req.ID.Path() == "" {
		return nil, fmt.Errorf("%w: %s names the trust domain itself, not a workload", ErrInvalidSPIFFEID, req.ID)
	}
	if err := checkAudience(req.Audience); err != nil {
		return nil, err
	}
	ttl, err := svidTTL(req.TTL, c.cfg.JWTSVIDTTL, c.cfg.MaxJWTSVIDTTL)
	if err != nil {
		return nil, err
	}
	c.mu.RLock()
	s := c.active
	c.mu.RUnlock()
	if s == nil {
		return nil, ErrNoActiveIssuer
	}
	now := c.now()
	exp := now.Add(ttl)
	if exp.After(s.cert.NotAfter) {
		exp = s.cert.NotAfter
	}
	if !exp.After(now) {
		return nil, fmt.Errorf("%w: active intermediate %s has expired", ErrNoActiveIssuer, s.rec.KeyID)
	}
	alg, hash, size, err := jwsAlg(s.jwtSigner.Public())
	if err != nil {
		return nil, err
	}
	header, _ := json.Marshal(map[string]string{"alg": alg, "kid": s.rec.KeyID, "typ": "JWT"})
	var aud any = req.Audience
	if len(req.Audience) == 1 {
		aud = req.Audience[0]
	}
	claims, _ := json.Marshal(map[string]any{
		"sub": req.ID.String(),
		"aud": aud,
		"iat": now.Unix(),
		"exp": exp.Unix(),
	})
	enc := base64.RawURLEncoding
	signingInput := enc.EncodeToString(header) + "." + enc.EncodeToString(claims)
	h := hash.New()
	h.Write([]byte(signingInput))
	der, err := s.jwtSigner.Sign(rand.Reader, h.Sum(nil), hash)
	if err != nil {
		return nil, fmt.Errorf("ca: sign JWT-SVID: %w", err)
	}
	raw, err := ecdsaDERToJOSE(der, size)
	if err != nil {
		return nil, err
	}
	token := signingInput + "." + enc.EncodeToString(raw)
	if err := c.opts.Audit.Append(ctx, "jwt-svid.issued", req.Actor, map[string]any{
		"spiffe_id": req.ID.String(),
		"audience":  req.Audience,
		"kid":       s.rec.KeyID,
		"expires":   exp,
	}); err != nil {
		return nil, fmt.Errorf("ca: audit JWT-SVID: %w", err)
	}
	return &JWTSVID{Token: token, ID: req.ID, Audience: req.Audience, IssuedAt: now, ExpiresAt: exp, KeyID: s.rec.KeyID}, nil
}

// Bounds on a JWT-SVID's audience, so that the token and its audit record
// stay small: a request over them is refused before anything is signed.
const (
	MaxAudiences         = 32
	MaxAudienceBytes     = 256
	MaxAudienceListBytes = 4 << 10
)

func checkAudience(aud []string) error {
	if len(aud) == 0 {
		return ErrBadAudience
	}
	if len(aud) > MaxAudiences {
		return fmt.Errorf("%w: %d audience values (max %d)", ErrBadAudience, len(aud), MaxAudiences)
	}
	total := 0
	for _, a := range aud {
		switch {
		case a == "":
			return fmt.Errorf("%w: empty audience value", ErrBadAudience)
		case len(a) > MaxAudienceBytes:
			return fmt.Errorf("%w: audience value of %d bytes (max %d)", ErrBadAudience, len(a), MaxAudienceBytes)
		}
		total += len(a)
	}
	if total > MaxAudienceListBytes {
		return fmt.Errorf("%w: audience values total %d bytes (max %d)", ErrBadAudience, total, MaxAudienceListBytes)
	}
	return nil
}

func jwsAlg(pub crypto.PublicKey) (alg string, hash crypto.Hash, size int, err error) {
	k, ok := pub.(*ecdsa.PublicKey)
	if !ok {
		return "", 0, 0, fmt.Errorf("ca: JWT key is %T, want ECDSA", pub)
	}
	switch k.Curve.Params().BitSize {
	case 256:
		return "ES256", crypto.SHA256, 32, nil
	case 384:
		return "ES384", crypto.SHA384, 48, nil
	}
	return "", 0, 0, fmt.Errorf("ca: JWT key curve %s unsupported", k.Curve.Params().Name)
}

// ecdsaDERToJOSE converts an ASN.1 ECDSA signature to JWS's fixed-width r||s.
func ecdsaDERToJOSE(der []byte, size int) ([]byte, error) {
	var sig struct{ R, S *big.Int }
	if _, err := asn1.Unmarshal(der, &sig); err != nil {
		return nil, fmt.Errorf("ca: HSM returned a malformed ECDSA signature: %w", err)
	}
	out := make([]byte, 2*size)
	sig.R.FillBytes(out[:size])
	sig.S.FillBytes(out[size:])
	return out, nil
}
