package main

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// syncBuffer is a log sink safe for serveHUP's goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestServeHUP(t *testing.T) {
	tests := []struct {
		name      string
		enforcing bool
		events    string // h: SIGHUP, e: the enforcer comes up
		fail      bool   // reloads fail
		reloads   int
		wantLog   string
	}{
		{"attestation only", false, "hh", false, 0, "SIGHUP ignored"},
		{"before the enforcer", true, "hhe", false, 1, "reload deferred"},
		{"enforcer up, no SIGHUP", true, "e", false, 0, ""},
		{"enforcer running", true, "ehh", false, 2, "policy reloaded"},
		{"refused reload", true, "eh", true, 1, "policy reload refused"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var logs syncBuffer
			log := slog.New(slog.NewTextHandler(&logs, nil))
			// Unbuffered: each send returns once serveHUP has taken it, so
			// events are seen in order.
			hup := make(chan os.Signal)
			var enforcerUp chan func() error
			if tc.enforcing {
				enforcerUp = make(chan func() error)
			}
			reloads := 0 // only serveHUP's goroutine writes it until it returns
			reload := func() error {
				reloads++
				if tc.fail {
					return errors.New("bad policy")
				}
				return nil
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { defer close(done); serveHUP(ctx, hup, enforcerUp, log) }()
			send := func(what string, f func()) {
				t.Helper()
				ok := make(chan struct{})
				go func() { f(); close(ok) }()
				select {
				case <-ok:
				case <-done:
					t.Fatalf("serveHUP returned before taking %s", what)
				case <-time.After(5 * time.Second):
					t.Fatalf("serveHUP did not take %s", what)
				}
			}
			for _, ev := range tc.events {
				switch ev {
				case 'h':
					send("SIGHUP", func() { hup <- syscall.SIGHUP })
				case 'e':
					send("the enforcer", func() { enforcerUp <- reload })
				}
			}
			// serveHUP finishes handling an event before it looks at ctx again.
			cancel()
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				t.Fatal("serveHUP did not return after cancel")
			}
			if reloads != tc.reloads {
				t.Fatalf("%d reloads, want %d; log:\n%s", reloads, tc.reloads, logs.String())
			}
			if !strings.Contains(logs.String(), tc.wantLog) {
				t.Fatalf("log lacks %q:\n%s", tc.wantLog, logs.String())
			}
		})
	}
}
