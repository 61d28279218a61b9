package meta

// Large namespaces and large block maps at the store's level (the fuse
// package's large_test.go does the same through mounts):
//
//   - TestLargeReadDir: a directory of 100,000 entries.
//   - TestLargeBlockMap: a block map of 100,000 slots, committed at once and
//     in ten commits, punched, truncated, reclaimed; record sizes.
//   - TestLargeCommitLimit: 999 block-map chunks in one commit, not 1000.
//   - TestLargeSparseBlockMap: a sparse file's size costs nothing.
//   - TestLargeHugeSparseFile: a 1 EiB sparse file of one block is read,
//     truncated and reclaimed.
//   - TestLargeCommitOverSlowLink: a 9 MB commit over a 2 MB/s link.
//   - BenchmarkCreateOneDirectory: creates in one directory from 1 and 4
//     stores.
//
// They run in every `go test` at sizes that cross the same boundaries (many
// batches, many block-map chunks); MESHFS_LARGE=1 runs the full sizes.

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/meshfs/meshfs/mesh/natsd"
	"github.com/meshfs/meshfs/persist"
)

func largeMode() bool { return os.Getenv("MESHFS_LARGE") == "1" }

func largeSize(small, large int) int {
	if largeMode() {
		return large
	}
	return small
}

// largeHeapStats runs step and reports its duration and the bytes allocated
// during it, process-wide: the embedded NATS server runs in this process
// too, so this counts the server's side of the step as well.
func largeHeapStats(step func()) (d time.Duration, allocated int64) {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	start := time.Now()
	step()
	d = time.Since(start)
	runtime.ReadMemStats(&after)
	return d, int64(after.TotalAlloc - before.TotalAlloc)
}

