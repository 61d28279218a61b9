package fuse

import (
	"container/list"
	"context"
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
type fetch struct {
	done chan struct{}
	data []byte
	err  error
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
func (c *blockCache) get(ctx context.Context, id persist.BlockID, load func(context.Context, persist.BlockID) ([]byte, error)) ([]byte, error) {
	c.mu.Lock()
	if e, ok := c.entries[id]; ok {
		c.lru.MoveToFront(e)
		data := e.Value.(*cacheEntry).data
		c.mu.Unlock()
		return data, nil
	}
	if f, ok := c.fetches[id]; ok {
		c.mu.Unlock()
		select {
		case <-f.done:
			return f.data, f.err
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	f := &fetch{done: make(chan struct{})}
	c.fetches[id] = f
	c.mu.Unlock()

	f.data, f.err = load(ctx, id)

	c.mu.Lock()
	delete(c.fetches, id)
	if f.err == nil {
		c.addLocked(id, f.data)
	}
	c.mu.Unlock()
	close(f.done)
	return f.data, f.err
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
