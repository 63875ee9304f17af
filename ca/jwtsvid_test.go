package ca_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/palisade-id/palisade/ca"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// TestJWTSVIDAudienceBounds checks that an audience over the bounds is a
// request error, refused before anything is signed or audited.
func TestJWTSVIDAudienceBounds(t *testing.T) {
	f := newFixture(t, nil)
	id := spiffeid.RequireFromString("spiffe://" + td + "/web")
	many := func(n, size int) []string {
		out := make([]string, n)
		for i := range out {
			out[i] = strings.Repeat(string(rune('a'+i%26)), size)
		}
		return out
	}
	tests := []struct {
		name     string
		audience []string
		ok       bool
	}{
		{name: "at the count cap", audience: many(ca.MaxAudiences, 1), ok: true},
		{name: "over the count cap", audience: many(ca.MaxAudiences+1, 1)},
		{name: "value at the size cap", audience: many(1, ca.MaxAudienceBytes), ok: true},
		{name: "value over the size cap", audience: many(1, ca.MaxAudienceBytes+1)},
		{name: "64 KiB value", audience: many(1, 64<<10)},
		{name: "total at the cap", audience: many(ca.MaxAudienceListBytes/ca.MaxAudienceBytes, ca.MaxAudienceBytes), ok: true},
		{name: "total over the cap", audience: append(many(ca.MaxAudienceListBytes/ca.MaxAudienceBytes, ca.MaxAudienceBytes), "x")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before, _ := f.log.Head()
			tok, err := f.ca.SignJWTSVID(context.Background(), ca.JWTRequest{ID: id, Audience: tt.audience, Actor: "test"})
			after, _ := f.log.Head()
			if tt.ok {
				if err != nil || tok.Token == "" {
					t.Fatalf("SignJWTSVID: %v", err)
				}
				return
			}
			if !errors.Is(err, ca.ErrBadAudience) || !ca.IsRequestError(err) {
				t.Fatalf("err = %v, want a request error wrapping ErrBadAudience", err)
			}
			if after != before {
				t.Fatalf("refused request was audited: %d → %d", before, after)
			}
		})
	}
}
