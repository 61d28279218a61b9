package persist

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

const testBlockSize = 4 << 20

func testOpts() Options {
	return Options{ClusterID: "test-cluster", BlockSize: testBlockSize}
}

func openTest(t testing.TB, dir string) *Store {
	t.Helper()
	s, err := Open(dir, testOpts())
	if err != nil {
		t.Fatalf("Open(%s): %v", dir, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func randBlock(t testing.TB, n int) ([]byte, BlockID) {
	t.Helper()
	data := make([]byte, n)
	rand.Read(data)
	return data, Sum(data)
}

func TestPutGetRoundTrip(t *testing.T) {
	for _, size := range []int{0, 1, 4095, 4 << 20} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			ctx := context.Background()
			s := openTest(t, t.TempDir())
			data, id := randBlock(t, size)
			if err := s.Put(ctx, id, data); err != nil {
				t.Fatalf("Put: %v", err)
			}
			got, err := s.Get(ctx, id)
			if err != nil {
				t.Fatalf("Get: %v", err)
			}
			if !bytes.Equal(got, data) {
				t.Fatalf("Get returned %d bytes that differ from the %d put", len(got), len(data))
			}
			ok, n, err := s.Has(ctx, id)
			if err != nil || !ok || n != size {
				t.Fatalf("Has = %v, %d, %v; want true, %d, nil", ok, n, err, size)
			}
			// A second Put of the same block is a no-op and keeps the stats.
			if err := s.Put(ctx, id, data); err != nil {
				t.Fatalf("second Put: %v", err)
			}
			if blocks, nbytes := s.Stats(); blocks != 1 || nbytes != int64(size) {
				t.Fatalf("Stats = %d, %d; want 1, %d", blocks, nbytes, size)
			}
		})
	}
}

// TestPutNil stores the empty block given as a nil slice; it must read back
// as present and empty, not as missing.
func TestPutNil(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := Open(dir, testOpts())
	if err != nil {
		t.Fatal(err)
	}
	id := Sum(nil)
	if err := s.Put(ctx, id, nil); err != nil {
		t.Fatalf("Put(nil): %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openTest(t, dir)
	got, err := s.Get(ctx, id)
	if err != nil || len(got) != 0 {
		t.Fatalf("Get of empty block = %d bytes, %v", len(got), err)
	}
	if blocks, _ := s.Stats(); blocks != 1 {
		t.Fatalf("Stats blocks = %d, want 1", blocks)
	}
}

func TestPutRejects(t *testing.T) {
	ctx := context.Background()
	good, goodID := randBlock(t, 100)
	big, bigID := randBlock(t, testBlockSize+1)
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	tests := []struct {
		name string
		ctx  context.Context
		id   BlockID
		data []byte
		want error
	}{
		{"wrong id", ctx, Sum([]byte("other")), good, ErrHashMismatch},
		{"zero id", ctx, BlockID{}, good, ErrHashMismatch},
		{"too large", ctx, bigID, big, ErrTooLarge},
		{"cancelled", cancelled, goodID, good, context.Canceled},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := openTest(t, t.TempDir())
			err := s.Put(tc.ctx, tc.id, tc.data)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Put error = %v, want %v", err, tc.want)
			}
			for _, id := range []BlockID{tc.id, Sum(tc.data)} {
				if ok, _, err := s.Has(ctx, id); err != nil || ok {
					t.Fatalf("Has(%s) = %v, %v after failed Put; want false", id, ok, err)
				}
			}
			if blocks, _ := s.Stats(); blocks != 0 {
				t.Fatalf("Stats blocks = %d after failed Put, want 0", blocks)
			}
		})
	}
}

func TestGetMissing(t *testing.T) {
	s := openTest(t, t.TempDir())
	id := Sum([]byte("never stored"))
	data, err := s.Get(context.Background(), id)
	if !errors.Is(err, ErrNotFound) || data != nil {
		t.Fatalf("Get = %d bytes, %v; want nil, ErrNotFound", len(data), err)
	}
	if !strings.Contains(err.Error(), id.String()) {
		t.Errorf("error %q does not name the block", err)
	}
}

// flipStoredByte corrupts the stored copy of id behind the Store's back, as
// a disk error would.
func flipStoredByte(t *testing.T, dir string, id BlockID, off int) {
	t.Helper()
	db, err := bolt.Open(filepath.Join(dir, dbFileName), 0o600, nil)
	if err != nil {
		t.Fatalf("bolt.Open: %v", err)
	}
	defer db.Close()
	err = db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketBlocks)
		v := bytes.Clone(b.Get(id[:]))
		if v == nil {
			return errors.New("block missing")
		}
		v[off] ^= 0x01
		return b.Put(id[:], v)
	})
	if err != nil {
		t.Fatalf("corrupt block: %v", err)
	}
}

