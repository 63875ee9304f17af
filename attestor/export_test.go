package attestor

import "time"

// SetSummaryTick makes Run look for due summaries every d; call it before
// Run.
func SetSummaryTick(s *Service, d time.Duration) { s.summaryTick = d }
