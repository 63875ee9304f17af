package agent

import (
	"testing"
	"time"
)

// A server without a keepalive.EnforcementPolicy (palisade-server had
// none) gets gRPC's default: a ping at most every 5 minutes, and only with
// a stream open. Pinging more often gets the connection closed with
// "too_many_pings".
func TestKeepaliveWithinServerPolicy(t *testing.T) {
	const serverMinTime = 5 * time.Minute
	if keepaliveParams.Time < serverMinTime {
		t.Fatalf("keepalive time %v, server allows pings every %v at most", keepaliveParams.Time, serverMinTime)
	}
	if keepaliveParams.PermitWithoutStream {
		t.Fatal("keepalive without a stream: the server's default policy refuses it")
	}
	if keepaliveParams.Timeout <= 0 {
		t.Fatal("keepalive timeout unset")
	}
}