func TestCorruptBlock(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := Open(dir, testOpts())
	if err != nil {
		t.Fatal(err)
	}
	data, id := randBlock(t, 64<<10)
	if err := s.Put(ctx, id, data); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	flipStoredByte(t, dir, id, 1234)

	s = openTest(t, dir)
	got, err := s.Get(ctx, id)
	if !errors.Is(err, ErrCorrupt) || got != nil {
		t.Fatalf("Get of corrupt block = %d bytes, %v; want nil, ErrCorrupt", len(got), err)
	}
	// Has does not verify, so the block still shows up.
	if ok, n, err := s.Has(ctx, id); err != nil || !ok || n != len(data) {
		t.Fatalf("Has = %v, %d, %v; want true, %d, nil", ok, n, err, len(data))
	}
	// Putting the good content again repairs the stored copy.
	if err := s.Put(ctx, id, data); err != nil {
		t.Fatalf("repair Put: %v", err)
	}
	if got, err := s.Get(ctx, id); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("Get after repair = %d bytes, %v", len(got), err)
	}
	if blocks, nbytes := s.Stats(); blocks != 1 || nbytes != int64(len(data)) {
		t.Fatalf("Stats after repair = %d, %d; want 1, %d", blocks, nbytes, len(data))
	}
	// The Put found the copy corrupt: that is recorded, once; a Put of
	// the now good copy is not.
	if err := s.Put(ctx, id, data); err != nil {
		t.Fatal(err)
	}
	if got := s.TakeCorruptReplaced(); len(got) != 1 || got[0] != id {
		t.Fatalf("TakeCorruptReplaced after a Put over a corrupt copy = %v, want [%s]", got, id)
	}
	if got := s.TakeCorruptReplaced(); len(got) != 0 {
		t.Fatalf("TakeCorruptReplaced a second time = %v, want none", got)
	}
	// Replace repairs without recording: its caller accounts for the rot.
	s.Close()
	flipStoredByte(t, dir, id, 99)
	s = openTest(t, dir)
	if err := s.Replace(ctx, id, data); err != nil {
		t.Fatalf("Replace: %v", err)
	}
	if got, err := s.Get(ctx, id); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("Get after Replace = %d bytes, %v", len(got), err)
	}
	if got := s.TakeCorruptReplaced(); len(got) != 0 {
		t.Fatalf("TakeCorruptReplaced after Replace = %v, want none", got)
	}
}

func TestReopen(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := Open(dir, testOpts())
	if err != nil {
		t.Fatal(err)
	}
	want := map[BlockID][]byte{}
	var total int64
	for i := range 50 {
		data, id := randBlock(t, 1+i*997)
		if err := s.Put(ctx, id, data); err != nil {
			t.Fatal(err)
		}
		want[id] = data
		total += int64(len(data))
	}
	blocks, nbytes := s.Stats()
	if blocks != 50 || nbytes != total {
		t.Fatalf("Stats before reopen = %d, %d; want 50, %d", blocks, nbytes, total)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = openTest(t, dir)
	for id, data := range want {
		got, err := s.Get(ctx, id)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("Get(%s) after reopen = %d bytes, %v", id, len(got), err)
		}
	}
	if b2, n2 := s.Stats(); b2 != blocks || n2 != nbytes {
		t.Fatalf("Stats after reopen = %d, %d; want %d, %d", b2, n2, blocks, nbytes)
	}
}

func TestOpenInUse(t *testing.T) {
	dir := t.TempDir()
	openTest(t, dir)
	opts := testOpts()
	opts.LockTimeout = 100 * time.Millisecond
	start := time.Now()
	s, err := Open(dir, opts)
	if err == nil {
		s.Close()
		t.Fatal("second Open of a dir in use succeeded")
	}
	if !errors.Is(err, ErrInUse) {
		t.Fatalf("second Open error = %v, want ErrInUse", err)
	}
	if !strings.Contains(err.Error(), dir) {
		t.Errorf("error %q does not name the dir", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Open took %v despite a 100ms lock timeout", d)
	}
}

func TestOpenIdentity(t *testing.T) {
	tests := []struct {
		name    string
		opts    Options
		want    error
		mention []string // strings the error must contain
	}{
		{"same", Options{ClusterID: "alpha", BlockSize: 4096}, nil, nil},
		{"other cluster", Options{ClusterID: "beta", BlockSize: 4096}, ErrWrongCluster, []string{"alpha", "beta"}},
		{"other block size", Options{ClusterID: "alpha", BlockSize: 8192}, ErrWrongBlockSize, []string{"4096", "8192"}},
		{"unspecified", Options{}, nil, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			s, err := Open(dir, Options{ClusterID: "alpha", BlockSize: 4096})
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			s, err = Open(dir, tc.opts)
			if err == nil {
				defer s.Close()
			}
			if tc.want == nil {
				if err != nil {
					t.Fatalf("reopen: %v", err)
				}
				// The recorded block size still limits Put.
				big, id := randBlock(t, 4097)
				if err := s.Put(context.Background(), id, big); !errors.Is(err, ErrTooLarge) {
					t.Fatalf("Put of 4097 bytes = %v, want ErrTooLarge", err)
				}
				return
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("reopen error = %v, want %v", err, tc.want)
			}
			for _, m := range tc.mention {
				if !strings.Contains(err.Error(), m) {
					t.Errorf("error %q does not mention %q", err, m)
				}
			}
		})
	}
}

