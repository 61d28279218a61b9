package fuse

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/meshfs/meshfs/mesh/meta"
)

// TestRoundTrip writes files of sizes around the slot boundaries through
// one mount and reads them back through it and through a second mount of
// the same file system, which has never seen the data: what it reads came
// through the metadata and the block mesh, not a page cache.
func TestRoundTrip(t *testing.T) {
	t.Parallel()
	tm := newTestMesh(t)
	_, a := tm.mount()
	sizes := []int{0, 1, slot - 1, slot, slot + 1, 5 << 20}
	want := map[string][]byte{}
	for i, n := range sizes {
		name := fmt.Sprintf("f%d", n)
		want[name] = randBytes(n, uint64(i+1))
		mustWrite(t, filepath.Join(a, name), want[name])
	}
	for name, data := range want {
		sameContent(t, "same mount "+name, mustRead(t, filepath.Join(a, name)), data)
	}
	_, b := tm.mount()
	for name, data := range want {
		sameContent(t, "second mount "+name, mustRead(t, filepath.Join(b, name)), data)
		st, err := os.Stat(filepath.Join(b, name))
		if err != nil {
			t.Fatal(err)
		}
		if st.Size() != int64(len(data)) {
			t.Errorf("%s: size %d on second mount, want %d", name, st.Size(), len(data))
		}
	}
}

// TestOverwriteMiddle rewrites a range inside an existing multi-slot file
// without truncating: the slots it touches partly must keep their other
// bytes (read back from the old blocks).
func TestOverwriteMiddle(t *testing.T) {
	t.Parallel()
	tm := newTestMesh(t)
	_, a := tm.mount()
	path := filepath.Join(a, "f")
	data := randBytes(3*slot+100, 7)
	mustWrite(t, path, data)

	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	patch := bytes.Repeat([]byte{0xAB}, slot)
	off := int64(slot/2 + 10)
	if _, err := f.WriteAt(patch, off); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	copy(data[off:], patch)
	_, b := tm.mount()
	sameContent(t, "patched file on second mount", mustRead(t, filepath.Join(b, "f")), data)
}

// TestAppend appends in small pieces with a flush after each, so every
// append rewrites the tail slot from its committed block.
func TestAppend(t *testing.T) {
	t.Parallel()
	tm := newTestMesh(t)
	_, a := tm.mount()
	path := filepath.Join(a, "log")
	var want []byte
	for i := range 40 {
		line := randBytes(3000+i, uint64(100+i))
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.Write(line); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatalf("close: %v", err)
		}
		want = append(want, line...)
	}
	sameContent(t, "appended file", mustRead(t, path), want)
	_, b := tm.mount()
	sameContent(t, "appended file on second mount", mustRead(t, filepath.Join(b, "log")), want)
}

// TestSharedHandles: two handles of one file on one mount see each other's
// unflushed writes, and the first close commits both.
func TestSharedHandles(t *testing.T) {
	t.Parallel()
	tm := newTestMesh(t)
	fsys, a := tm.mount()
	path := filepath.Join(a, "f")
	w1, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer w1.Close()
	w2, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer w2.Close()
	p1, p2 := randBytes(slot+10, 1), randBytes(2*slot, 2)
	if _, err := w1.WriteAt(p1, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := w2.WriteAt(p2, int64(len(p1))); err != nil {
		t.Fatal(err)
	}
	want := append(bytes.Clone(p1), p2...)
	got := make([]byte, len(want))
	if _, err := w2.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	sameContent(t, "read through second handle before flush", got, want)

	st, _ := w1.Stat()
	ino := meta.Ino(st.Sys().(*syscall.Stat_t).Ino)
	if local, _, _, ok := fsys.fileFor(ino).localView(); !ok || local != int64(len(want)) {
		t.Errorf("in-memory size %d (unflushed %v), want %d", local, ok, len(want))
	}
	if err := w1.Sync(); err != nil {
		t.Fatalf("fsync: %v", err)
	}
	attr, err := tm.meta.GetAttr(context.Background(), ino)
	if err != nil {
		t.Fatal(err)
	}
	if attr.Size != uint64(len(want)) {
		t.Errorf("committed size after fsync %d, want %d", attr.Size, len(want))
	}
	_, b := tm.mount()
	sameContent(t, "second mount after fsync", mustRead(t, filepath.Join(b, "f")), want)
}

// TestTruncate: truncating down then up leaves zeros past the cut, both for
// committed data (truncate(2)) and for unflushed data (ftruncate on an open
// file).
func TestTruncate(t *testing.T) {
	t.Parallel()
	tm := newTestMesh(t)
	_, a := tm.mount()

	path := filepath.Join(a, "committed")
	data := randBytes(2*slot+slot/2, 3)
	mustWrite(t, path, data)
	cut := int64(slot + 1234)
	if err := os.Truncate(path, cut); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, 3*slot); err != nil {
		t.Fatal(err)
	}
	want := make([]byte, 3*slot)
	copy(want, data[:cut])
	sameContent(t, "truncated down then up", mustRead(t, path), want)

	path2 := filepath.Join(a, "dirty")
	f, err := os.Create(path2)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(cut); err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(3 * slot); err != nil {
		t.Fatal(err)
	}
	// A write after the cut lands in the re-extended range.
	tail := []byte("tail")
	if _, err := f.WriteAt(tail, 2*slot); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	want2 := bytes.Clone(want)
	copy(want2[2*slot:], tail)
	sameContent(t, "ftruncated open file", mustRead(t, path2), want2)

	_, b := tm.mount()
	sameContent(t, "second mount, committed", mustRead(t, filepath.Join(b, "committed")), want)
	sameContent(t, "second mount, dirty", mustRead(t, filepath.Join(b, "dirty")), want2)
}

