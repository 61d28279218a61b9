package actors

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/meshfs/meshfs/persist"
)

// timedStore is a block store that remembers when each block was put.
type timedStore struct {
	mu      sync.Mutex
	lastPut map[persist.BlockID]time.Time
	// afterList runs once the listing is done, before any delete: the
	// moment a racing write would land.
	afterList func()
}

func (s *timedStore) PutTimes(ctx context.Context, fn func(persist.BlockID, int, time.Time) error) error {
	s.mu.Lock()
	snap := map[persist.BlockID]time.Time{}
	for id, t := range s.lastPut {
		snap[id] = t
	}
	s.mu.Unlock()
	for id, t := range snap {
		if err := fn(id, 100, t); err != nil {
			return err
		}
	}
	if s.afterList != nil {
		s.afterList()
	}
	return nil
}

func (s *timedStore) DeleteIfOlder(ctx context.Context, id persist.BlockID, cutoff time.Time) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.lastPut[id]
	if !ok || !t.Before(cutoff) {
		return false, nil
	}
	delete(s.lastPut, id)
	return true, nil
}

type refSet struct {
	ids []persist.BlockID
	err error
}

func (r refSet) ReferencedBlocks(ctx context.Context, fn func(persist.BlockID) error) error {
	if r.err != nil {
		return r.err
	}
	for _, id := range r.ids {
		if err := fn(id); err != nil {
			return err
		}
	}
	return nil
}

func bid(s string) persist.BlockID { return persist.Sum([]byte(s)) }

func TestCollect(t *testing.T) {
	now := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	old, fresh := now.Add(-2*time.Hour), now.Add(-10*time.Minute)
	tests := []struct {
		name      string
		refs      refSet
		blocks    map[string]time.Time
		reput     string // put again between the listing and the deletes
		wantAfter []string
	}{
		{"unreferenced old block goes", refSet{}, map[string]time.Time{"a": old}, "", nil},
		{"referenced block stays", refSet{ids: []persist.BlockID{bid("a")}}, map[string]time.Time{"a": old}, "", []string{"a"}},
		{"unreferenced block within grace stays (write in progress)", refSet{}, map[string]time.Time{"a": fresh}, "", []string{"a"}},
		{"mark fails: nothing swept", refSet{err: errors.New("metadata unreachable")}, map[string]time.Time{"a": old, "b": old}, "", []string{"a", "b"}},
		{"block put again after the listing stays", refSet{}, map[string]time.Time{"a": old, "b": old}, "b", []string{"b"}},
		{"mixed", refSet{ids: []persist.BlockID{bid("b")}}, map[string]time.Time{"a": old, "b": old, "c": fresh}, "", []string{"b", "c"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := &timedStore{lastPut: map[persist.BlockID]time.Time{}}
			for name, at := range tc.blocks {
				s.lastPut[bid(name)] = at
			}
			if tc.reput != "" {
				s.afterList = func() { s.mu.Lock(); s.lastPut[bid(tc.reput)] = now; s.mu.Unlock() }
			}
			c := NewCollector(s, tc.refs, CollectConfig{Grace: time.Hour}, quietLog())
			c.now = func() time.Time { return now }
			err := c.Collect(context.Background())
			if (err != nil) != (tc.refs.err != nil) {
				t.Fatalf("Collect: %v", err)
			}
			if len(s.lastPut) != len(tc.wantAfter) {
				t.Fatalf("%d blocks left, want %v", len(s.lastPut), tc.wantAfter)
			}
			for _, name := range tc.wantAfter {
				if _, ok := s.lastPut[bid(name)]; !ok {
					t.Fatalf("block %q was collected; want it kept", name)
				}
			}
		})
	}
}

func TestCollectorReportsGarbageForRepair(t *testing.T) {
	now := time.Now()
	s := &timedStore{lastPut: map[persist.BlockID]time.Time{
		bid("old"): now.Add(-2 * time.Hour), bid("kept"): now.Add(-2 * time.Hour), bid("new"): now,
	}}
	c := NewCollector(s, refSet{ids: []persist.BlockID{bid("kept")}}, CollectConfig{Grace: time.Hour}, quietLog())
	if err := c.Collect(context.Background()); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]bool{"old": true, "kept": false, "new": false} {
		if got := c.IsGarbage(bid(name)); got != want {
			t.Errorf("IsGarbage(%s) = %v, want %v", name, got, want)
		}
	}
}