func TestDeleteAndList(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, t.TempDir())
	sizes := map[BlockID]int{}
	for i := range 20 {
		data, id := randBlock(t, i*31)
		if err := s.Put(ctx, id, data); err != nil {
			t.Fatal(err)
		}
		sizes[id] = len(data)
	}
	var victim BlockID
	for id := range sizes {
		victim = id
		break
	}
	for range 2 { // Delete is idempotent
		if err := s.Delete(ctx, victim); err != nil {
			t.Fatalf("Delete: %v", err)
		}
	}
	if ok, _, err := s.Has(ctx, victim); err != nil || ok {
		t.Fatalf("Has after Delete = %v, %v; want false", ok, err)
	}
	if _, err := s.Get(ctx, victim); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get after Delete = %v, want ErrNotFound", err)
	}
	delete(sizes, victim)

	var ids []BlockID
	err := s.List(ctx, func(id BlockID, size int) error {
		if want, ok := sizes[id]; !ok || size != want {
			t.Errorf("List gave %s size %d; stored: %v, size %d", id, size, ok, want)
		}
		ids = append(ids, id)
		return nil
	})
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	if len(ids) != len(sizes) {
		t.Fatalf("List gave %d ids, want %d", len(ids), len(sizes))
	}
	if !slices.IsSortedFunc(ids, func(a, b BlockID) int { return bytes.Compare(a[:], b[:]) }) {
		t.Fatal("List ids are not in id order")
	}
	var total int64
	for _, n := range sizes {
		total += int64(n)
	}
	if blocks, nbytes := s.Stats(); blocks != int64(len(sizes)) || nbytes != total {
		t.Fatalf("Stats = %d, %d; want %d, %d", blocks, nbytes, len(sizes), total)
	}

	// fn's error stops the walk and comes back as is.
	stop := errors.New("stop")
	calls := 0
	err = s.List(ctx, func(BlockID, int) error { calls++; return stop })
	if err != stop || calls != 1 {
		t.Fatalf("List with failing fn = %v after %d calls; want stop after 1", err, calls)
	}
}