// TestSparse writes far past the end of a file: the gap is a hole that
// reads as zeros and costs no block.
func TestSparse(t *testing.T) {
	t.Parallel()
	tm := newTestMesh(t)
	_, a := tm.mount()
	path := filepath.Join(a, "sparse")
	head := []byte("head")
	mustWrite(t, path, head)
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	tail := randBytes(100, 9)
	off := int64(3*slot + 17)
	if _, err := f.WriteAt(tail, off); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	want := make([]byte, off+int64(len(tail)))
	copy(want, head)
	copy(want[off:], tail)

	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() != int64(len(want)) {
		t.Errorf("size %d, want %d", st.Size(), len(want))
	}
	sameContent(t, "sparse file", mustRead(t, path), want)
	_, b := tm.mount()
	sameContent(t, "sparse file on second mount", mustRead(t, filepath.Join(b, "sparse")), want)

	refs, err := tm.meta.Blocks(context.Background(), meta.Ino(st.Sys().(*syscall.Stat_t).Ino), 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(refs) != 2 || !hasSlot(refs, 0) || !hasSlot(refs, 3) {
		t.Errorf("block map %v: want slots 0 and 3 only", refs)
	}
}

func hasSlot(refs map[int64]meta.BlockRef, s int64) bool {
	_, ok := refs[s]
	return ok
}

// TestUploadFailure: when the mesh refuses blocks, close and fsync fail
// with EIO and nothing is committed; a later fsync on the same handle
// retries the kept data.
func TestUploadFailure(t *testing.T) {
	t.Parallel()
	tm := newTestMesh(t)
	_, a := tm.mount()
	path := filepath.Join(a, "f")
	old := randBytes(slot+500, 11)
	mustWrite(t, path, old)

	tm.blocks.fail.Store(true)
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	newer := randBytes(len(old), 12)
	if _, err := f.WriteAt(newer, 0); err != nil {
		t.Fatalf("write (buffered) failed: %v", err)
	}
	if err := f.Close(); !errors.Is(err, syscall.EIO) {
		t.Fatalf("close with the mesh refusing writes: %v, want EIO", err)
	}
	tm.blocks.fail.Store(false)
	sameContent(t, "content after failed close", mustRead(t, path), old)
	_, b := tm.mount()
	sameContent(t, "content after failed close, second mount", mustRead(t, filepath.Join(b, "f")), old)

	// fsync fails, then succeeds once the mesh is back.
	tm.blocks.fail.Store(true)
	f, err = os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(newer, 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); !errors.Is(err, syscall.EIO) {
		t.Fatalf("fsync with the mesh refusing writes: %v, want EIO", err)
	}
	tm.blocks.fail.Store(false)
	if err := f.Sync(); err != nil {
		t.Fatalf("fsync after the mesh came back: %v", err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	_, c := tm.mount()
	sameContent(t, "content after retried fsync", mustRead(t, filepath.Join(c, "f")), newer)
}

// TestMeshFull: when no node has room for a block, close and fsync fail
// with ENOSPC (not EIO: nothing is broken, the mesh is full), the file keeps
// its previous content, and writing works again once there is room.
func TestMeshFull(t *testing.T) {
	t.Parallel()
	tm := newTestMesh(t)
	_, a := tm.mount()
	path := filepath.Join(a, "f")
	old := randBytes(slot+500, 21)
	mustWrite(t, path, old)

	tm.blocks.full.Store(true)
	newer := randBytes(len(old), 22)
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(newer, 0); err != nil {
		t.Fatalf("write (buffered) failed: %v", err)
	}
	if err := f.Sync(); !errors.Is(err, syscall.ENOSPC) {
		t.Errorf("fsync with the mesh full: %v, want ENOSPC", err)
	}
	if err := f.Close(); !errors.Is(err, syscall.ENOSPC) {
		t.Errorf("close with the mesh full: %v, want ENOSPC", err)
	}
	tm.blocks.full.Store(false)
	_, b := tm.mount()
	sameContent(t, "content after ENOSPC, second mount", mustRead(t, filepath.Join(b, "f")), old)
	mustWrite(t, path, newer)
	sameContent(t, "content once there is room", mustRead(t, filepath.Join(b, "f")), newer)
}

// TestUnlinkOpenFile: an unlinked file stays readable through a handle
// open on the mount, and its inode is reclaimed at the last close.
func TestUnlinkOpenFile(t *testing.T) {
	t.Parallel()
	tm := newTestMesh(t)
	_, a := tm.mount()
	path := filepath.Join(a, "f")
	data := randBytes(2*slot+5, 13)
	mustWrite(t, path, data)
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := f.Stat()
	ino := meta.Ino(st.Sys().(*syscall.Stat_t).Ino)
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stat after unlink: %v, want ENOENT", err)
	}
	got := make([]byte, len(data))
	if _, err := f.ReadAt(got, 0); err != nil {
		t.Fatalf("read of unlinked open file: %v", err)
	}
	sameContent(t, "unlinked open file", got, data)
	if _, err := tm.meta.GetAttr(context.Background(), ino); err != nil {
		t.Errorf("inode gone while still open: %v", err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	// Release is asynchronous to close(2); give it a moment.
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := tm.meta.GetAttr(context.Background(), ino)
		if errors.Is(err, syscall.ENOENT) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("inode %d not reclaimed after last close: GetAttr err %v", ino, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestWriteBuffer writes far more than the write buffer holds, sequentially
// and scattered over two files at once, with slow uploads: writes wait for
// room instead of failing or deadlocking, and the data is intact.
func TestWriteBuffer(t *testing.T) {
	t.Parallel()
	tm := newTestMesh(t)
	tm.blocks.writeDelay.Store(int64(2 * time.Millisecond))
	fsys, a := tm.mount(func(o *Options) {
		o.WriteBuffer = 3 * slot
		o.Uploads = 2
	})

	seq := randBytes(40*slot+3, 21)
	mustWrite(t, filepath.Join(a, "seq"), seq)
	if peak := fsys.buf.peak(); peak > 3*slot {
		t.Errorf("write buffer peaked at %d bytes, limit %d", peak, 3*slot)
	}

	// Scattered writes, backwards through two files in turn: no slot is
	// ever passed sequentially, so only spilling makes room.
	const n = 12
	want := [2][]byte{randBytes(n*slot, 22), randBytes(n*slot, 23)}
	var files [2]*os.File
	for i := range files {
		f, err := os.Create(filepath.Join(a, fmt.Sprintf("scatter%d", i)))
		if err != nil {
			t.Fatal(err)
		}
		files[i] = f
	}
	for s := n - 1; s >= 0; s-- {
		for i, f := range files {
			piece := want[i][s*slot : (s+1)*slot]
			for off := 0; off < slot; off += 16 << 10 {
				if _, err := f.WriteAt(piece[off:off+16<<10], int64(s*slot+off)); err != nil {
					t.Fatalf("scattered write: %v", err)
				}
			}
		}
	}
	for _, f := range files {
		if err := f.Close(); err != nil {
			t.Fatalf("close: %v", err)
		}
	}
	_, b := tm.mount()
	sameContent(t, "sequential file", mustRead(t, filepath.Join(b, "seq")), seq)
	for i := range files {
		sameContent(t, fmt.Sprintf("scattered file %d", i), mustRead(t, filepath.Join(b, fmt.Sprintf("scatter%d", i))), want[i])
	}
}

// TestParallelWriters writes many files at once through one mount.
func TestParallelWriters(t *testing.T) {
	t.Parallel()
	tm := newTestMesh(t)
	_, a := tm.mount(func(o *Options) { o.WriteBuffer = 4 * slot })
	var wg sync.WaitGroup
	const files = 8
	for i := range files {
		wg.Add(1)
		go func() {
			defer wg.Done()
			data := randBytes(3*slot+i*1000, uint64(300+i))
			path := filepath.Join(a, fmt.Sprintf("p%d", i))
			if err := os.WriteFile(path, data, 0o644); err != nil {
				t.Errorf("write %s: %v", path, err)
				return
			}
			got, err := os.ReadFile(path)
			if err != nil {
				t.Errorf("read %s: %v", path, err)
				return
			}
			sameContent(t, path, got, data)
		}()
	}
	wg.Wait()
}

// TestReadCache: reading a file in small pieces fetches each block once,
// thanks to the block cache (the kernel asks for at most 1 MiB at a time).
func TestReadCache(t *testing.T) {
	t.Parallel()
	tm := newTestMesh(t)
	_, a := tm.mount()
	data := randBytes(10*slot, 31)
	mustWrite(t, filepath.Join(a, "f"), data)

	_, b := tm.mount()
	before := tm.blocks.reads.Load()
	f, err := os.Open(filepath.Join(b, "f"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var got []byte
	buf := make([]byte, 4096)
	for {
		n, err := f.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			break
		}
	}
	sameContent(t, "read in 4 KiB pieces", got, data)
	if reads := tm.blocks.reads.Load() - before; reads > 10 {
		t.Errorf("%d block reads for a 10-block file", reads)
	}
}

// TestOpenFileSeesOtherMountsAppend: a file held open on one mount sees
// what another mount appended and committed, once its kernel asks for the
// attributes again (here at once: no attribute caching on the reader).
func TestOpenFileSeesOtherMountsAppend(t *testing.T) {
	t.Parallel()
	tm := newTestMesh(t)
	_, a := tm.mount()
	_, b := tm.mount(func(o *Options) { o.AttrTimeout, o.EntryTimeout = -1, -1 })
	first, second := randBytes(slot+100, 61), randBytes(slot, 62)
	mustWrite(t, filepath.Join(a, "f"), first)

	r, err := os.Open(filepath.Join(b, "f"))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	got, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	sameContent(t, "before the append", got, first)

	w, err := os.OpenFile(filepath.Join(a, "f"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(second); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	got, err = io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	sameContent(t, "the append, read through the open handle", got, second)
}

// TestDefaultBlockSize runs a round trip with the production block size of
// 4 MiB, where the kernel's 1 MiB writes and reads are pieces of a block:
// each block is uploaded once and, read back in pieces, fetched once.
func TestDefaultBlockSize(t *testing.T) {
	t.Parallel()
	const bs = 4 << 20
	tm := newTestMeshBlockSize(t, bs)
	_, a := tm.mount()
	data := randBytes(2*bs+bs/2, 71)
	mustWrite(t, filepath.Join(a, "big"), data)
	if w := tm.blocks.writes.Load(); w != 3 {
		t.Errorf("%d block uploads for a 2.5-block file, want 3", w)
	}
	_, b := tm.mount()
	sameContent(t, "4 MiB blocks, second mount", mustRead(t, filepath.Join(b, "big")), data)
	if r := tm.blocks.reads.Load(); r != 3 {
		t.Errorf("%d block fetches for a 2.5-block file, want 3", r)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(b, "big"), &st); err != nil {
		t.Fatal(err)
	}
	if st.Blksize != bs || st.Blocks != int64(len(data)+511)/512 {
		t.Errorf("blksize %d blocks %d, want %d and %d", st.Blksize, st.Blocks, bs, (len(data)+511)/512)
	}
}

// TestWriteMarksTimes: write(2) marks mtime and ctime for update at once,
// before any close or fsync commits the data, and the commit keeps the
// time the write showed (a later stat does not see the times move).
func TestWriteMarksTimes(t *testing.T) {
	t.Parallel()
	tm := newTestMesh(t)
	_, a := tm.mount()
	path := filepath.Join(a, "f")
	mustWrite(t, path, []byte("before"))
	old, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond)
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("after"), 3); err != nil {
		t.Fatal(err)
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	written := time.Unix(st.Mtim.Unix())
	changed := time.Unix(st.Ctim.Unix())
	if !written.After(old.ModTime()) || changed.Before(written) {
		t.Errorf("after write, before close: mtime %v ctime %v; want both after the old mtime %v", written, changed, old.ModTime())
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if !fi.ModTime().Equal(written) {
		t.Errorf("mtime after close %v, while written it showed %v", fi.ModTime(), written)
	}
}
