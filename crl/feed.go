package crl

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// The revocation feed: GET /revocations?epoch=E&after=N long-polls for
// revocation events with sequence > N. Sequences restart with every server
// process, under a new random epoch; a client whose epoch differs, or that
// fell behind the retained window, gets reset=true and must bring its CRLs
// up to date (the current deltas suffice over a full CRL at or past their
// base), then continue from seq. An event is published only once a delta CRL
// holding it is being served, so a client that fetches the delta on an
// event always finds the serial there: the feed is a trigger, the signed
// CRL stays the authority.

// Event is one revocation in the feed.
type Event struct {
	Seq       uint64    `json:"seq"`
	Serial    string    `json:"serial"` // hex
	Issuer    string    `json:"issuer"` // issuer key ID (hex SKI)
	Reason    int       `json:"reason"`
	RevokedAt time.Time `json:"revoked_at"`
}

// FeedPage is the JSON body of a /revocations answer.
type FeedPage struct {
	Epoch  string  `json:"epoch"`
	Seq    uint64  `json:"seq"`             // latest sequence; pass as after next time
	Reset  bool    `json:"reset,omitempty"` // refetch CRLs, then continue from Seq
	Events []Event `json:"events,omitempty"`
}

const (
	feedRetain  = 1 << 16
	feedMaxPage = 1000
)

type feed struct {
	epoch   string
	timeout time.Duration

	mu     sync.Mutex
	seq    uint64
	events []Event       // the last feedRetain events, ascending
	wake   chan struct{} // closed on publish
}

func newFeed(timeout time.Duration) *feed {
	b := make([]byte, 8)
	rand.Read(b)
	return &feed{epoch: hex.EncodeToString(b), timeout: timeout, wake: make(chan struct{})}
}

func (f *feed) publish(evs []Event) {
	if len(evs) == 0 {
		return
	}
	f.mu.Lock()
	for _, e := range evs {
		f.seq++
		e.Seq = f.seq
		f.events = append(f.events, e)
	}
	if over := len(f.events) - feedRetain; over > 0 {
		f.events = append(f.events[:0:0], f.events[over:]...)
	}
	close(f.wake)
	f.wake = make(chan struct{})
	f.mu.Unlock()
}

// page returns events after 'after', or nil and a channel that closes when
// more arrive.
func (f *feed) page(epoch string, after uint64) (FeedPage, <-chan struct{}) {
	f.mu.Lock()
	defer f.mu.Unlock()
	p := FeedPage{Epoch: f.epoch, Seq: f.seq}
	oldest := f.seq - uint64(len(f.events)) // events hold oldest+1 .. seq
	if epoch != f.epoch || after > f.seq || after < oldest {
		p.Reset = true
		return p, nil
	}
	if after == f.seq {
		return p, f.wake
	}
	evs := f.events[after-oldest:]
	if len(evs) > feedMaxPage {
		evs = evs[:feedMaxPage]
	}
	p.Events = append([]Event(nil), evs...)
	p.Seq = evs[len(evs)-1].Seq
	return p, nil
}

func (f *feed) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", "GET")
		http.Error(w, "GET only", http.StatusMethodNotAllowed)
		return
	}
	q := r.URL.Query()
	var after uint64
	if s := q.Get("after"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			http.Error(w, "after: not a sequence number", http.StatusBadRequest)
			return
		}
		after = n
	}
	timeout := f.timeout
	if s := q.Get("wait"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d < 0 {
			http.Error(w, "wait: not a duration", http.StatusBadRequest)
			return
		}
		timeout = min(timeout, d)
	}
	p, wake := f.page(q.Get("epoch"), after)
	if wake != nil && timeout > 0 {
		t := time.NewTimer(timeout)
		select {
		case <-wake:
			p, _ = f.page(q.Get("epoch"), after)
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			return
		}
		t.Stop()
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	json.NewEncoder(w).Encode(p)
}
