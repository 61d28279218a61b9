package fuse

import (
	"container/list"
	"context"
	"fmt"
	"sync"

	"github.com/meshfs/meshfs/persist"
)

// blockCache keeps the contents of the blocks a mount read last, and makes
// concurrent fetches of one block share a single request to the mesh.
// Blocks are named by their content, so an entry never goes stale; entries
// are shared and must not be modified.
type blockCache struct {
	mu          sync.Mutex
	max         int
	lru         *list.List // of *cacheEntry, most recently used first
	entries     map[persist.BlockID]*list.Element
	fetches     map[persist.BlockID]*fetch
	prefetching int
	maxPrefetch int
}

type cacheEntry struct {
	id   persist.BlockID
	data []byte
}

// fetch is one block being read from the mesh; done is closed when data
// and err are set.
//
// The load runs under a context of its own, not the context of the caller
// that happened to start it: the kernel interrupts a request on any signal,
// and one interrupted reader must not fail the others waiting for the same
// block with its cancellation. The load is cancelled only once every caller
// waiting for it has given up.
type fetch struct {
	done chan struct{}
	data []byte
	err  error
	// Guarded by blockCache.mu.
	waiters int // callers still waiting for the result, the leader included
	cancel  context.CancelFunc
}

func newBlockCache(max, maxPrefetch int) *blockCache {
	return &blockCache{
		max:         max,
		lru:         list.New(),
		entries:     make(map[persist.BlockID]*list.Element),
		fetches:     make(map[persist.BlockID]*fetch),
		maxPrefetch: maxPrefetch,
	}
}

// get returns the block's content from the cache, from a fetch already in
// progress, or by calling load (whose result is cached if it succeeds).
// A caller whose ctx ends before the block arrives gets ctx's error; the
// fetch goes on for the others.
func (c *blockCache) get(ctx context.Context, id persist.BlockID, load func(context.Context, persist.BlockID) ([]byte, error)) ([]byte, error) {
	c.mu.Lock()
	if e, ok := c.entries[id]; ok {
		c.lru.MoveToFront(e)
		data := e.Value.(*cacheEntry).data
		c.mu.Unlock()
		return data, nil
	}
	if f, ok := c.fetches[id]; ok {
		f.waiters++
		c.mu.Unlock()
		select {
		case <-f.done:
			return f.data, f.err
		case <-ctx.Done():
			c.giveUp(id, f)
			return nil, fmt.Errorf("wait for block %s: %w", id, ctx.Err())
		}
	}
	// The caller's values (its identity) are kept, its cancellation is not.
	fctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	f := &fetch{done: make(chan struct{}), waiters: 1, cancel: cancel}
	c.fetches[id] = f
	c.mu.Unlock()

	// The leader loads the block itself, and keeps waiting for it after
	// its own ctx ends if others still want it; it only stops counting
	// as interested, so the load is cancelled when nobody is.
	stop := context.AfterFunc(ctx, func() { c.giveUp(id, f) })
	data, err := load(fctx, id)
	stop()

	c.mu.Lock()
	if c.fetches[id] == f {
		delete(c.fetches, id)
	}
	if err == nil {
		c.addLocked(id, data)
	}
	f.data, f.err = data, err
	c.mu.Unlock()
	close(f.done)
	if err != nil && ctx.Err() != nil {
		// Most likely cancelled because this caller gave up (and
		// nobody else waited): report that, as a waiter would.
		return nil, fmt.Errorf("fetch block %s: %w (%w)", id, ctx.Err(), err)
	}
	return data, err
}

// giveUp records that a caller waiting for f no longer does. When nobody
// waits any more the fetch is cancelled and forgotten, so a later caller
// starts a new one rather than inheriting a cancellation not its own.
func (c *blockCache) giveUp(id persist.BlockID, f *fetch) {
	c.mu.Lock()
	defer c.mu.Unlock()
	f.waiters--
	if f.waiters > 0 {
		return
	}
	if c.fetches[id] == f {
		delete(c.fetches, id)
	}
	f.cancel()
}

// waitersOf returns how many callers wait for a fetch of id (for tests).
func (c *blockCache) waitersOf(id persist.BlockID) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if f := c.fetches[id]; f != nil {
		return f.waiters
	}
	return 0
}

// put adds content the mount already has (a block it just uploaded).
func (c *blockCache) put(id persist.BlockID, data []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.addLocked(id, data)
}

func (c *blockCache) addLocked(id persist.BlockID, data []byte) {
	if e, ok := c.entries[id]; ok {
		c.lru.MoveToFront(e)
		return
	}
	c.entries[id] = c.lru.PushFront(&cacheEntry{id: id, data: data})
	for c.lru.Len() > c.max {
		last := c.lru.Back()
		c.lru.Remove(last)
		delete(c.entries, last.Value.(*cacheEntry).id)
	}
}

// startPrefetch reports whether a prefetch of id should start: the block is
// neither cached nor being fetched, and fewer than maxPrefetch prefetches
// run. A true result must be followed by endPrefetch.
func (c *blockCache) startPrefetch(id persist.BlockID) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.entries[id]; ok {
		return false
	}
	if _, ok := c.fetches[id]; ok {
		return false
	}
	if c.prefetching >= c.maxPrefetch {
		return false
	}
	c.prefetching++
	return true
}

func (c *blockCache) endPrefetch() {
	c.mu.Lock()
	c.prefetching--
	c.mu.Unlock()
}

// readBlock returns a block's content through the mount's cache.
func (m *FS) readBlock(ctx context.Context, id persist.BlockID) ([]byte, error) {
	return m.cache.get(ctx, id, m.loadBlock)
}

func (m *FS) loadBlock(ctx context.Context, id persist.BlockID) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, blockTimeout)
	defer cancel()
	return m.blocks.Read(ctx, id)
}

// prefetch reads a block into the cache in the background (read-ahead).
func (m *FS) prefetch(id persist.BlockID) {
	if m.ctx.Err() != nil || !m.cache.startPrefetch(id) {
		return
	}
	m.bg.Add(1)
	go func() {
		defer m.bg.Done()
		defer m.cache.endPrefetch()
		if _, err := m.readBlock(m.ctx, id); err != nil && m.ctx.Err() == nil {
			// A failed read-ahead costs nothing: the read that needs
			// the block fetches it again and reports the error.
			m.log.Debug("meshfs: read-ahead failed", "block", id.String(), "err", err)
		}
	}()
}
