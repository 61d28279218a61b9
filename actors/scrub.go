package actors

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/meshfs/meshfs/persist"
	"golang.org/x/time/rate"
)

// ScrubStore is the node's own block store as the scrubber uses it.
// Get must verify the content and fail with persist.ErrCorrupt on a
// mismatch; Replace must replace a corrupt copy with verified data.
// TakeCorruptReplaced returns (once each) the blocks whose corrupt copy
// another write of the block replaced: a client's, a hedged write's, a
// peer's repair push. Those are rot found and repaired too, counted once
// with any the scrubber found itself.
type ScrubStore interface {
	List(ctx context.Context, fn func(id persist.BlockID, size int) error) error
	Get(ctx context.Context, id persist.BlockID) ([]byte, error)
	Replace(ctx context.Context, id persist.BlockID, data []byte) error
	TakeCorruptReplaced() []persist.BlockID
}

// GoodCopies fetches a verified copy of a block from another node.
type GoodCopies interface {
	Fetch(ctx context.Context, id persist.BlockID) ([]byte, error)
}

// ScrubConfig sets the scrubber's pace.
type ScrubConfig struct {
	// Period is how long one full pass over the store should take; the
	// scrubber spreads its reads over it. Default 24 h.
	Period time.Duration
	// MaxRate caps the scrub read rate in bytes/s, so scrubbing never
	// starves client I/O, even when Period is short. Default 50 MiB/s.
	MaxRate float64
	// MinRate is the rate at which a small store is scrubbed at the least,
	// so a pass does not crawl when there is little to read. Default 1 MiB/s.
	MinRate float64
	// Pause between passes; default Period/10, at least 1 s.
	Pause time.Duration
}

// ScrubStats is what the scrubber reports.
type ScrubStats struct {
	Passes       int64     `json:"passes"`         // full passes completed
	PassBlocks   int64     `json:"pass_blocks"`    // blocks in the current pass
	PassChecked  int64     `json:"pass_checked"`   // of those, checked so far
	Checked      int64     `json:"checked"`        // blocks verified, all passes
	CheckedBytes int64     `json:"checked_bytes"`  // bytes verified, all passes
	Corrupt      int64     `json:"corrupt"`        // corrupt copies found
	FoundByPass  int64     `json:"found_by_pass"`  // of those, by the regular pass (the rest by client reports, or by writes)
	FoundByWrite int64     `json:"found_by_write"` // of those, replaced by a write of the block before the scrubber found them
	FoundByDrop  int64     `json:"found_by_drop"`  // of those, surplus copies found corrupt as they were dropped (and counted repaired)
	Repaired     int64     `json:"repaired"`       // of those, replaced by a good copy (or dropped as surplus)
	LastPass     time.Time `json:"last_pass,omitzero"`
}

// Scrubber re-reads and verifies every block of one store, once per
// Period, and replaces a corrupt copy with a good one from another node. A
// block reported bad by a client (read-repair) is checked at once.
type Scrubber struct {
	store  ScrubStore
	copies GoodCopies
	cfg    ScrubConfig
	log    *slog.Logger
	urgent chan persist.BlockID

	mu    sync.Mutex
	stats ScrubStats
	// pending holds the blocks counted corrupt and not repaired yet: a
	// write that replaces one of them completes its repair, and one
	// found corrupt again is not counted again.
	pending map[persist.BlockID]bool
	// failed remembers blocks that could not be repaired, so reports of
	// them (two nodes with bad copies report each other) do not loop; the
	// regular pass still tries them once per pass.
	failed map[persist.BlockID]time.Time
}

// NewScrubber returns a scrubber; run it with Run.
func NewScrubber(store ScrubStore, copies GoodCopies, cfg ScrubConfig, log *slog.Logger) *Scrubber {
	if cfg.Period <= 0 {
		cfg.Period = 24 * time.Hour
	}
	if cfg.MaxRate <= 0 {
		cfg.MaxRate = 50 << 20
	}
	if cfg.MinRate <= 0 {
		cfg.MinRate = 1 << 20
	}
	if cfg.MinRate > cfg.MaxRate {
		cfg.MinRate = cfg.MaxRate
	}
	if cfg.Pause <= 0 {
		cfg.Pause = max(cfg.Period/10, time.Second)
	}
	return &Scrubber{store: store, copies: copies, cfg: cfg, log: log, urgent: make(chan persist.BlockID, 1024),
		pending: map[persist.BlockID]bool{}, failed: map[persist.BlockID]time.Time{}}
}

// Check asks for one block to be verified soon, ahead of the pass (a
// client read a bad copy of it here). It never blocks; when the queue is
// full the block waits for the regular pass.
func (s *Scrubber) Check(id persist.BlockID) {
	select {
	case s.urgent <- id:
	default:
	}
}

// Stats returns a snapshot of the counters.
func (s *Scrubber) Stats() ScrubStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.takeReplacedLocked()
	return s.stats
}

// Dropped counts a rotten copy that was deleted rather than repaired (a
// surplus copy, whose block its owners hold): found, and resolved.
func (s *Scrubber) Dropped(id persist.BlockID) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.resolvedLocked(id, &s.stats.FoundByDrop)
}

// takeReplacedLocked counts the corrupt copies others' writes replaced.
func (s *Scrubber) takeReplacedLocked() {
	for _, id := range s.store.TakeCorruptReplaced() {
		s.resolvedLocked(id, &s.stats.FoundByWrite)
	}
}