// TestListManyBatches crosses the listBatch boundary, deleting blocks while
// the walk is running, which the resume-by-Seek must survive.
func TestListManyBatches(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, t.TempDir())
	const n = 2*listBatch + 17
	ids := make([]BlockID, n)
	// Put concurrently so the Puts share commits; one by one they would
	// each wait out the batch delay.
	var wg sync.WaitGroup
	const workers = 64
	for w := range workers {
		wg.Go(func() {
			for i := w; i < n; i += workers {
				data := fmt.Appendf(nil, "block %d", i)
				ids[i] = Sum(data)
				if err := s.Put(ctx, ids[i], data); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	slices.SortFunc(ids, func(a, b BlockID) int { return bytes.Compare(a[:], b[:]) })
	var got []BlockID
	err := s.List(ctx, func(id BlockID, _ int) error {
		got = append(got, id)
		if len(got) == listBatch {
			// Delete the last id handed out, which List resumes from.
			return s.Delete(ctx, id)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, ids) {
		t.Fatalf("List gave %d ids, want the %d stored in order", len(got), len(ids))
	}
}

func TestConcurrentPut(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, t.TempDir())
	const workers, perWorker = 32, 8
	blocks := make([][][]byte, workers)
	for w := range blocks {
		for range perWorker {
			data, _ := randBlock(t, 1000+w*100)
			blocks[w] = append(blocks[w], data)
		}
	}
	// Every worker also puts one shared block, racing on the same key.
	shared, sharedID := randBlock(t, 777)
	var wg sync.WaitGroup
	errs := make(chan error, workers*(perWorker+1))
	for w := range workers {
		wg.Go(func() {
			for _, data := range blocks[w] {
				if err := s.Put(ctx, Sum(data), data); err != nil {
					errs <- err
				}
			}
			if err := s.Put(ctx, sharedID, shared); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("Put: %v", err)
	}
	var total int64 = int64(len(shared))
	for _, bs := range blocks {
		for _, data := range bs {
			got, err := s.Get(ctx, Sum(data))
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("Get after concurrent Put = %d bytes, %v", len(got), err)
			}
			total += int64(len(data))
		}
	}
	if nblocks, nbytes := s.Stats(); nblocks != workers*perWorker+1 || nbytes != total {
		t.Fatalf("Stats = %d, %d; want %d, %d", nblocks, nbytes, workers*perWorker+1, total)
	}
}

func BenchmarkPut4MiB(b *testing.B) {
	ctx := context.Background()
	s := openTest(b, b.TempDir())
	data, _ := randBlock(b, 4<<20)
	b.SetBytes(int64(len(data)))
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		// A fresh block each time, since a repeated Put is a no-op; hashing
		// the id is part of the cost, as callers do it too.
		data[0], data[1], data[2], data[3] = byte(i), byte(i>>8), byte(i>>16), byte(i>>24)
		if err := s.Put(ctx, Sum(data), data); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPut4MiBParallel shows group commit: concurrent Puts share fsyncs.
func BenchmarkPut4MiBParallel(b *testing.B) {
	ctx := context.Background()
	s := openTest(b, b.TempDir())
	b.SetBytes(4 << 20)
	b.SetParallelism(4)
	b.RunParallel(func(pb *testing.PB) {
		data, _ := randBlock(b, 4<<20)
		for pb.Next() {
			rand.Read(data[:16])
			if err := s.Put(ctx, Sum(data), data); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func BenchmarkGet4MiB(b *testing.B) {
	ctx := context.Background()
	s := openTest(b, b.TempDir())
	data, id := randBlock(b, 4<<20)
	if err := s.Put(ctx, id, data); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if _, err := s.Get(ctx, id); err != nil {
			b.Fatal(err)
		}
	}
}

// TestLoad reads many blocks of several sizes, large ones through the file
// rather than the mmap, after deletes have freed pages for reuse: each must
// come back whole, into the caller's buffer when it is large enough, and
// Load must not check the hash (its callers do).
func TestLoad(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := openTest(t, dir)
	blocks := map[BlockID][]byte{}
	for i, size := range []int{0, 100, preadMin - 1, preadMin, 300 << 10, 1 << 20, 4 << 20, 70 << 10} {
		data, id := randBlock(t, size)
		if err := s.Put(ctx, id, data); err != nil {
			t.Fatalf("Put #%d: %v", i, err)
		}
		blocks[id] = data
	}
	for id, data := range blocks {
		if len(data) == 1<<20 {
			if err := s.Delete(ctx, id); err != nil {
				t.Fatal(err)
			}
			delete(blocks, id)
		}
	}
	for range 3 {
		data, id := randBlock(t, 200<<10)
		if err := s.Put(ctx, id, data); err != nil {
			t.Fatal(err)
		}
		blocks[id] = data
	}
	buf := make([]byte, 0, 4<<20)
	for id, data := range blocks {
		got, err := s.Load(ctx, id, buf)
		if err != nil {
			t.Fatalf("Load(%d bytes): %v", len(data), err)
		}
		if !bytes.Equal(got, data) {
			t.Fatalf("Load returned %d bytes that differ from the %d put", len(got), len(data))
		}
		if len(got) > 0 && &got[:1][0] != &buf[:1][0] {
			t.Fatalf("Load of %d bytes did not use the %d-byte buffer", len(data), cap(buf))
		}
		if got, err := s.Load(ctx, id, nil); err != nil || !bytes.Equal(got, data) {
			t.Fatalf("Load(%d bytes) into nil = %d bytes, %v", len(data), len(got), err)
		}
	}
	if _, err := s.Load(ctx, Sum([]byte("missing")), buf); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Load of a missing block: %v; want ErrNotFound", err)
	}

	// A rotten copy loads as is: the caller's hash check catches it.
	data, id := randBlock(t, 256<<10)
	if err := s.Put(ctx, id, data); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	flipStoredByte(t, dir, id, 5000)
	s = openTest(t, dir)
	got, err := s.Load(ctx, id, nil)
	if err != nil || len(got) != len(data) || Sum(got) == id {
		t.Fatalf("Load of a rotten copy = %d bytes (hash ok: %v), %v; want the rotten bytes", len(got), Sum(got) == id, err)
	}
}
