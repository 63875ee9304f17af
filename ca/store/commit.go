package store

import (
	"errors"
	"fmt"
	"sync"

	bolt "go.etcd.io/bbolt"
)

// Group commit for RecordIssued.
//
// bbolt's own Batch starts a batch on a timer (MaxBatchDelay) or when it
// holds MaxBatchSize calls. Measured here, neither setting fits a CA: a short
// delay fires before the callers released by the previous commit have all
// come back, so batches fragment and each fragment pays a full commit (two
// fdatasyncs); a long delay is added latency for every lone caller; and the
// size cannot track the number of callers. This committer has no timer: a
// caller that finds no commit running commits at once; callers that arrive
// while a commit runs queue, and the first of them commits the whole queue
// next. A batch is therefore exactly the callers that waited for one commit,
// a lone caller pays one commit, and N steady callers get N records per
// commit.
type committer struct {
	mu      sync.Mutex
	queue   []*call
	running bool
	max     int
	commits uint64 // batches committed, for Stats
	records uint64 // calls answered through batches
}

type call struct {
	fn   func(*bolt.Tx) error
	done chan error // buffered: errLead, then the result
}

// errLead hands the commit duty to a queued caller.
var errLead = errors.New("store: lead the next commit")

// groupUpdate runs fn in a write transaction shared with concurrent callers
// and returns once that transaction is durable. fn may run more than once
// (the batch is replayed without a failing call, which is then run alone),
// so it must be idempotent and have no effect outside tx.
func (s *Store) groupUpdate(what string, fn func(*bolt.Tx) error) error {
	c := &call{fn: fn, done: make(chan error, 1)}
	g := &s.commit
	g.mu.Lock()
	g.queue = append(g.queue, c)
	lead := !g.running
	g.running = true
	g.mu.Unlock()
	if lead {
		s.lead(what)
	}
	err := <-c.done
	if err == errLead {
		s.lead(what)
		err = <-c.done
	}
	return err
}

// lead commits one batch from the queue, then passes the duty on.
func (s *Store) lead(what string) {
	g := &s.commit
	g.mu.Lock()
	n := min(len(g.queue), g.max)
	batch := append([]*call(nil), g.queue[:n]...)
	g.queue = append(g.queue[:0], g.queue[n:]...)
	g.mu.Unlock()

	s.commitBatch(what, batch)

	g.mu.Lock()
	g.commits++
	g.records += uint64(len(batch))
	if len(g.queue) > 0 {
		g.queue[0].done <- errLead
	} else {
		g.running = false
	}
	g.mu.Unlock()
}

func (s *Store) commitBatch(what string, batch []*call) {
	for len(batch) > 0 {
		failed := -1
		err := s.update(what, func(tx *bolt.Tx) error {
			for i, c := range batch {
				if err := s.callGuarded(what, c.fn, tx); err != nil {
					failed = i
					return err
				}
			}
			return nil
		})
		if failed < 0 {
			for _, c := range batch {
				c.done <- err
			}
			return
		}
		// Replay the others without the failing call, which gets its
		// own answer from a transaction of its own.
		c := batch[failed]
		batch = append(batch[:failed:failed], batch[failed+1:]...)
		c.done <- s.update(what, func(tx *bolt.Tx) error { return s.callGuarded(what, c.fn, tx) })
	}
}

func (s *Store) callGuarded(what string, fn func(*bolt.Tx) error, tx *bolt.Tx) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%w: %s: %s: %v", ErrCorrupt, s.path, what, p)
		}
	}()
	return fn(tx)
}
