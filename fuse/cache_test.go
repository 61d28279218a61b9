package fuse

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshfs/meshfs/persist"
)

func TestBlockCacheSharesFetches(t *testing.T) {
	c := newBlockCache(2, 1)
	var loads atomic.Int64
	release := make(chan struct{})
	load := func(ctx context.Context, id persist.BlockID) ([]byte, error) {
		loads.Add(1)
		<-release
		return id[:], nil
	}
	id := persist.Sum([]byte("a"))
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			data, err := c.get(context.Background(), id, load)
			if err != nil || string(data) != string(id[:]) {
				t.Errorf("get = %x, %v", data, err)
			}
		}()
	}
	time.Sleep(20 * time.Millisecond) // let them all find the fetch
	close(release)
	wg.Wait()
	if n := loads.Load(); n != 1 {
		t.Errorf("%d loads for 8 concurrent gets of one block, want 1", n)
	}
	if c.startPrefetch(id) {
		t.Error("prefetch of a cached block started")
	}
}

func TestBlockCacheEvictsLeastRecentlyUsed(t *testing.T) {
	c := newBlockCache(2, 1)
	var loads atomic.Int64
	load := func(ctx context.Context, id persist.BlockID) ([]byte, error) {
		loads.Add(1)
		return id[:], nil
	}
	a, b, d := persist.Sum([]byte("a")), persist.Sum([]byte("b")), persist.Sum([]byte("d"))
	ctx := context.Background()
	for _, id := range []persist.BlockID{a, b, a, d, a} { // d evicts b, not a
		if _, err := c.get(ctx, id, load); err != nil {
			t.Fatal(err)
		}
	}
	if n := loads.Load(); n != 3 {
		t.Errorf("%d loads, want 3", n)
	}
	if _, err := c.get(ctx, b, load); err != nil || loads.Load() != 4 {
		t.Errorf("b should have been evicted and loaded again (loads %d)", loads.Load())
	}
}

func TestBudgetWaitsForRoom(t *testing.T) {
	b := newBudget(100)
	if !b.tryAcquire(80) || b.tryAcquire(30) {
		t.Fatal("80 of 100 fit, then 30 more must not")
	}
	done := make(chan bool)
	go func() { done <- b.waitRoom(30, func() bool { return false }) }()
	select {
	case <-done:
		t.Fatal("waitRoom returned with no room")
	case <-time.After(20 * time.Millisecond):
	}
	b.release(50)
	if !<-done {
		t.Error("waitRoom failed after room was made")
	}
	// More than the whole budget fits into an empty one only.
	b.release(30)
	if !b.tryAcquire(500) {
		t.Error("an oversized request into an empty budget must fit")
	}
	b.close()
	if b.waitRoom(1, func() bool { return false }) {
		t.Error("waitRoom succeeded on a closed, full budget")
	}
}

func TestMountinfoHas(t *testing.T) {
	info := "22 1 0:21 / /proc rw - proc proc rw\n" +
		"40 22 0:50 / /tmp/with\\040space rw - fuse.meshfs meshfs rw\n"
	for dir, want := range map[string]bool{"/proc": true, "/tmp/with space": true, "/tmp": false} {
		got, err := mountinfoHas(strings.NewReader(info), dir)
		if err != nil || got != want {
			t.Errorf("mountinfoHas(%q) = %v, %v; want %v", dir, got, err, want)
		}
	}
}

// TestBlockCacheLeaderCancelled: the caller that started a fetch being
// interrupted must not fail another caller waiting for the same block.
func TestBlockCacheLeaderCancelled(t *testing.T) {
	c := newBlockCache(2, 1)
	started, release := make(chan struct{}), make(chan struct{})
	var loads atomic.Int64
	load := func(ctx context.Context, id persist.BlockID) ([]byte, error) {
		if loads.Add(1) == 1 {
			close(started)
		}
		select {
		case <-release:
			return id[:], nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	id := persist.Sum([]byte("a"))
	leaderCtx, cancelLeader := context.WithCancel(context.Background())
	leaderDone := make(chan error, 1)
	go func() {
		_, err := c.get(leaderCtx, id, load)
		leaderDone <- err
	}()
	<-started
	waiterDone := make(chan error, 1)
	go func() {
		data, err := c.get(context.Background(), id, load)
		if err == nil && string(data) != string(id[:]) {
			err = errors.New("wrong content")
		}
		waiterDone <- err
	}()
	waitFor(t, "the waiter to join the fetch", func() bool { return c.waitersOf(id) == 2 })
	cancelLeader()
	waitFor(t, "the leader's interest to end", func() bool { return c.waitersOf(id) == 1 })
	close(release)
	if err := <-waiterDone; err != nil {
		t.Errorf("waiter: %v, want the block (the leader's cancellation is not its own)", err)
	}
	<-leaderDone // the leader may see its own cancellation or the block
	if n := loads.Load(); n != 1 {
		t.Errorf("%d loads, want 1", n)
	}
}

// TestBlockCacheAbandonedFetch: a fetch nobody waits for any more is
// cancelled, and a later caller starts a fresh one instead of inheriting
// that cancellation.
func TestBlockCacheAbandonedFetch(t *testing.T) {
	c := newBlockCache(2, 1)
	var loads atomic.Int64
	cancelled := make(chan struct{})
	load := func(ctx context.Context, id persist.BlockID) ([]byte, error) {
		if loads.Add(1) == 1 {
			<-ctx.Done()
			close(cancelled)
			return nil, ctx.Err()
		}
		return id[:], nil
	}
	id := persist.Sum([]byte("a"))
	ctx, cancel := context.WithCancel(context.Background())
	first := make(chan error, 1)
	go func() {
		_, err := c.get(ctx, id, load)
		first <- err
	}()
	waitFor(t, "the fetch to start", func() bool { return loads.Load() == 1 })
	cancel()
	select {
	case <-cancelled:
	case <-time.After(5 * time.Second):
		t.Fatal("an abandoned fetch was not cancelled")
	}
	if err := <-first; !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled caller: %v, want context.Canceled", err)
	}
	data, err := c.get(context.Background(), id, load)
	if err != nil || string(data) != string(id[:]) {
		t.Errorf("get after an abandoned fetch = %x, %v", data, err)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}
