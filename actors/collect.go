package actors

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/meshfs/meshfs/persist"
)

// CollectStore is the node's own block store as the collector uses it.
// A Put of a block that already exists refreshes its last-put time (to
// within a minute), and DeleteIfOlder checks that time and deletes in one
// step, so a block put again after the listing survives.
type CollectStore interface {
	PutTimes(ctx context.Context, fn func(id persist.BlockID, size int, lastPut time.Time) error) error
	DeleteIfOlder(ctx context.Context, id persist.BlockID, cutoff time.Time) (bool, error)
}

// References lists every block that some file's metadata refers to (each
// possibly more than once).
type References interface {
	ReferencedBlocks(ctx context.Context, fn func(id persist.BlockID) error) error
}

// CollectConfig tunes the collector.
type CollectConfig struct {
	// Grace: a block is collected only when it was last put longer ago
	// than this, before the marking began. It must exceed the longest time
	// a mount holds an uploaded block before committing the write that
	// references it, plus the store's one-minute refresh granularity.
	// Default 1 h.
	Grace time.Duration
	// Interval between collections; default 10 min.
	Interval time.Duration
}

// CollectStats is what the collector reports.
type CollectStats struct {
	Runs         int64     `json:"runs"`
	LastRun      time.Time `json:"last_run,omitzero"`
	Referenced   int       `json:"referenced"` // distinct referenced blocks at the last mark
	Collected    int64     `json:"collected"`  // blocks deleted, all runs
	CollectedB   int64     `json:"collected_bytes"`
	Failed       int64     `json:"failed"` // runs that could not mark, so swept nothing
	LastError    string    `json:"last_error,omitempty"`
	LastDuration float64   `json:"last_duration_s"`
}

// Collector removes this node's copies of blocks that no file references
// any more (after a delete, truncate or overwrite), by mark and sweep: it
// marks every block the metadata references, then deletes its own
// unreferenced blocks that were last put before the grace period that
// preceded the mark. A write in progress uploads its blocks (refreshing
// their time) before it commits the reference, so within the grace period
// its blocks are never taken. If marking fails, nothing is swept.
type Collector struct {
	store CollectStore
	refs  References
	cfg   CollectConfig
	log   *slog.Logger
	now   func() time.Time

	mu    sync.Mutex
	stats CollectStats
	// garbage is what the last mark found unreferenced and past the grace
	// here (deleted or not); repair asks, so that it does not copy back a
	// block that another node's collector has just removed.
	garbage map[persist.BlockID]bool
}

// IsGarbage reports whether the last collection found the block
// unreferenced and older than the grace period. Repair skips such blocks:
// re-replicating them would refresh their put time on the receiver and
// keep garbage alive for another grace period.
func (c *Collector) IsGarbage(id persist.BlockID) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.garbage[id]
}

// NewCollector returns a collector; run it with Run.
func NewCollector(store CollectStore, refs References, cfg CollectConfig, log *slog.Logger) *Collector {
	if cfg.Grace <= 0 {
		cfg.Grace = time.Hour
	}
	if cfg.Interval <= 0 {
		cfg.Interval = 10 * time.Minute
	}
	return &Collector{store: store, refs: refs, cfg: cfg, log: log, now: time.Now}
}

// Stats returns a snapshot of the counters.
func (c *Collector) Stats() CollectStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stats
}

// Run collects every Interval until ctx ends.
func (c *Collector) Run(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(c.cfg.Interval):
		}
		if err := c.Collect(ctx); err != nil && ctx.Err() == nil {
			c.log.Warn("collect: nothing swept this time", "err", err)
		}
	}
}

// Collect runs one mark and sweep.
func (c *Collector) Collect(ctx context.Context) error {
	start := c.now()
	// The cutoff is fixed before marking: a reference committed during or
	// after the mark points at a block put (or put again) after the cutoff.
	cutoff := start.Add(-c.cfg.Grace)
	referenced := map[persist.BlockID]struct{}{}
	err := c.refs.ReferencedBlocks(ctx, func(id persist.BlockID) error {
		referenced[id] = struct{}{}
		return nil
	})
	if err != nil {
		c.fail(err)
		return fmt.Errorf("mark referenced blocks: %w", err)
	}
	var doomed []persist.BlockID
	sizes := map[persist.BlockID]int{}
	err = c.store.PutTimes(ctx, func(id persist.BlockID, size int, lastPut time.Time) error {
		if _, ok := referenced[id]; !ok && lastPut.Before(cutoff) {
			doomed = append(doomed, id)
			sizes[id] = size
		}
		return nil
	})
	if err != nil {
		c.fail(err)
		return fmt.Errorf("list own blocks: %w", err)
	}
	var collected, bytes int64
	for _, id := range doomed {
		deleted, err := c.store.DeleteIfOlder(ctx, id, cutoff)
		if err != nil {
			c.log.Warn("collect: delete block", "block", id, "err", err)
			continue
		}
		if deleted {
			collected++
			bytes += int64(sizes[id])
		}
	}
	c.mu.Lock()
	c.garbage = make(map[persist.BlockID]bool, len(doomed))
	for _, id := range doomed {
		c.garbage[id] = true
	}
	c.stats.Runs++
	c.stats.LastRun = start
	c.stats.Referenced = len(referenced)
	c.stats.Collected += collected
	c.stats.CollectedB += bytes
	c.stats.LastError = ""
	c.stats.LastDuration = c.now().Sub(start).Seconds()
	c.mu.Unlock()
	if collected > 0 {
		c.log.Info("collect: removed unreferenced blocks", "blocks", collected, "bytes", bytes)
	}
	return nil
}

func (c *Collector) fail(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stats.Runs++
	c.stats.Failed++
	c.stats.LastError = err.Error()
}
