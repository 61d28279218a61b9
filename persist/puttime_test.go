package persist

import (
	"context"
	"errors"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// fakeClock is a clock that tests step by hand. Batch may run a Put's
// transaction on bbolt's timer goroutine, so the time is atomic.
type fakeClock struct{ ns atomic.Int64 }

func newFakeClock(t time.Time) *fakeClock {
	c := &fakeClock{}
	c.set(t)
	return c
}

func (c *fakeClock) now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *fakeClock) set(t time.Time)         { c.ns.Store(t.UnixNano()) }
func (c *fakeClock) advance(d time.Duration) { c.ns.Add(int64(d)) }

// putTimes returns what PutTimes reports, by id.
func putTimes(t *testing.T, s *Store) map[BlockID]time.Time {
	t.Helper()
	out := map[BlockID]time.Time{}
	err := s.PutTimes(context.Background(), func(id BlockID, size int, lastPut time.Time) error {
		if ok, n, err := s.Has(context.Background(), id); err != nil || !ok || n != size {
			t.Errorf("PutTimes gave %s size %d; Has = %v, %d, %v", id, size, ok, n, err)
		}
		out[id] = lastPut
		return nil
	})
	if err != nil {
		t.Fatalf("PutTimes: %v", err)
	}
	return out
}

// storedPutTime reads the raw put time of id, reporting false when there is none.
func storedPutTime(t *testing.T, s *Store, id BlockID) (time.Time, bool) {
	t.Helper()
	var pt time.Time
	var ok bool
	err := s.db.View(func(tx *bolt.Tx) error {
		pt, ok = decodePutTime(tx.Bucket(bucketPutTimes).Get(id[:]))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return pt, ok
}

func TestPutRecordsAndRefreshesPutTime(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, t.TempDir())
	t0 := time.Date(2030, 1, 2, 3, 4, 5, 6, time.UTC)
	clock := newFakeClock(t0)
	s.now = clock.now

	data, id := randBlock(t, 5000)
	if err := s.Put(ctx, id, data); err != nil {
		t.Fatal(err)
	}
	if got, ok := storedPutTime(t, s, id); !ok || !got.Equal(t0) {
		t.Fatalf("put time after first Put = %v, %v; want %v", got, ok, t0)
	}

	// Within putTimeRefresh a re-Put leaves the time alone (no commit).
	clock.advance(30 * time.Second)
	if err := s.Put(ctx, id, data); err != nil {
		t.Fatal(err)
	}
	if got, _ := storedPutTime(t, s, id); !got.Equal(t0) {
		t.Fatalf("put time after a re-Put 30s later = %v; want it kept at %v", got, t0)
	}

	// Past it the re-Put refreshes the time.
	clock.advance(2 * time.Minute)
	t1 := clock.now()
	if err := s.Put(ctx, id, data); err != nil {
		t.Fatal(err)
	}
	if got, _ := storedPutTime(t, s, id); !got.Equal(t1) {
		t.Fatalf("put time after a re-Put 2m30s later = %v; want %v", got, t1)
	}
	if blocks, nbytes := s.Stats(); blocks != 1 || nbytes != int64(len(data)) {
		t.Fatalf("Stats = %d, %d; want 1, %d", blocks, nbytes, len(data))
	}

	// A Put that repairs a corrupt copy refreshes the time as well, even
	// within putTimeRefresh of the last one.
	clock.advance(10 * time.Second)
	t2 := clock.now()
	err := s.db.Update(func(tx *bolt.Tx) error {
		bad := append([]byte(nil), data...)
		bad[0] ^= 1
		return tx.Bucket(bucketBlocks).Put(id[:], bad)
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Put(ctx, id, data); err != nil {
		t.Fatal(err)
	}
	if got, _ := storedPutTime(t, s, id); !got.Equal(t2) {
		t.Fatalf("put time after a repairing Put = %v; want %v", got, t2)
	}

	// The times survive a reopen.
	dir := s.dir
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openTest(t, dir)
	if got := putTimes(t, s); len(got) != 1 || !got[id].Equal(t2) {
		t.Fatalf("PutTimes after reopen = %v; want %s at %v", got, id, t2)
	}
}

func TestPutTimesListsAll(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, t.TempDir())
	clock := newFakeClock(time.Unix(1_900_000_000, 0))
	s.now = clock.now
	want := map[BlockID]time.Time{}
	// More than listBatch blocks, so the walk resumes across transactions.
	for i := range listBatch + 10 {
		data := []byte{byte(i), byte(i >> 8)}
		id := Sum(data)
		clock.advance(time.Second)
		want[id] = clock.now()
		if i%100 == 0 {
			// One by one they would each wait out the batch delay; only a
			// few need distinct times.
			if err := s.Put(ctx, id, data); err != nil {
				t.Fatal(err)
			}
			continue
		}
		err := s.db.Update(func(tx *bolt.Tx) error {
			if err := tx.Bucket(bucketBlocks).Put(id[:], data); err != nil {
				return err
			}
			return tx.Bucket(bucketPutTimes).Put(id[:], encodePutTime(clock.now()))
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	got := putTimes(t, s)
	if len(got) != len(want) {
		t.Fatalf("PutTimes gave %d blocks, want %d", len(got), len(want))
	}
	for id, w := range want {
		if !got[id].Equal(w) {
			t.Fatalf("PutTimes gave %s at %v, want %v", id, got[id], w)
		}
	}

	// fn's error stops the walk and comes back as is.
	stop := errors.New("stop")
	calls := 0
	err := s.PutTimes(ctx, func(BlockID, int, time.Time) error { calls++; return stop })
	if err != stop || calls != 1 {
		t.Fatalf("PutTimes with failing fn = %v after %d calls; want stop after 1", err, calls)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := s.PutTimes(cctx, func(BlockID, int, time.Time) error { return nil }); !errors.Is(err, context.Canceled) {
		t.Fatalf("PutTimes with a canceled context = %v", err)
	}
}

func TestDeleteIfOlder(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, t.TempDir())
	t0 := time.Unix(1_900_000_000, 0)
	clock := newFakeClock(t0)
	s.now = clock.now

	oldData, oldID := randBlock(t, 3000)
	savedData, savedID := randBlock(t, 4000)
	newData, newID := randBlock(t, 5000)
	for _, b := range []struct {
		id   BlockID
		data []byte
	}{{oldID, oldData}, {savedID, savedData}} {
		if err := s.Put(ctx, b.id, b.data); err != nil {
			t.Fatal(err)
		}
	}
	clock.advance(20 * time.Minute)
	if err := s.Put(ctx, newID, newData); err != nil {
		t.Fatal(err)
	}

	// The collector lists with a 10-minute grace period: the first two
	// blocks are candidates.
	cutoff := clock.now().Add(-10 * time.Minute)
	var candidates []BlockID
	for id, pt := range putTimes(t, s) {
		if pt.Before(cutoff) {
			candidates = append(candidates, id)
		}
	}
	if len(candidates) != 2 {
		t.Fatalf("%d blocks put before the cutoff, want 2", len(candidates))
	}
	// Between listing and deleting, a write reuses savedID's content.
	clock.advance(time.Second)
	if err := s.Put(ctx, savedID, savedData); err != nil {
		t.Fatal(err)
	}
	deleted := map[BlockID]bool{}
	for _, id := range candidates {
		ok, err := s.DeleteIfOlder(ctx, id, cutoff)
		if err != nil {
			t.Fatalf("DeleteIfOlder(%s): %v", id, err)
		}
		deleted[id] = ok
	}
	if !deleted[oldID] || deleted[savedID] {
		t.Fatalf("deleted %v; want only the old block %s", deleted, oldID)
	}
	if ok, _, _ := s.Has(ctx, oldID); ok {
		t.Fatal("old block still stored")
	}
	if _, ok := storedPutTime(t, s, oldID); ok {
		t.Fatal("old block's put time still stored")
	}
	for _, id := range []BlockID{savedID, newID} {
		if _, err := s.Get(ctx, id); err != nil {
			t.Fatalf("Get(%s) after the sweep: %v", id, err)
		}
	}
	if blocks, nbytes := s.Stats(); blocks != 2 || nbytes != int64(len(savedData)+len(newData)) {
		t.Fatalf("Stats = %d, %d; want 2, %d", blocks, nbytes, len(savedData)+len(newData))
	}
	// A missing block is not an error.
	if ok, err := s.DeleteIfOlder(ctx, oldID, cutoff); ok || err != nil {
		t.Fatalf("DeleteIfOlder of a missing block = %v, %v; want false, nil", ok, err)
	}

	// Delete drops the put time too: a later Put of the same content starts
	// afresh.
	if err := s.Delete(ctx, newID); err != nil {
		t.Fatal(err)
	}
	if _, ok := storedPutTime(t, s, newID); ok {
		t.Fatal("put time survives Delete")
	}
}

// TestPutTimeMissing covers blocks that have no put time: those stored
// before put times existed (the bucket is missing on open) and, defensively,
// a block whose entry is gone. Neither may look old to a collector.
func TestPutTimeMissing(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := Open(dir, testOpts())
	if err != nil {
		t.Fatal(err)
	}
	ids := map[BlockID][]byte{}
	for i := range 5 {
		data, id := randBlock(t, 100+i)
		if err := s.Put(ctx, id, data); err != nil {
			t.Fatal(err)
		}
		ids[id] = data
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	db, err := bolt.Open(filepath.Join(dir, dbFileName), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error { return tx.DeleteBucket(bucketPutTimes) })
	if cerr := db.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatalf("drop the put times: %v", err)
	}

	// A collector that has been waiting for hours sees them as just put.
	opened := time.Now()
	s = openTest(t, dir)
	cutoff := opened.Add(-time.Millisecond)
	times := putTimes(t, s)
	if len(times) != len(ids) {
		t.Fatalf("PutTimes gave %d blocks, want %d", len(times), len(ids))
	}
	for id, pt := range times {
		if pt.Before(cutoff) {
			t.Fatalf("block %s stored without a put time reads as put at %v, before the open at %v", id, pt, opened)
		}
		if ok, err := s.DeleteIfOlder(ctx, id, cutoff); ok || err != nil {
			t.Fatalf("DeleteIfOlder(%s) = %v, %v; want false, nil", id, ok, err)
		}
		// Open recorded the time, so it is kept across reopens rather
		// than renewed at each (which would make them uncollectable).
		if _, ok := storedPutTime(t, s, id); !ok {
			t.Fatalf("Open recorded no put time for %s", id)
		}
	}

	// A block whose entry is missing at run time reads as put just now.
	var victim BlockID
	for id := range ids {
		victim = id
		break
	}
	err = s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketPutTimes).Delete(victim[:]) })
	if err != nil {
		t.Fatal(err)
	}
	// An hour later, a collector with a 10-minute grace period would delete
	// every block (all recorded at the open) but this one.
	late := time.Now().Add(time.Hour)
	s.now = func() time.Time { return late }
	if ok, err := s.DeleteIfOlder(ctx, victim, late.Add(-10*time.Minute)); ok || err != nil {
		t.Fatalf("DeleteIfOlder of a block without a put time = %v, %v; want false, nil", ok, err)
	}
	if pt := putTimes(t, s)[victim]; !pt.Equal(late) {
		t.Fatalf("PutTimes gave %v for a block without a put time, want now (%v)", pt, late)
	}
	// And a Put of it records one, however recent "now" is.
	if err := s.Put(ctx, victim, ids[victim]); err != nil {
		t.Fatal(err)
	}
	if pt, ok := storedPutTime(t, s, victim); !ok || !pt.Equal(late) {
		t.Fatalf("put time after Put = %v, %v; want %v", pt, ok, late)
	}
}

func TestTouchRefreshesPutTime(t *testing.T) {
	s, err := Open(t.TempDir(), Options{ClusterID: "c", BlockSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	clock := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s.now = func() time.Time { return clock }
	data := []byte("uploaded, not committed yet")
	id := Sum(data)
	if err := s.Put(context.Background(), id, data); err != nil {
		t.Fatal(err)
	}
	clock = clock.Add(3 * time.Hour)
	if err := s.Touch(context.Background(), id); err != nil {
		t.Fatal(err)
	}
	if deleted, err := s.DeleteIfOlder(context.Background(), id, clock.Add(-time.Hour)); err != nil || deleted {
		t.Fatalf("DeleteIfOlder of a touched block: deleted %v, err %v", deleted, err)
	}
	if err := s.Touch(context.Background(), Sum([]byte("absent"))); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Touch of a missing block: %v, want ErrNotFound", err)
	}
}
