package attestor

import (
	"fmt"
	"testing"
	"time"
)

// The per-EK allowances are bounded in memory, and an EK over its
// allowance stays refused while the budget has tokens for others.
func TestAuditBudgetAllowances(t *testing.T) {
	now := time.Now()
	tests := []struct {
		name    string
		perMin  int
		ek      string
		tries   int
		allowed int
	}{
		{"allowance of five within a large budget", 6000, "flood", 20, perEKAuditPerMinute},
		{"allowance no larger than a small budget", 2, "flood", 20, 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := newAuditBudget(tc.perMin)
			got := 0
			for range tc.tries {
				if b.allow(now, true, reasonActivation, tc.ek, "peer") {
					got++
				}
			}
			if got != tc.allowed || b.pending.Count != uint64(tc.tries-got) {
				t.Fatalf("allowed %d, pending %d; want %d allowed", got, b.pending.Count, tc.allowed)
			}
			if tc.perMin > tc.allowed && !b.allow(now, true, reasonActivation, "other", "peer") {
				t.Fatal("another EK refused while the budget has tokens")
			}
			// A minute on, the EK's allowance is full again.
			if !b.allow(now.Add(time.Minute), true, reasonActivation, tc.ek, "peer") {
				t.Fatal("allowance not refilled after a minute")
			}
		})
	}
	t.Run("tracked EKs bounded", func(t *testing.T) {
		b := newAuditBudget(6000)
		for i := range 3 * maxTrackedEKs {
			b.allow(now, false, reasonNoEntry, fmt.Sprint(i), "peer")
			if len(b.eks) > maxTrackedEKs {
				t.Fatalf("%d EKs tracked after %d, max %d", len(b.eks), i+1, maxTrackedEKs)
			}
		}
	})
}