// ctxLong is ctxT with room for the large tests' many calls.
func ctxLong(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// The large tests give the calls they time a long deadline and log how long
// they took: under -race they are about ten times slower than without, and
// the store's default OpTimeout of 5 s (which applies to a call without a
// deadline of its own; a mount gives every call 30 s) would end some of them.
// The logs show how far below that budget each call is.

func largeMiB(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

// bulkFiles adds empty regular files named names to dir, as many per atomic
// batch as fit (an inode and a dirent each), and returns their inodes.
func bulkFiles(t *testing.T, ctx context.Context, s *Store, dir Ino, names []string) []Ino {
	t.Helper()
	inos := make([]Ino, len(names))
	per := (s.maxBatch - 1) / 2
	for lo := 0; lo < len(names); lo += per {
		hi := min(lo+per, len(names))
		ok(t, s.run(ctx, func(t *tx) error {
			ts := now()
			for i := lo; i < hi; i++ {
				ino, err := s.newIno(ctx)
				if err != nil {
					return err
				}
				inos[i] = ino
				t.fresh(inodeKey(ino)).inode = &inodeRec{Ino: ino, Mode: syscall.S_IFREG | 0o644, Nlink: 1, Atime: ts, Mtime: ts, Ctime: ts}
				t.fresh(direntKey(dir, names[i])).dent = &direntRec{Ino: ino, Mode: syscall.S_IFREG}
			}
			return nil
		}))
	}
	return inos
}

// TestLargeReadDir lists a directory of 100,000 entries (10,000 without
// MESHFS_LARGE) with ReadDir: every name once, sorted, with its inode.
// ReadDir reads the whole directory into one slice (there is no paged
// form); the test records its time and memory. Single-name operations in
// the big directory stay cheap.
func TestLargeReadDir(t *testing.T) {
	n := largeSize(10_000, 100_000)
	ctx := ctxLong(t)
	s := newStore(t)
	d := must[Attr](t)(s.Mkdir(ctx, RootIno, "big", 0o755, 0, 0))
	names := make([]string, n)
	for i := range names {
		switch {
		case i%997 == 0:
			names[i] = fmt.Sprintf("long-%07d-", i) + strings.Repeat("y", MaxNameLen-len("long-0000000-"))
		case i%101 == 0:
			names[i] = fmt.Sprintf("ünï %07d ✓", i)
		default:
			names[i] = fmt.Sprintf("f%07d", (i*7919)%n) // not made in sorted order
		}
	}
	start := time.Now()
	inos := bulkFiles(t, ctx, s, d.Ino, names)
	t.Logf("%d entries made in batches of %d in %v", n, (s.maxBatch-1)/2, time.Since(start).Round(time.Millisecond))
	byName := make(map[string]Ino, n)
	for i, name := range names {
		byName[name] = inos[i]
	}
	// A few through Create, to be sure the two agree.
	for _, name := range []string{"A", "zzz", "f-created"} {
		byName[name] = must[Attr](t)(s.Create(ctx, d.Ino, name, 0o644, 0, 0)).Ino
		names = append(names, name)
	}
	want := slices.Clone(names)
	slices.Sort(want)

	var ents []DirEntry
	var err error
	took, alloc := largeHeapStats(func() {
		ents, err = s.ReadDir(ctx, d.Ino)
	})
	if err != nil {
		t.Fatalf("ReadDir of %d entries: %v", len(want), err)
	}
	t.Logf("ReadDir of %d entries: %v, %s allocated (%d B per entry)",
		len(ents), took.Round(time.Millisecond), largeMiB(alloc), alloc/int64(len(ents)))
	if len(ents) != len(want) {
		t.Fatalf("ReadDir: %d entries, want %d", len(ents), len(want))
	}
	for i, e := range ents {
		if e.Name != want[i] || e.Ino != byName[e.Name] || e.Mode != syscall.S_IFREG {
			t.Fatalf("entry %d = %+v, want %q (ino %d)", i, e, want[i], byName[want[i]])
		}
	}
	runtime.KeepAlive(ents)

	// A small directory next to the big one lists as fast as ever.
	small := must[Attr](t)(s.Mkdir(ctx, RootIno, "small", 0o755, 0, 0))
	must[Attr](t)(s.Create(ctx, small.Ino, "only", 0o644, 0, 0))
	start = time.Now()
	if e := must[[]DirEntry](t)(s.ReadDir(ctx, small.Ino)); len(e) != 1 {
		t.Errorf("small directory: %v", e)
	}
	t.Logf("ReadDir of a 1-entry directory beside it: %v", time.Since(start).Round(time.Microsecond))

	// Single-name operations do not depend on the directory's size.
	start = time.Now()
	for _, i := range []int{0, 1, n / 2, n - 1} {
		if a := must[Attr](t)(s.Lookup(ctx, d.Ino, names[i])); a.Ino != inos[i] {
			t.Errorf("lookup %q: ino %d, want %d", names[i], a.Ino, inos[i])
		}
	}
	must[Attr](t)(s.Unlink(ctx, d.Ino, names[1]))
	must[Attr](t)(s.Create(ctx, d.Ino, "f-late", 0o644, 0, 0))
	wantErrno(t, errOf(s.Rmdir(ctx, RootIno, "big")), syscall.ENOTEMPTY)
	t.Logf("4 lookups, an unlink, a create and a refused rmdir in the big directory: %v", time.Since(start).Round(time.Millisecond))
	ents = must[[]DirEntry](t)(s.ReadDir(ctx, d.Ino))
	if len(ents) != len(want) {
		t.Errorf("after unlink and create: %d entries, want %d", len(ents), len(want))
	}
}

// largeRef is the block of slot i of file seed: distinct for every pair.
func largeRef(seed uint64, i int64, n uint32) BlockRef {
	var b [16]byte
	binary.LittleEndian.PutUint64(b[:], seed)
	binary.LittleEndian.PutUint64(b[8:], uint64(i))
	return BlockRef{ID: persist.Sum(b[:]), Len: n}
}

// checkLargeMap checks that slots [0, n) of ino hold largeRef(seed, i, Len)
// (the last one with lastLen) and nothing else, and returns how long the
// Blocks call took.
func checkLargeMap(t *testing.T, ctx context.Context, s *Store, what string, ino Ino, seed uint64, n int64, lastLen uint32) time.Duration {
	t.Helper()
	start := time.Now()
	got, err := s.Blocks(ctx, ino, 0, 1<<40)
	took := time.Since(start)
	if err != nil {
		t.Fatalf("%s: Blocks: %v", what, err)
	}
	if int64(len(got)) != n {
		t.Errorf("%s: %d slots, want %d", what, len(got), n)
	}
	bad := 0
	for i := range n {
		want := largeRef(seed, i, testBlockSize)
		if i == n-1 {
			want.Len = lastLen
		}
		if r := got[i]; r != want {
			if bad++; bad <= 3 {
				t.Errorf("%s: slot %d = %+v, want %+v", what, i, r, want)
			}
		}
	}
	return took
}

// TestLargeBlockMap commits a block map of 100,000 slots (98 chunks of 1024;
// 20,000 slots, 20 chunks, without MESHFS_LARGE) in one CommitWrite (one
// atomic batch) and in ten interleaved ones, each touching every chunk, and
// reads it back; then punches holes, truncates to half and reclaims.
func TestLargeBlockMap(t *testing.T) {
	ctx := ctxLong(t)
	s := newStore(t)
	n := int64(largeSize(20_000, 100_000))
	const bs = testBlockSize
	size := uint64(n) * bs

	one := must[Attr](t)(s.Create(ctx, RootIno, "one", 0o644, 0, 0))
	slots := make(map[int64]BlockRef, n)
	for i := range int64(n) {
		slots[i] = largeRef(1, i, bs)
	}
	start := time.Now()
	must[Attr](t)(s.CommitWrite(ctx, one.Ino, slots, size, 1))
	t.Logf("one CommitWrite of %d slots (%d chunks): %v", n, (n+slotsPerChunk-1)/slotsPerChunk, time.Since(start).Round(time.Millisecond))
	took := checkLargeMap(t, ctx, s, "one commit", one.Ino, 1, n, bs)
	t.Logf("Blocks of %d slots: %v", n, took.Round(time.Millisecond))

	// The largest chunk record, against the server's message size limit.
	var biggest int
	for c := range int64((n + slotsPerChunk - 1) / slotsPerChunk) {
		v, err := s.get(ctx, chunkKey(one.Ino, c))
		if err != nil || !v.found {
			t.Fatalf("chunk %d: %+v %v", c, v, err)
		}
		biggest = max(biggest, len(v.val))
	}
	limit := s.nc.MaxPayload()
	t.Logf("largest block-map record: %d bytes (%d slots), server max payload %d", biggest, slotsPerChunk, limit)
	if int64(biggest) > limit/4 {
		t.Errorf("a block-map record of %d bytes is near the %d-byte message limit", biggest, limit)
	}

	// Slot numbers far out (a huge sparse file) make longer keys in the
	// record; a full chunk of them still fits.
	far := must[Attr](t)(s.Create(ctx, RootIno, "far", 0o644, 0, 0))
	const base = int64(1) << 40 // slot index: a 4 PiB file at 4 KiB blocks
	farSlots := make(map[int64]BlockRef, slotsPerChunk)
	for i := range int64(slotsPerChunk) {
		farSlots[base+i] = largeRef(9, i, bs)
	}
	must[Attr](t)(s.CommitWrite(ctx, far.Ino, farSlots, uint64(base+slotsPerChunk)*bs, 1))
	v, err := s.get(ctx, chunkKey(far.Ino, chunkOf(base)))
	if err != nil || !v.found {
		t.Fatalf("far chunk: %+v %v", v, err)
	}
	t.Logf("a full chunk at slot 2^40: %d bytes", len(v.val))
	if int64(len(v.val)) > limit/4 {
		t.Errorf("a block-map record of %d bytes is near the %d-byte message limit", len(v.val), limit)
	}

	// Ten commits, each one slot in ten across the whole file: every
	// commit rewrites every chunk.
	ten := must[Attr](t)(s.Create(ctx, RootIno, "ten", 0o644, 0, 0))
	start = time.Now()
	for k := range int64(10) {
		part := map[int64]BlockRef{}
		for i := k; i < n; i += 10 {
			part[i] = largeRef(2, i, bs)
		}
		must[Attr](t)(s.CommitWrite(ctx, ten.Ino, part, size, 1+k))
	}
	t.Logf("ten interleaved CommitWrites of %d slots in all: %v", n, time.Since(start).Round(time.Millisecond))
	checkLargeMap(t, ctx, s, "ten commits", ten.Ino, 2, n, bs)

	// Every third slot becomes a hole, in one commit.
	holes := map[int64]BlockRef{}
	for i := int64(0); i < n; i += 3 {
		holes[i] = BlockRef{}
	}
	must[Attr](t)(s.CommitWrite(ctx, ten.Ino, holes, 0, 20))
	got := must[map[int64]BlockRef](t)(s.Blocks(ctx, ten.Ino, 0, n))
	if want := n - int64(len(holes)); int64(len(got)) != want {
		t.Errorf("after punching %d holes: %d slots, want %d", len(holes), len(got), want)
	}
	for i := range holes {
		if _, ok := got[i]; ok {
			t.Errorf("slot %d still mapped after becoming a hole", i)
			break
		}
	}

	// Truncate "one" into the middle of a slot of its second half.
	cut := uint64(n/2)*bs - 100
	start = time.Now()
	must[Attr](t)(s.SetAttr(ctx, one.Ino, SetAttrIn{Size: &cut}))
	t.Logf("truncate from %d slots to %d: %v", n, n/2, time.Since(start).Round(time.Millisecond))
	checkLargeMap(t, ctx, s, "truncated", one.Ino, 1, n/2, bs-100)

	// The collector's mark phase sees every block of every map.
	refs := map[persist.BlockID]bool{}
	start = time.Now()
	ok(t, s.ReferencedBlocks(ctx, func(id persist.BlockID) error {
		refs[id] = true
		return nil
	}))
	wantRefs := int(n/2+n) - len(holes) + slotsPerChunk
	t.Logf("ReferencedBlocks over %d slots: %v", wantRefs, time.Since(start).Round(time.Millisecond))
	if len(refs) != wantRefs {
		t.Errorf("ReferencedBlocks: %d blocks, want %d", len(refs), wantRefs)
	}

	// Unlink and reclaim drop every chunk. ("far" stays: reclaiming a file
	// visits every chunk its size covers, a billion here; see
	// TestLargeHugeSparseFile.)
	for _, f := range []struct {
		name string
		ino  Ino
	}{{"one", one.Ino}, {"ten", ten.Ino}} {
		must[Attr](t)(s.Unlink(ctx, RootIno, f.name))
		start = time.Now()
		ok(t, s.Reclaim(ctx, f.ino))
		t.Logf("reclaim of %q: %v", f.name, time.Since(start).Round(time.Millisecond))
	}
	for c := range int64((n + slotsPerChunk - 1) / slotsPerChunk) {
		if v, err := s.get(ctx, chunkKey(one.Ino, c)); err != nil || v.found {
			t.Fatalf("chunk %d after reclaim: %+v %v", c, v, err)
		}
	}
	refs = map[persist.BlockID]bool{}
	ok(t, s.ReferencedBlocks(ctx, func(id persist.BlockID) error {
		refs[id] = true
		return nil
	}))
	if len(refs) != slotsPerChunk {
		t.Errorf("after reclaiming \"one\" and \"ten\": %d blocks referenced, want the %d of \"far\"", len(refs), slotsPerChunk)
	}
}

// TestLargeCommitLimit: one CommitWrite is one atomic batch, the inode and
// at most maxBatch-1 = 999 block-map chunks. 999 chunks commit; 1000 fail
// with EFBIG and store nothing. With MESHFS_LARGE the 999 chunks are full
// (1,022,976 slots, a batch of ~90 MB): the largest block map one commit can
// write; reading it back with Blocks is timed.
func TestLargeCommitLimit(t *testing.T) {
	ctx := ctxLong(t)
	s := newStore(t)
	const bs = testBlockSize
	maxChunks := int64(s.maxBatch - 1)
	perChunk := int64(1)
	if largeMode() {
		perChunk = slotsPerChunk
	}
	f := must[Attr](t)(s.Create(ctx, RootIno, "f", 0o644, 0, 0))
	slots := map[int64]BlockRef{}
	for c := range maxChunks {
		for j := range perChunk {
			i := c*slotsPerChunk + j
			slots[i] = largeRef(3, i, bs)
		}
	}
	size := uint64(maxChunks*slotsPerChunk) * bs
	start := time.Now()
	// Full chunks make a batch of ~90 MB. Every try to send it must end
	// within the store's per-attempt timeout (at most 2 s), whatever the
	// call's deadline: where sending takes longer (under -race, or on a
	// slow link: TestLargeCommitOverSlowLink) it never commits, and fails
	// only at the deadline.
	cctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	if _, err := s.CommitWrite(cctx, f.Ino, slots, size, 1); err != nil {
		t.Fatalf("CommitWrite of %d slots in %d chunks: %v after %v", len(slots), maxChunks, err, time.Since(start).Round(time.Millisecond))
	}
	t.Logf("CommitWrite of %d slots in %d chunks: %v", len(slots), maxChunks, time.Since(start).Round(time.Millisecond))
	var got map[int64]BlockRef
	var err error
	took, alloc := largeHeapStats(func() {
		got, err = s.Blocks(ctx, f.Ino, 0, 1<<40)
	})
	if err != nil {
		t.Fatalf("Blocks of %d slots: %v", len(slots), err)
	}
	t.Logf("Blocks of %d slots in %d chunks: %v, %s allocated",
		len(got), maxChunks, took.Round(time.Millisecond), largeMiB(alloc))
	if len(got) != len(slots) {
		t.Errorf("Blocks: %d slots, want %d", len(got), len(slots))
	}
	runtime.KeepAlive(got)
	got = nil

	// One chunk more is refused, and nothing of it is stored.
	g := must[Attr](t)(s.Create(ctx, RootIno, "g", 0o644, 0, 0))
	over := map[int64]BlockRef{}
	for c := range maxChunks + 1 {
		over[c*slotsPerChunk] = largeRef(4, c, bs)
	}
	_, err = s.CommitWrite(ctx, g.Ino, over, uint64((maxChunks+1)*slotsPerChunk)*bs, 1)
	t.Logf("CommitWrite touching %d chunks: %v", maxChunks+1, err)
	wantErrno(t, err, syscall.EFBIG)
	if a := must[Attr](t)(s.GetAttr(ctx, g.Ino)); a.Size != 0 {
		t.Errorf("size after the refused commit: %d", a.Size)
	}
	if m := must[map[int64]BlockRef](t)(s.Blocks(ctx, g.Ino, 0, 1<<40)); len(m) != 0 {
		t.Errorf("block map after the refused commit: %d slots", len(m))
	}
}

// TestLargeSparseBlockMap: a 20 GiB file (5120 block-map chunks at 4 KiB
// blocks; 40,000 chunks, 156 GiB, with MESHFS_LARGE) of two slots. Blocks
// over the whole file, truncation and reclaim list the chunks that exist
// rather than reading every index the size covers (which took 61 us per
// index); the test checks their results and logs their cost.
func TestLargeSparseBlockMap(t *testing.T) {
	ctx := ctxLong(t)
	s := newStore(t)
	const bs = testBlockSize
	chunks := int64(largeSize(5120, 40_000))
	last := chunks*slotsPerChunk - 1
	size := uint64(last+1) * bs
	f := must[Attr](t)(s.Create(ctx, RootIno, "sparse", 0o644, 0, 0))
	must[Attr](t)(s.CommitWrite(ctx, f.Ino, map[int64]BlockRef{0: ref("head", 4), last: ref("tail", bs)}, size, 1))

	start := time.Now()
	got, err := s.Blocks(ctx, f.Ino, 0, last)
	took := time.Since(start)
	if err != nil {
		t.Fatalf("Blocks over %d chunks: %v", chunks, err)
	}
	if len(got) != 2 || got[0] != ref("head", 4) || got[last] != ref("tail", bs) {
		t.Errorf("Blocks of the sparse file: %v", got)
	}
	t.Logf("Blocks of a %d GiB file with 2 blocks (%d chunks): %v, %v per chunk",
		size>>30, chunks, took.Round(time.Millisecond), (took / time.Duration(chunks)).Round(time.Microsecond))

	// Truncation to 10 bytes cuts across every chunk: several batches.
	ten := uint64(10)
	start = time.Now()
	a := must[Attr](t)(s.SetAttr(ctx, f.Ino, SetAttrIn{Size: &ten}))
	t.Logf("truncate of the %d GiB file to 10 bytes: %v", size>>30, time.Since(start).Round(time.Millisecond))
	if a.Size != 10 {
		t.Errorf("size after truncate: %d", a.Size)
	}
	if m := must[map[int64]BlockRef](t)(s.Blocks(ctx, f.Ino, 0, last)); len(m) != 1 || m[0] != ref("head", 4) {
		t.Errorf("blocks after truncate: %v", m)
	}
	// And growing back costs nothing: the chunks past the end are gone.
	start = time.Now()
	must[Attr](t)(s.SetAttr(ctx, f.Ino, SetAttrIn{Size: &size}))
	t.Logf("growing back: %v", time.Since(start).Round(time.Millisecond))

	must[Attr](t)(s.CommitWrite(ctx, f.Ino, map[int64]BlockRef{last: ref("tail", bs)}, size, 2))
	must[Attr](t)(s.Unlink(ctx, RootIno, "sparse"))
	start = time.Now()
	ok(t, s.Reclaim(ctx, f.Ino))
	t.Logf("reclaim of the %d GiB sparse file: %v", size>>30, time.Since(start).Round(time.Millisecond))
	_, err = s.GetAttr(ctx, f.Ino)
	wantErrno(t, err, syscall.ENOENT)
}

// BenchmarkCreateOneDirectory creates files in one directory from one store
// and from several stores (mounts) at once. Every create rewrites the
// directory's inode (its mtime) with the revision it read, so creates in
// one directory are serialized within a store and conflict across stores.
func BenchmarkCreateOneDirectory(b *testing.B) {
	for _, stores := range []int{1, 4} {
		b.Run(fmt.Sprintf("stores=%d", stores), func(b *testing.B) {
			bucket := newBucket()
			ss := make([]*Store, stores)
			for i := range ss {
				ss[i] = openTestStore(b, bucket)
			}
			ctx := context.Background()
			d, err := ss[0].Mkdir(ctx, RootIno, "d", 0o755, 0, 0)
			if err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			var wg sync.WaitGroup
			var mu sync.Mutex
			var firstErr error
			for w := range stores {
				wg.Go(func() {
					for i := w; i < b.N; i += stores {
						if _, err := ss[w].Create(ctx, d.Ino, fmt.Sprintf("f%d", i), 0o644, 0, 0); err != nil {
							mu.Lock()
							firstErr = errors.Join(firstErr, err)
							mu.Unlock()
							return
						}
					}
				})
			}
			wg.Wait()
			if firstErr != nil {
				b.Fatal(firstErr)
			}
		})
	}
}

// TestLargeHugeSparseFile: a file of one byte at 1 EiB, with the production
// 4 MiB blocks, whose size covers 2^28 block-map chunk indices. Reading its
// block map, truncating it and reclaiming it must cost what its one chunk
// costs: when they visited every index, each ran into the store's deadline,
// a truncation stopped at an intermediate size and the unlinked inode was
// never reclaimed.
func TestLargeHugeSparseFile(t *testing.T) {
	const bs = 4 << 20
	ctx := ctxLong(t)
	s, err := Open(ctx, connect(t), Options{Bucket: newBucket(), BlockSize: bs})
	if err != nil {
		t.Fatal(err)
	}
	f := must[Attr](t)(s.Create(ctx, RootIno, "huge", 0o644, 0, 0))
	const size = uint64(1) << 60
	last := int64(size/bs - 1)
	start := time.Now()
	must[Attr](t)(s.CommitWrite(ctx, f.Ino, map[int64]BlockRef{last: ref("tail", bs)}, size, 1))
	t.Logf("commit of one block at the end of a 1 EiB file: %v", time.Since(start).Round(time.Millisecond))

	// As a mount reads it: the whole block map, under the default deadline.
	start = time.Now()
	got, err := s.Blocks(context.Background(), f.Ino, 0, last)
	t.Logf("Blocks over the whole file: %d slots, %v after %v", len(got), err, time.Since(start).Round(time.Millisecond))
	if err != nil || len(got) != 1 || got[last] != ref("tail", bs) {
		t.Errorf("Blocks of a 1 EiB file with one block: %v, %v", got, err)
	}

	cut := uint64(1 << 30)
	start = time.Now()
	_, err = s.SetAttr(context.Background(), f.Ino, SetAttrIn{Size: &cut})
	a := must[Attr](t)(s.GetAttr(ctx, f.Ino))
	t.Logf("truncate to 1 GiB: %v after %v; size now %d", err, time.Since(start).Round(time.Millisecond), a.Size)
	if err != nil || a.Size != cut {
		t.Errorf("truncate of a 1 EiB file with one block to 1 GiB: %v, size %d", err, a.Size)
	}

	g := must[Attr](t)(s.Create(ctx, RootIno, "huge2", 0o644, 0, 0))
	must[Attr](t)(s.CommitWrite(ctx, g.Ino, map[int64]BlockRef{last: ref("tail2", bs)}, size, 1))
	must[Attr](t)(s.Unlink(ctx, RootIno, "huge2"))
	start = time.Now()
	err = s.Reclaim(context.Background(), g.Ino)
	t.Logf("reclaim: %v after %v", err, time.Since(start).Round(time.Millisecond))
	if err != nil {
		t.Errorf("reclaim of an unlinked 1 EiB file with one block: %v", err)
	}
}

// slowLink is a TCP proxy to the test server whose client-to-server
// direction carries at most rate bytes a second, as a slow network would.
func slowLink(t *testing.T, rate int) string {
	t.Helper()
	target := strings.TrimPrefix(testServer.url, "nats://")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			srv, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, c, srv)
			mu.Unlock()
			wg.Go(func() {
				defer srv.Close()
				buf := make([]byte, 16<<10)
				start, sent := time.Now(), 0
				for {
					n, err := c.Read(buf)
					if n > 0 {
						if _, err := srv.Write(buf[:n]); err != nil {
							return
						}
						sent += n
						time.Sleep(time.Until(start.Add(time.Duration(sent) * time.Second / time.Duration(rate))))
					}
					if err != nil {
						return
					}
				}
			})
			wg.Go(func() {
				defer c.Close()
				_, _ = io.Copy(c, srv)
			})
		}
	})
	return "nats://" + ln.Addr().String()
}

