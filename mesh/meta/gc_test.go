package meta

import (
	"context"
	"errors"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/meshfs/meshfs/persist"
)

// referenced returns what ReferencedBlocks reports, with the number of times
// each id came.
func referenced(t *testing.T, ctx context.Context, s *Store) map[persist.BlockID]int {
	t.Helper()
	got := map[persist.BlockID]int{}
	ok(t, s.ReferencedBlocks(ctx, func(id persist.BlockID) error {
		got[id]++
		return nil
	}))
	return got
}

func TestReferencedBlocks(t *testing.T) {
	ctx := ctxT(t)
	s := newStore(t)
	const bs = testBlockSize

	if got := referenced(t, ctx, s); len(got) != 0 {
		t.Fatalf("a fresh store references %v", got)
	}

	// Slots 5 and 2000 live in chunks 0 and 1; slot 6 is written, then
	// punched into a hole.
	spread := must[Attr](t)(s.Create(ctx, RootIno, "spread", 0o644, 0, 0))
	must[Attr](t)(s.CommitWrite(ctx, spread.Ino, map[int64]BlockRef{5: ref("five", bs), 6: ref("punched", bs), 2000: ref("2000", 7)}, 2000*bs+7, 1))
	must[Attr](t)(s.CommitWrite(ctx, spread.Ino, map[int64]BlockRef{6: {}}, 0, 2))

	// Truncated inside slot 1: slot 1 stays (clamped), slot 2 goes.
	trunc := must[Attr](t)(s.Create(ctx, RootIno, "trunc", 0o644, 0, 0))
	must[Attr](t)(s.CommitWrite(ctx, trunc.Ino, map[int64]BlockRef{0: ref("t0", bs), 1: ref("t1", bs), 2: ref("truncated away", bs)}, 3*bs, 1))
	size := uint64(bs + 10)
	must[Attr](t)(s.SetAttr(ctx, trunc.Ino, SetAttrIn{Size: &size}))

	// Unlinked but not reclaimed (an open handle would keep it): its blocks
	// are still live. One of them is shared with "spread".
	open := must[Attr](t)(s.Create(ctx, RootIno, "open", 0o644, 0, 0))
	must[Attr](t)(s.CommitWrite(ctx, open.Ino, map[int64]BlockRef{0: ref("open", bs), 1: ref("five", bs)}, 2*bs, 1))
	if a := must[Attr](t)(s.Unlink(ctx, RootIno, "open")); a.Nlink != 0 {
		t.Fatalf("nlink after unlink = %d", a.Nlink)
	}

	// Unlinked and reclaimed: its blocks are garbage.
	gone := must[Attr](t)(s.Create(ctx, RootIno, "gone", 0o644, 0, 0))
	must[Attr](t)(s.CommitWrite(ctx, gone.Ino, map[int64]BlockRef{0: ref("gone0", bs), 1500: ref("gone1500", 3)}, 1500*bs+3, 1))
	must[Attr](t)(s.Unlink(ctx, RootIno, "gone"))
	ok(t, s.Reclaim(ctx, gone.Ino))

	// Other inodes and keys are not block maps.
	d := must[Attr](t)(s.Mkdir(ctx, RootIno, "d", 0o755, 0, 0))
	must[Attr](t)(s.Symlink(ctx, d.Ino, "l", "../spread", 0, 0))
	ok(t, s.SetXattr(ctx, spread.Ino, "user.k", []byte("v"), 0))

	want := map[persist.BlockID]int{}
	for _, ino := range []Ino{spread.Ino, trunc.Ino, open.Ino} {
		for _, r := range must[map[int64]BlockRef](t)(s.Blocks(ctx, ino, 0, 1<<40)) {
			want[r.ID]++
		}
	}
	// The union of the live block maps is what the test set up.
	wantIDs := []persist.BlockID{ref("five", 0).ID, ref("2000", 0).ID, ref("t0", 0).ID, ref("t1", 0).ID, ref("open", 0).ID}
	if ids := slices.Collect(maps.Keys(want)); len(ids) != len(wantIDs) {
		t.Fatalf("live block maps hold %d ids, want %d", len(ids), len(wantIDs))
	}
	for _, id := range wantIDs {
		if want[id] == 0 {
			t.Fatalf("live block maps lack %s", id)
		}
	}

	got := referenced(t, ctx, s)
	if !maps.Equal(got, want) {
		t.Fatalf("ReferencedBlocks = %v\nwant %v", got, want)
	}
	if got[ref("five", 0).ID] != 2 {
		t.Fatalf("a block in two slots came %d times, want 2", got[ref("five", 0).ID])
	}
	for _, absent := range []string{"punched", "truncated away", "gone0", "gone1500"} {
		if n := got[ref(absent, 0).ID]; n != 0 {
			t.Fatalf("block %q of no live slot reported %d times", absent, n)
		}
	}

	// A whole-file-system scan does not get the per-operation timeout.
	s.opts.OpTimeout = time.Nanosecond
	if got := referenced(t, context.Background(), s); !maps.Equal(got, want) {
		t.Fatalf("ReferencedBlocks without a deadline = %v, want %v", got, want)
	}

	// fn's error stops the scan and comes back as is.
	stop := errors.New("stop")
	calls := 0
	err := s.ReferencedBlocks(ctx, func(persist.BlockID) error { calls++; return stop })
	if err != stop || calls != 1 {
		t.Fatalf("ReferencedBlocks with failing fn = %v after %d calls; want stop after 1", err, calls)
	}

	ok(t, s.Close())
	if err := s.ReferencedBlocks(ctx, func(persist.BlockID) error { return nil }); err == nil {
		t.Fatal("ReferencedBlocks on a closed store succeeded")
	}
}

// A block-map record that does not decode fails the scan rather than
// reporting fewer blocks, which would let a collector delete live ones.
func TestReferencedBlocksRefusesBadRecord(t *testing.T) {
	ctx := ctxT(t)
	s := newStore(t)
	f := must[Attr](t)(s.Create(ctx, RootIno, "f", 0o644, 0, 0))
	must[Attr](t)(s.CommitWrite(ctx, f.Ino, map[int64]BlockRef{0: ref("x", 1)}, 1, 1))
	ok(t, s.commit(ctx, []op{{key: chunkKey(999, 0), val: []byte(`{"0":{"id":"not hex","len":1}}`)}}))
	err := s.ReferencedBlocks(ctx, func(persist.BlockID) error { return nil })
	if err == nil {
		t.Fatal("ReferencedBlocks with a bad record succeeded")
	}
}
