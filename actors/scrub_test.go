package actors

import (
	"context"
	"crypto/rand"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/meshfs/meshfs/persist"
	bolt "go.etcd.io/bbolt"
)

// goodCopies is another node's copy of every block, as a map.
type goodCopies struct {
	mu     sync.Mutex
	blocks map[persist.BlockID][]byte
	asked  int
	// during, if set, runs inside each Fetch: what happens while the
	// scrubber waits for another node.
	during func(id persist.BlockID)
}

func (g *goodCopies) Fetch(ctx context.Context, id persist.BlockID) ([]byte, error) {
	if g.during != nil {
		g.during(id)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.asked++
	b, ok := g.blocks[id]
	if !ok {
		return nil, fmt.Errorf("fetch %s: %w", id, persist.ErrNotFound)
	}
	return append([]byte(nil), b...), nil
}

// storeWithBlocks opens a store holding n random blocks and returns it
// with the blocks by id.
func storeWithBlocks(t *testing.T, dir string, n, size int) (*persist.Store, map[persist.BlockID][]byte) {
	t.Helper()
	s, err := persist.Open(dir, persist.Options{ClusterID: "c", BlockSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	blocks := map[persist.BlockID][]byte{}
	for i := 0; i < n; i++ {
		b := make([]byte, size)
		rand.Read(b)
		id := persist.Sum(b)
		if err := s.Put(context.Background(), id, b); err != nil {
			t.Fatal(err)
		}
		blocks[id] = b
	}
	return s, blocks
}

// rotAndReopen closes s, rots the given blocks in its dir and opens the
// store again (bbolt holds its file locked while open); the test closes it.
func rotAndReopen(t *testing.T, s *persist.Store, dir string, ids []persist.BlockID) *persist.Store {
	t.Helper()
	s.Close()
	rot(t, dir, ids)
	s, err := persist.Open(dir, persist.Options{ClusterID: "c", BlockSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// storeWithOneRotten is storeWithBlocks with one of the blocks rotten.
func storeWithOneRotten(t *testing.T, n, size int) (*persist.Store, map[persist.BlockID][]byte, persist.BlockID) {
	t.Helper()
	dir := t.TempDir()
	s, blocks := storeWithBlocks(t, dir, n, size)
	var bad persist.BlockID
	for id := range blocks {
		bad = id
		break
	}
	return rotAndReopen(t, s, dir, []persist.BlockID{bad}), blocks, bad
}

// scrubOnePass runs sc until it has completed a pass and returns its stats.
func scrubOnePass(t *testing.T, sc *Scrubber) ScrubStats {
	t.Helper()
	return scrubPasses(t, sc, 1)
}

// scrubPasses runs sc until it has completed n passes and returns its
// stats.
func scrubPasses(t *testing.T, sc *Scrubber, n int64) ScrubStats {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- sc.Run(ctx) }()
	deadline := time.Now().Add(20 * time.Second)
	for sc.Stats().Passes < n && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	<-done
	st := sc.Stats()
	if st.Passes < n {
		t.Fatalf("%d full passes within 20s, want %d: %+v", st.Passes, n, st)
	}
	return st
}

// rot flips one byte of each given block in the bbolt file, as a disk would.
func rot(t *testing.T, dir string, ids []persist.BlockID) {
	t.Helper()
	db, err := bolt.Open(filepath.Join(dir, "blocks.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte("blocks"))
		for _, id := range ids {
			v := append([]byte(nil), b.Get(id[:])...)
			v[len(v)/3] ^= 0x40
			if err := b.Put(id[:], v); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestScrubFindsAndRepairsEveryCorruptBlockInOnePass(t *testing.T) {
	dir := t.TempDir()
	s, blocks := storeWithBlocks(t, dir, 60, 32<<10)
	var rotten []persist.BlockID
	for id := range blocks {
		if len(rotten) == 20 {
			break
		}
		rotten = append(rotten, id)
	}
	s = rotAndReopen(t, s, dir, rotten)
	for _, id := range rotten {
		if _, err := s.Get(context.Background(), id); err == nil {
			t.Fatalf("block %s reads fine after rot: the test rotted nothing", id)
		}
	}

	sc := NewScrubber(s, &goodCopies{blocks: blocks}, ScrubConfig{Period: time.Second, MaxRate: 64 << 20, Pause: time.Hour}, quietLog())
	st := scrubOnePass(t, sc)
	if st.Corrupt != 20 || st.Repaired != 20 || st.Checked != 60 || st.FoundByWrite != 0 {
		t.Fatalf("one pass: %+v; want 60 checked, 20 corrupt, 20 repaired, none by a write", st)
	}
	for id, want := range blocks {
		got, err := s.Get(context.Background(), id)
		if err != nil || string(got) != string(want) {
			t.Fatalf("block %s after scrub: err %v, equal %v", id, err, string(got) == string(want))
		}
	}
}

func TestScrubChecksReportedBlockAtOnce(t *testing.T) {
	for _, tc := range []struct {
		name string
		rate float64
	}{
		// A pass at 1 MiB/s needs about 5 s, 1 s per block.
		{"1 MiB/s", 1 << 20},
		// At 64 KiB/s the pass waits 16 s per block: a report must not
		// wait behind that either.
		{"64 KiB/s", 64 << 10},
	} {
		t.Run(tc.name, func(t *testing.T) { scrubChecksReportedBlockAtOnce(t, tc.rate) })
	}
}

func scrubChecksReportedBlockAtOnce(t *testing.T, rate float64) {
	s, blocks, bad := storeWithOneRotten(t, 5, 1<<20)
	sc := NewScrubber(s, &goodCopies{blocks: blocks}, ScrubConfig{Period: time.Hour, MaxRate: rate, MinRate: rate}, quietLog())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go sc.Run(ctx)
	// Report once the pass is waiting for its pace, not before it starts.
	time.Sleep(300 * time.Millisecond)
	sc.Check(bad)
	deadline := time.Now().Add(2 * time.Second)
	for sc.Stats().Repaired < 1 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if st := sc.Stats(); st.Repaired != 1 {
		t.Fatalf("reported block not repaired within 2s: %+v", st)
	}
	if _, err := s.Get(context.Background(), bad); err != nil {
		t.Fatalf("reported block still bad: %v", err)
	}
}

func TestScrubPacesItself(t *testing.T) {
	s, _ := storeWithBlocks(t, t.TempDir(), 8, 256<<10) // 2 MiB
	defer s.Close()
	sc := NewScrubber(s, &goodCopies{}, ScrubConfig{Period: time.Hour, MaxRate: 1 << 20, MinRate: 1 << 20, Pause: time.Hour}, quietLog())
	ctx, cancel := context.WithTimeout(context.Background(), 800*time.Millisecond)
	defer cancel()
	sc.Run(ctx)
	// At 1 MiB/s, 0.8 s covers at most about 0.8 MiB: 3 or 4 blocks of 256 KiB.
	if got := sc.Stats().Checked; got > 5 {
		t.Fatalf("checked %d blocks in 0.8s at 1 MiB/s (256 KiB each): pacing is off", got)
	}
}

// TestScrubUnrepairableBlockDoesNotLoop: with no good copy anywhere,
// repeated reports of the block cost one attempt a minute, not a loop.
func TestScrubUnrepairableBlockDoesNotLoop(t *testing.T) {
	s, _, bad := storeWithOneRotten(t, 1, 1<<10)
	good := &goodCopies{blocks: map[persist.BlockID][]byte{}} // nobody has it
	sc := NewScrubber(s, good, ScrubConfig{Period: time.Hour, Pause: time.Hour}, quietLog())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { sc.Run(ctx); close(done) }()
	for i := 0; i < 200; i++ {
		sc.Check(bad)
		time.Sleep(time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond)
	cancel()
	<-done
	good.mu.Lock()
	asked := good.asked
	good.mu.Unlock()
	// One try from the pass and none from the 200 reports within the minute.
	if asked > 2 {
		t.Fatalf("an unrepairable block was fetched %d times for 200 reports", asked)
	}
	if st := sc.Stats(); st.Repaired != 0 || st.Corrupt < 1 {
		t.Fatalf("stats %+v", st)
	}
}

// TestScrubCountsRotHealedByAWrite: a write of the block (a client's, a
// hedged one, a peer's repair push) that replaces a rotten copy heals the
// rot; the scrubber counts it once, as found and repaired, whether the
// write came before the scrubber found the rot, while it fetched a good
// copy, or after its repair failed.
func TestScrubCountsRotHealedByAWrite(t *testing.T) {
	for _, tc := range []struct {
		name string
		// writeBefore: the write lands before the pass.
		writeBefore bool
		// writeDuring: the write lands while the scrubber fetches.
		writeDuring bool
		// noGoodCopy: the scrubber's fetch fails; the write comes after.
		noGoodCopy                       bool
		corrupt, byWrite, byPass, repair int64
	}{
		{name: "write before the scrubber", writeBefore: true, corrupt: 1, byWrite: 1, repair: 1},
		{name: "write while the scrubber fetches", writeDuring: true, corrupt: 1, byPass: 1, repair: 1},
		{name: "write after the scrubber failed", noGoodCopy: true, corrupt: 1, byPass: 1, repair: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, blocks, rotten := storeWithOneRotten(t, 4, 32<<10)
			write := func() {
				if err := s.Put(context.Background(), rotten, blocks[rotten]); err != nil {
					t.Error(err)
				}
			}
			if tc.writeBefore {
				write()
			}
			good := &goodCopies{blocks: blocks}
			if tc.writeDuring {
				good.during = func(persist.BlockID) { write() }
			}
			if tc.noGoodCopy {
				good.blocks = nil
			}
			sc := NewScrubber(s, good, ScrubConfig{Period: time.Second, MaxRate: 64 << 20, Pause: time.Hour}, quietLog())
			st := scrubOnePass(t, sc)
			if tc.noGoodCopy {
				if st.Corrupt != 1 || st.Repaired != 0 {
					t.Fatalf("with no good copy anywhere: %+v; want 1 corrupt, none repaired", st)
				}
				// The write completes the repair the scrubber could not.
				write()
				st = sc.Stats()
			}
			if st.Corrupt != tc.corrupt || st.FoundByWrite != tc.byWrite || st.FoundByPass != tc.byPass || st.Repaired != tc.repair || st.Checked != 4 {
				t.Fatalf("%+v; want %d corrupt (%d by the write, %d by the pass), %d repaired, 4 checked",
					st, tc.corrupt, tc.byWrite, tc.byPass, tc.repair)
			}
		})
	}
}

// TestScrubCountsAnUnrepairableCopyOnce: a rotten copy nobody can repair is
// found by every pass, and counted once.
func TestScrubCountsAnUnrepairableCopyOnce(t *testing.T) {
	s, _, _ := storeWithOneRotten(t, 2, 1<<10)
	sc := NewScrubber(s, &goodCopies{}, ScrubConfig{Period: time.Second, MaxRate: 64 << 20, Pause: time.Millisecond}, quietLog())
	if st := scrubPasses(t, sc, 3); st.Corrupt != 1 || st.Repaired != 0 {
		t.Fatalf("%+v; want 1 corrupt, 0 repaired", st)
	}
}