// TestLargeCommitOverSlowLink commits block maps to a store whose link to
// the server carries 2 MB/s (16 Mbit/s), with the default options and the
// deadline a mount gives a commit (30 s). The commit request is answered
// only once the server has received the rest of the batch ahead of it, so
// with a fixed per-attempt timeout (it was 1.25 s) a batch that takes longer
// to cross the link was abandoned and sent again until the deadline: 10 full
// chunks (~1 MB) committed, 100 (~9.4 MB, 102,400 slots: a 400 GiB file at
// 4 MiB blocks written between two commits) never did. An attempt's
// deadline now grows with the batch's size.
func TestLargeCommitOverSlowLink(t *testing.T) {
	ctx := ctxLong(t)
	const rate = 2 << 20
	nc, err := natsd.Connect(ctx, []string{slowLink(t, rate)}, testSecret, t.Name(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	s, err := Open(ctx, nc, Options{Bucket: newBucket(), BlockSize: testBlockSize})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("per-attempt timeout %v", s.attemptTimeout)
	for _, chunks := range []int64{10, 100} {
		f := must[Attr](t)(s.Create(ctx, RootIno, fmt.Sprintf("f%d", chunks), 0o644, 0, 0))
		slots := make(map[int64]BlockRef, chunks*slotsPerChunk)
		for i := range chunks * slotsPerChunk {
			slots[i] = largeRef(5, i, testBlockSize)
		}
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		start := time.Now()
		_, err := s.CommitWrite(cctx, f.Ino, slots, uint64(len(slots))*testBlockSize, 1)
		cancel()
		t.Logf("CommitWrite of %d slots (%d chunks) over 2 MB/s with a 30 s deadline: %v after %v",
			len(slots), chunks, err, time.Since(start).Round(time.Millisecond))
		if err != nil {
			t.Errorf("CommitWrite of %d full chunks over a 2 MB/s link: %v", chunks, err)
		}
	}
}
