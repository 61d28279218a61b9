package fuse

import "sync"

// budget counts the bytes a mount holds in dirty and uploading buffers
// against the write-buffer size. Writers take room before they grow a
// buffer and uploads give it back once the block is on the mesh, so memory
// stays bounded however fast a program writes.
type budget struct {
	mu     sync.Mutex
	cond   sync.Cond
	max    int64
	used   int64
	high   int64 // the most ever used, for tests and logs
	closed bool
}

func newBudget(max int64) *budget {
	b := &budget{max: max}
	b.cond.L = &b.mu
	return b
}

// fits reports whether n more bytes fit. A request larger than the whole
// budget fits into an empty one, so a tiny budget slows writers down but
// never stops them.
func (b *budget) fits(n int64) bool {
	return b.used+n <= b.max || b.used == 0
}

// tryAcquire takes n bytes if they fit, without waiting.
func (b *budget) tryAcquire(n int64) bool {
	if n <= 0 {
		return true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.fits(n) {
		return false
	}
	b.used += n
	b.high = max(b.high, b.used)
	return true
}

// release gives n bytes back and wakes waiting writers.
func (b *budget) release(n int64) {
	if n <= 0 {
		return
	}
	b.mu.Lock()
	b.used -= n
	b.mu.Unlock()
	b.cond.Broadcast()
}

// wake wakes waiting writers without releasing anything, so they re-check
// their stop condition (an upload failed).
func (b *budget) wake() { b.cond.Broadcast() }

// waitRoom blocks until n bytes fit, and returns true; or returns false as
// soon as the budget is closed or stop (checked at every wake-up) is true.
// It takes nothing: the caller retries tryAcquire, so waiting never holds
// part of the budget.
func (b *budget) waitRoom(n int64, stop func() bool) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	for !b.fits(n) {
		if b.closed || stop() {
			return false
		}
		b.cond.Wait()
	}
	return true
}

// close fails every present and future waitRoom (unmount).
func (b *budget) close() {
	b.mu.Lock()
	b.closed = true
	b.mu.Unlock()
	b.cond.Broadcast()
}

// peak returns the most bytes ever held at once.
func (b *budget) peak() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.high
}

// inUse returns the bytes held (for tests and logs).
func (b *budget) inUse() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used
}
