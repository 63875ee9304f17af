package attestor

import (
	"testing"
	"time"
)

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{"defaults", Config{}, true},
		{"nonce ttl too short", Config{NonceTTL: time.Millisecond}, false},
		{"nonce ttl too long", Config{NonceTTL: time.Hour}, false},
		{"session timeout too long", Config{SessionTimeout: time.Hour}, false},
		{"hello timeout too short", Config{HelloTimeout: time.Millisecond}, false},
		{"hello timeout over the session's", Config{SessionTimeout: 10 * time.Second, HelloTimeout: 20 * time.Second}, false},
		{"hello timeout defaults within a short session", Config{SessionTimeout: 2 * time.Second}, true},
		{"step timeout too short", Config{StepTimeout: time.Millisecond}, false},
		{"step timeout over the session's", Config{SessionTimeout: 10 * time.Second, StepTimeout: 20 * time.Second}, false},
		{"step timeout defaults within a short session", Config{SessionTimeout: 2 * time.Second}, true},
		{"tiny messages", Config{MaxMessageBytes: 100}, false},
		{"huge messages", Config{MaxMessageBytes: 1 << 30}, false},
		{"negative nonces", Config{MaxPendingNonces: -1}, false},
		{"negative sessions", Config{MaxSessions: -1}, false},
		{"unknown EK audit budget of one", Config{UnknownEKAuditPerMinute: 1}, true},
		{"unknown EK audit budget at the cap", Config{UnknownEKAuditPerMinute: 6000}, true},
		{"negative unknown EK audit budget", Config{UnknownEKAuditPerMinute: -1}, false},
		{"unknown EK audit budget over the cap", Config{UnknownEKAuditPerMinute: 6001}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.cfg.WithDefaults().Validate(); (err == nil) != tc.ok {
				t.Fatalf("Validate() = %v, want ok=%v", err, tc.ok)
			}
		})
	}
	if got := (Config{}).WithDefaults().UnknownEKAuditPerMinute; got != DefaultUnknownEKAuditPerMinute {
		t.Fatalf("default unknown_ek_audit_per_minute = %d, want %d", got, DefaultUnknownEKAuditPerMinute)
	}
	if got := (Config{}).WithDefaults().StepTimeout; got != DefaultStepTimeout {
		t.Fatalf("default step_timeout = %v, want %v", got, DefaultStepTimeout)
	}
}

func TestNonces(t *testing.T) {
	n := newNonces(10*time.Second, 2)
	now := time.Now()
	a := make([]byte, 32)
	b := make([]byte, 32)
	b[0] = 1
	c := make([]byte, 32)
	c[0] = 2
	if err := n.issue(a, 1, now); err != nil {
		t.Fatal(err)
	}
	if err := n.issue(b, 2, now); err != nil {
		t.Fatal(err)
	}
	if err := n.issue(c, 3, now); err != ErrTooManyNonces {
		t.Fatalf("over capacity: %v", err)
	}
	steps := []struct {
		nonce   []byte
		session uint64
		at      time.Duration
		want    error
	}{
		{a, 2, 0, ErrNonceSession},
		{a, 1, time.Second, nil},
		{a, 1, time.Second, ErrNonceReplayed},
		{c, 3, 0, ErrNonceUnknown},
		{b[:5], 2, 0, ErrNonceUnknown},
		{b, 2, 10 * time.Second, ErrNonceStale},
		{b, 2, 10 * time.Second, ErrNonceReplayed},
	}
	for i, s := range steps {
		if err := n.consume(s.nonce, s.session, now.Add(s.at)); err != s.want {
			t.Fatalf("step %d: err = %v, want %v", i, err, s.want)
		}
	}
	// Expired entries are collected and make room.
	if err := n.issue(c, 3, now.Add(time.Minute)); err != nil {
		t.Fatalf("after expiry: %v", err)
	}
}
