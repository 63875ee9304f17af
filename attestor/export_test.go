package attestor

import (
	"context"
	"time"
)

// SetSummaryTick makes Run look for due summaries every d; call it before
// Run.
func SetSummaryTick(s *Service, d time.Duration) { s.summaryTick = d }

// FinishBans runs Run's completion of interrupted bans once.
func FinishBans(s *Service, ctx context.Context) bool { return s.finishBans(ctx) }
