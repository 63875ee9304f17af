package memca

import (
	"context"
	"sync"
)

// Record is one audit record a Recorder kept.
type Record struct {
	Kind, Actor string
	Data        any
}

// Recorder is an audit sink that keeps every record in memory; Fail makes
// it refuse appends, as a full audit disk would.
type Recorder struct {
	mu      sync.Mutex
	records []Record
	err     error
}

// Append implements ca.Auditor (and the attestor's and crl's auditors).
func (a *Recorder) Append(_ context.Context, kind, actor string, data any) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.err != nil {
		return a.err
	}
	a.records = append(a.records, Record{kind, actor, data})
	return nil
}

// Fail makes every Append fail with err (nil: succeed again).
func (a *Recorder) Fail(err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.err = err
}

// Count returns how many records of kind were appended.
func (a *Recorder) Count(kind string) int { return len(a.OfKind(kind)) }

// Snapshot returns a copy of the records so far.
func (a *Recorder) Snapshot() []Record {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]Record(nil), a.records...)
}

// Last returns the latest record of kind.
func (a *Recorder) Last(kind string) (Record, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for i := len(a.records) - 1; i >= 0; i-- {
		if a.records[i].Kind == kind {
			return a.records[i], true
		}
	}
	return Record{}, false
}

// OfKind returns the records of kind, oldest first.
func (a *Recorder) OfKind(kind string) []Record {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []Record
	for _, r := range a.records {
		if r.Kind == kind {
			out = append(out, r)
		}
	}
	return out
}
