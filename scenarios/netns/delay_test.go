package netns

import (
	"bytes"
	"slices"
	"sync"
	"testing"
	"time"
)

func TestDelayQueueOrder(t *testing.T) {
	q := newDelayQueue()
	t0 := time.Now()
	// Two sources: 1 delayed by 30, 2 by 10; within a source the due
	// times tie, so arrival order decides.
	q.push(1, []byte("1a"), t0.Add(30))
	q.push(2, []byte("2a"), t0.Add(10))
	q.push(1, []byte("1b"), t0.Add(30))
	q.push(2, []byte("2b"), t0.Add(10))
	if _, ok, wait := q.pop(t0); ok || wait != 10 {
		t.Fatalf("pop before due: ok=%v wait=%v", ok, wait)
	}
	var got []string
	for {
		d, ok, _ := q.pop(t0.Add(30))
		if !ok {
			break
		}
		got = append(got, string(d.pkt))
	}
	if want := []string{"2a", "2b", "1a", "1b"}; !slices.Equal(got, want) {
		t.Errorf("order %v, want %v", got, want)
	}
	if q.bytes != 0 {
		t.Errorf("%d bytes left in an empty queue", q.bytes)
	}
}

func TestDelayQueueCopiesAndBounds(t *testing.T) {
	q := newDelayQueue()
	pkt := []byte("abc")
	q.push(1, pkt, time.Now())
	pkt[0] = 'x'
	if d, _, _ := q.pop(time.Now()); !bytes.Equal(d.pkt, []byte("abc")) {
		t.Errorf("queued %q, the caller's buffer changed it", d.pkt)
	}
	big := make([]byte, maxQueuedBytes/2+1)
	if !q.push(1, big, time.Now()) {
		t.Fatal("first big packet refused")
	}
	if q.push(1, big, time.Now()) {
		t.Error("queue took more than maxQueuedBytes")
	}
}

func TestDelayQueueDrain(t *testing.T) {
	q := newDelayQueue()
	stop := make(chan struct{})
	var mu sync.Mutex
	var got []string
	var wg sync.WaitGroup
	wg.Go(func() {
		q.drain(stop, func(d delayed) {
			mu.Lock()
			got = append(got, string(d.pkt))
			mu.Unlock()
		})
	})
	start := time.Now()
	q.push(1, []byte("late"), start.Add(60*time.Millisecond))
	q.push(1, []byte("early"), start.Add(20*time.Millisecond))
	time.Sleep(40 * time.Millisecond)
	mu.Lock()
	if !slices.Equal(got, []string{"early"}) {
		t.Errorf("after 40 ms: %v, want [early]", got)
	}
	mu.Unlock()
	time.Sleep(60 * time.Millisecond)
	close(stop)
	wg.Wait()
	if !slices.Equal(got, []string{"early", "late"}) {
		t.Errorf("after 100 ms: %v, want [early late]", got)
	}
}