// resolvedLocked counts a rotten copy that something other than the
// scrubber's own repair resolved: as the repair of a copy already counted,
// else as found (in foundBy too) and repaired.
func (s *Scrubber) resolvedLocked(id persist.BlockID, foundBy *int64) {
	if !s.pending[id] {
		s.stats.Corrupt++
		*foundBy++
	}
	delete(s.pending, id)
	delete(s.failed, id)
	s.stats.Repaired++
}

// Run scrubs pass after pass until ctx ends.
func (s *Scrubber) Run(ctx context.Context) error {
	for {
		if err := s.pass(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			s.log.Warn("scrub pass failed; trying again after a pause", "err", err)
		}
		if err := s.wait(ctx, s.cfg.Pause); err != nil {
			return nil
		}
	}
}

// wait sleeps for d while still serving urgent checks.
func (s *Scrubber) wait(ctx context.Context, d time.Duration) error {
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-timer.C:
			return nil
		case id := <-s.urgent:
			s.verifyUrgent(ctx, id)
		}
	}
}

// verifyUrgent verifies a reported block, unless it could not be repaired
// within the last minute.
func (s *Scrubber) verifyUrgent(ctx context.Context, id persist.BlockID) {
	s.mu.Lock()
	at, failed := s.failed[id]
	s.mu.Unlock()
	if failed && time.Since(at) < time.Minute {
		return
	}
	s.verify(ctx, id, false)
}

func (s *Scrubber) pass(ctx context.Context) error {
	type entry struct {
		id   persist.BlockID
		size int
	}
	var blocks []entry
	var total int64
	err := s.store.List(ctx, func(id persist.BlockID, size int) error {
		blocks = append(blocks, entry{id, size})
		total += int64(size)
		return nil
	})
	if err != nil {
		return fmt.Errorf("list blocks to scrub: %w", err)
	}
	// Pace the pass to finish in about Period, within [MinRate, MaxRate].
	bps := min(max(float64(total)/s.cfg.Period.Seconds(), s.cfg.MinRate), s.cfg.MaxRate)
	limiter := rate.NewLimiter(rate.Limit(bps), 64<<20)
	limiter.AllowN(time.Now(), 64<<20) // start with an empty bucket: no burst
	s.mu.Lock()
	s.stats.PassBlocks, s.stats.PassChecked = int64(len(blocks)), 0
	s.mu.Unlock()
	for _, b := range blocks {
		if err := s.paceServingUrgent(ctx, limiter, min(max(b.size, 1), 64<<20)); err != nil {
			return err
		}
		s.verify(ctx, b.id, true)
		s.mu.Lock()
		s.stats.PassChecked++
		s.mu.Unlock()
	}
	s.mu.Lock()
	s.stats.Passes++
	s.stats.LastPass = time.Now()
	s.mu.Unlock()
	return nil
}

// paceServingUrgent waits until limiter allows n more bytes, checking the
// blocks readers report meanwhile: a slow pass (a low --scrub-max-rate, a
// long period) must not hold up read-repair, which has no pace.
func (s *Scrubber) paceServingUrgent(ctx context.Context, limiter *rate.Limiter, n int) error {
	r := limiter.ReserveN(time.Now(), n)
	if !r.OK() {
		return fmt.Errorf("scrub pace: %d bytes exceed the limiter's burst", n)
	}
	t := time.NewTimer(r.Delay())
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			r.Cancel()
			return ctx.Err()
		case id := <-s.urgent:
			s.verifyUrgent(ctx, id)
		case <-t.C:
			return nil
		}
	}
}

// verify checks one block and repairs it when it is corrupt; byPass tells
// whether the regular pass asked (else a report did).
func (s *Scrubber) verify(ctx context.Context, id persist.BlockID, byPass bool) {
	data, err := s.store.Get(ctx, id)
	switch {
	case err == nil:
		s.mu.Lock()
		s.stats.Checked++
		s.stats.CheckedBytes += int64(len(data))
		s.mu.Unlock()
		return
	case errors.Is(err, persist.ErrNotFound):
		// Deleted since it was listed (or since it was found corrupt).
		s.mu.Lock()
		delete(s.pending, id)
		delete(s.failed, id)
		s.mu.Unlock()
		return
	case !errors.Is(err, persist.ErrCorrupt):
		s.log.Warn("scrub: read block", "block", id, "err", err)
		return
	}
	s.mu.Lock()
	s.stats.Checked++
	s.takeReplacedLocked()
	if !s.pending[id] {
		s.pending[id] = true
		s.stats.Corrupt++
		if byPass {
			s.stats.FoundByPass++
		}
	}
	s.mu.Unlock()
	s.log.Warn("scrub: corrupt copy found; fetching a good one", "block", id)
	fctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	good, err := s.copies.Fetch(fctx, id)
	if err == nil {
		err = s.store.Replace(fctx, id, good)
	}
	s.mu.Lock()
	// A write of the block may have replaced the copy meanwhile, and
	// counted the repair.
	s.takeReplacedLocked()
	switch {
	case !s.pending[id]:
		err = nil
	case err != nil:
		s.failed[id] = time.Now()
	default:
		delete(s.pending, id)
		delete(s.failed, id)
		s.stats.Repaired++
	}
	s.mu.Unlock()
	if err != nil {
		s.log.Error("scrub: could not replace corrupt copy", "block", id, "err", err)
		return
	}
	s.log.Info("scrub: corrupt copy replaced", "block", id)
}
