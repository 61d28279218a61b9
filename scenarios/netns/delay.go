package netns

import (
	"container/heap"
	"sync"
	"time"
)

// maxQueuedBytes bounds what one destination's delay queue holds; a packet
// that would go past it is dropped, as by a router whose buffer is full.
// 64 MiB holds half a second of 1 Gbit/s.
const maxQueuedBytes = 64 << 20

// delayQueue holds the delayed packets bound for one destination until
// they are due, earliest first. Packets due at the same time leave in the
// order they came, so a flow whose delay does not change (no jitter)
// keeps its order, even when other sources' packets, delayed differently,
// are in the queue.
type delayQueue struct {
	mu    sync.Mutex
	items delayHeap
	seq   uint64 // of the next packet pushed
	bytes int    // held in items

	// wake has room for one signal: a push tells the goroutine that
	// drains the queue to look again.
	wake chan struct{}
}

// delayed is one packet held by a delay queue.
type delayed struct {
	due  time.Time
	seq  uint64
	from byte // last byte of the source's address
	pkt  []byte
}

func newDelayQueue() *delayQueue {
	return &delayQueue{wake: make(chan struct{}, 1)}
}

// push copies pkt into the queue, due at due. It reports false, and keeps
// nothing, if the queue is full.
func (q *delayQueue) push(from byte, pkt []byte, due time.Time) bool {
	q.mu.Lock()
	if q.bytes+len(pkt) > maxQueuedBytes {
		q.mu.Unlock()
		return false
	}
	heap.Push(&q.items, delayed{due: due, seq: q.seq, from: from, pkt: append([]byte(nil), pkt...)})
	q.seq++
	q.bytes += len(pkt)
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
	return true
}

// pop removes and returns the earliest packet if it is due at now. If not,
// it returns how long until it is, or 0 if the queue is empty.
func (q *delayQueue) pop(now time.Time) (d delayed, ok bool, wait time.Duration) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.items) == 0 {
		return delayed{}, false, 0
	}
	if wait := q.items[0].due.Sub(now); wait > 0 {
		return delayed{}, false, wait
	}
	d = heap.Pop(&q.items).(delayed)
	q.bytes -= len(d.pkt)
	return d, true, 0
}

// drain sends each packet of q with send when it is due, until stop is
// closed; what is still queued then is dropped.
func (q *delayQueue) drain(stop <-chan struct{}, send func(delayed)) {
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		d, ok, wait := q.pop(time.Now())
		if ok {
			send(d)
			continue
		}
		var due <-chan time.Time
		if wait > 0 {
			timer.Reset(wait)
			due = timer.C
		}
		select {
		case <-stop:
			timer.Stop()
			return
		case <-q.wake:
		case <-due:
		}
		timer.Stop()
	}
}

// delayHeap orders delayed packets by due time, then by arrival.
type delayHeap []delayed

func (h delayHeap) Len() int { return len(h) }
func (h delayHeap) Less(i, j int) bool {
	if !h[i].due.Equal(h[j].due) {
		return h[i].due.Before(h[j].due)
	}
	return h[i].seq < h[j].seq
}
func (h delayHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *delayHeap) Push(x any)   { *h = append(*h, x.(delayed)) }
func (h *delayHeap) Pop() any {
	old := *h
	d := old[len(old)-1]
	old[len(old)-1] = delayed{}
	*h = old[:len(old)-1]
	return d
}
