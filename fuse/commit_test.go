package fuse

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/meshfs/meshfs/mesh/meta"
)

// committedContent reads a file's committed content straight from the
// metadata and the block mesh, as a mount would see it after a crash of the
// writer: the committed size, each slot's block up to its Len, zeros for
// holes and past a block's Len.
func committedContent(t *testing.T, tm *testMesh, ino meta.Ino) []byte {
	t.Helper()
	data, err := readCommitted(tm, ino)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// readCommitted is committedContent for goroutines that must not end the
// test (a mount's request handlers).
func readCommitted(tm *testMesh, ino meta.Ino) ([]byte, error) {
	ctx := context.Background()
	attr, err := tm.meta.GetAttr(ctx, ino)
	if err != nil {
		return nil, fmt.Errorf("getattr %d: %w", ino, err)
	}
	size := int64(attr.Size)
	out := make([]byte, size)
	if size == 0 {
		return out, nil
	}
	bs := int64(tm.blockSize)
	refs, err := tm.meta.Blocks(ctx, ino, 0, (size-1)/bs)
	if err != nil {
		return nil, fmt.Errorf("block map of %d: %w", ino, err)
	}
	for s, ref := range refs {
		if s*bs >= size {
			return nil, fmt.Errorf("slot %d lies past the committed size %d", s, size)
		}
		data, err := tm.blocks.Read(ctx, ref.ID)
		if err != nil {
			return nil, fmt.Errorf("block %s of slot %d: %w", ref.ID, s, err)
		}
		if int(ref.Len) > len(data) {
			return nil, fmt.Errorf("slot %d: block has %d bytes, Len %d", s, len(data), ref.Len)
		}
		copy(out[s*bs:], data[:ref.Len])
	}
	return out, nil
}

func inoOfFile(t *testing.T, f *os.File) meta.Ino {
	t.Helper()
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	return meta.Ino(fi.Sys().(*syscall.Stat_t).Ino)
}

// TestCommitSizeMatchesData: a write that lands while a close is between
// its uploads and its commit must not make the commit record a size that
// covers the write's data: that data is not part of the commit, and after a
// crash of the writer the file would read zeros there.
func TestCommitSizeMatchesData(t *testing.T) {
	t.Parallel()
	tm := newTestMesh(t)
	fsys, a := tm.mount()
	path := filepath.Join(a, "f")
	want := randBytes(3*slot+100, 21)
	mustWrite(t, path, want[:100])

	f1, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f1.Close()
	f2, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	ino := inoOfFile(t, f1)
	if _, err := f2.WriteAt(want[100:200], 100); err != nil {
		t.Fatal(err)
	}

	entered, resume := make(chan struct{}), make(chan struct{})
	var once sync.Once
	hook := func(meta.Ino) {
		once.Do(func() {
			close(entered)
			<-resume
		})
	}
	fsys.beforeCommit.Store(&hook)
	closed := make(chan error, 1)
	go func() { closed <- f2.Close() }()
	select {
	case <-entered:
	case <-time.After(10 * time.Second):
		t.Fatal("close did not reach its commit")
	}
	// close(2) sends FLUSH without the inode lock, so this append runs
	// while the close is between its uploads and its commit.
	if _, err := f1.WriteAt(want[200:], 200); err != nil {
		t.Fatal(err)
	}
	close(resume)
	if err := <-closed; err != nil {
		t.Fatalf("close: %v", err)
	}
	fsys.beforeCommit.Store(nil)

	got := committedContent(t, tm, ino)
	if len(got) < 200 {
		t.Errorf("committed size %d after close, want at least 200", len(got))
	}
	if len(got) <= len(want) {
		sameContent(t, "committed content after a close raced by an append", got, want[:len(got)])
	} else {
		t.Errorf("committed size %d, more than was written (%d)", len(got), len(want))
	}

	if err := f1.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	sameContent(t, "committed content after the last close", committedContent(t, tm, ino), want)
}

// TestCommitSizeUnderConcurrentAppends appends from one goroutine while
// another fsyncs over and over: every commit's size must be covered by the
// data it commits.
func TestCommitSizeUnderConcurrentAppends(t *testing.T) {
	t.Parallel()
	tm := newTestMesh(t)
	fsys, a := tm.mount()
	path := filepath.Join(a, "f")
	want := randBytes(6*slot+123, 22)
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ino := inoOfFile(t, f)

	// After each commit the hook checks what the previous one left: the
	// hook runs with the flush lock held, so no commit runs meanwhile.
	var checkMu sync.Mutex
	var checks int
	hook := func(meta.Ino) {
		checkMu.Lock()
		defer checkMu.Unlock()
		checks++
		got, err := readCommitted(tm, ino)
		if err != nil {
			t.Error(err)
			return
		}
		if len(got) > len(want) {
			t.Errorf("committed size %d, more than was written (%d)", len(got), len(want))
			return
		}
		sameContent(t, "committed content during appends", got, want[:len(got)])
	}
	fsys.beforeCommit.Store(&hook)
	defer fsys.beforeCommit.Store(nil)

	done := make(chan struct{})
	go func() {
		defer close(done)
		for off := 0; off < len(want); {
			n := min(len(want)-off, 7000)
			if _, err := f.WriteAt(want[off:off+n], int64(off)); err != nil {
				t.Errorf("append at %d: %v", off, err)
				return
			}
			off += n
		}
	}()
	g, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	for running := true; running; {
		select {
		case <-done:
			running = false
		default:
		}
		// A dup'd descriptor's close sends FLUSH without the inode
		// lock, so unlike fsync it overlaps the appends.
		d, err := syscall.Dup(int(g.Fd()))
		if err != nil {
			t.Fatal(err)
		}
		if err := syscall.Close(d); err != nil {
			t.Fatalf("close: %v", err)
		}
	}
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	sameContent(t, "committed content after the appends", committedContent(t, tm, ino), want)
	checkMu.Lock()
	defer checkMu.Unlock()
	if checks == 0 {
		t.Error("no commit was checked")
	}
}

// TestMmapWritesCommittedAtRelease: the kernel writes a shared mapping's
// dirty pages back at munmap, after the close's FLUSH and before RELEASE;
// the last release must commit them, not drop them.
func TestMmapWritesCommittedAtRelease(t *testing.T) {
	t.Parallel()
	tm := newTestMesh(t)
	_, a := tm.mount()
	path := filepath.Join(a, "f")
	want := randBytes(mmapFileSize, 23)
	mustWrite(t, path, want)
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	ino := inoOfFile(t, f)
	f.Close()

	// The mapping is written by another process: in this one, a page
	// fault on it could deadlock, the faulting thread unable to stop for
	// the garbage collector until the mount answers, the mount unable to
	// answer while the world is stopped.
	cmd := exec.Command(os.Args[0], "-test.run=^TestMmapHelper$", "-test.count=1")
	cmd.Env = append(os.Environ(), mmapHelperEnv+"="+path)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("mmap helper: %v\n%s", err, out)
	}
	mmapPatch(want)

	// RELEASE is asynchronous to munmap; give it a moment.
	deadline := time.Now().Add(5 * time.Second)
	for {
		got := committedContent(t, tm, ino)
		if string(got) == string(want) {
			break
		}
		if time.Now().After(deadline) {
			sameContent(t, "committed content after munmap", got, want)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	_, b := tm.mount()
	sameContent(t, "second mount after munmap", mustRead(t, filepath.Join(b, "f")), want)
}

const (
	mmapHelperEnv = "MESHFS_FUSE_MMAP_HELPER"
	mmapFileSize  = 2*slot + 1000
)

// mmapPatch is what the mmap helper writes: a slot's worth across a slot
// boundary, and the last byte, in the tail slot.
func mmapPatch(b []byte) {
	copy(b[slot-500:], randBytes(slot, 24))
	b[len(b)-1] ^= 0xff
}

// TestMmapHelper is not a test but the process that
// TestMmapWritesCommittedAtRelease runs to write through a shared mapping:
// open, map, close, write into the mapping, unmap.
func TestMmapHelper(t *testing.T) {
	path := os.Getenv(mmapHelperEnv)
	if path == "" {
		t.Skip("run by TestMmapWritesCommittedAtRelease only")
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	mapping, err := syscall.Mmap(int(f.Fd()), 0, mmapFileSize, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED)
	if err != nil {
		t.Fatalf("mmap: %v", err)
	}
	if err := f.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	mmapPatch(mapping)
	if err := syscall.Munmap(mapping); err != nil {
		t.Fatalf("munmap: %v", err)
	}
}
