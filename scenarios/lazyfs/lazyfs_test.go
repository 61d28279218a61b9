package lazyfs

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) {
	// The application tests re-run this binary as the process that uses
	// the mount, so that they can SIGKILL it as the scenario does.
	if args := strings.Fields(os.Getenv(childEnv)); len(args) > 0 {
		os.Exit(runChild(args, os.Getenv(childDirEnv)))
	}
	os.Exit(m.Run())
}

// lab is a backing directory mounted through lazyfs for one test.
type lab struct {
	t            *testing.T
	backing, mnt string
	fs           *FS
}

func newLab(t *testing.T) *lab {
	t.Helper()
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skipf("lazyfs tests need a real FUSE mount and /dev/fuse is missing: %v", err)
	}
	l := &lab{t: t, backing: t.TempDir(), mnt: t.TempDir()}
	l.mount()
	// Registered after the directories: runs before they are removed.
	t.Cleanup(l.unmount)
	return l
}

func (l *lab) mount() {
	l.t.Helper()
	fsys, err := Mount(l.mnt, l.backing, Options{Logger: slog.New(slog.NewTextHandler(l.t.Output(), nil))})
	if err != nil {
		l.t.Fatal(err)
	}
	l.fs = fsys
}

// restart cuts the power and mounts the backing directory again; it
// returns the stats of the mount that lost power.
func (l *lab) restart() Stats {
	l.t.Helper()
	if err := l.fs.CutPower(); err != nil {
		l.t.Fatal(err)
	}
	st := l.fs.Stats()
	l.fs = nil
	l.mount()
	return st
}

func (l *lab) unmount() {
	if l.fs == nil {
		return
	}
	if err := l.fs.Unmount(); err != nil {
		l.t.Errorf("%v; detaching the mount", err)
		if err := syscall.Unmount(l.mnt, syscall.MNT_DETACH); err != nil {
			l.t.Errorf("detach %s: %v", l.mnt, err)
		}
	}
}

func (l *lab) path(name string) string { return filepath.Join(l.mnt, name) }

// open opens a file on the mount, closed at the end of the test.
func (l *lab) open(name string, flag int) *os.File {
	l.t.Helper()
	f, err := os.OpenFile(l.path(name), flag, 0o644)
	if err != nil {
		l.t.Fatal(err)
	}
	l.t.Cleanup(func() { f.Close() })
	return f
}

func (l *lab) writeFile(name string, data []byte, sync bool) {
	l.t.Helper()
	f := l.open(name, os.O_RDWR|os.O_CREATE|os.O_TRUNC)
	mustWriteAt(l.t, f, data, 0)
	if sync {
		mustSync(l.t, f)
	}
	if err := f.Close(); err != nil {
		l.t.Fatal(err)
	}
}

// content is a file's content read through a fresh open, and its size as
// stat reports it.
func (l *lab) content(name string) ([]byte, int64) {
	l.t.Helper()
	data, err := os.ReadFile(l.path(name))
	if err != nil {
		l.t.Fatal(err)
	}
	fi, err := os.Stat(l.path(name))
	if err != nil {
		l.t.Fatal(err)
	}
	return data, fi.Size()
}

func (l *lab) wantContent(name string, want []byte) {
	l.t.Helper()
	got, size := l.content(name)
	if !bytes.Equal(got, want) || size != int64(len(want)) {
		l.t.Errorf("%s: read %d bytes %q, stat size %d; want %d bytes %q", name, len(got), clip(got), size, len(want), clip(want))
	}
	// statx asking for more than stat has (the birth time) is a request of
	// its own to the file system.
	var x unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, l.path(name), 0, unix.STATX_BASIC_STATS|unix.STATX_BTIME, &x); err != nil {
		l.t.Errorf("statx %s: %v", name, err)
	} else if x.Size != uint64(len(want)) {
		l.t.Errorf("%s: statx size %d, want %d", name, x.Size, len(want))
	}
}

func clip(b []byte) []byte {
	if len(b) > 24 {
		return append(b[:24:24], "..."...)
	}
	return b
}

func mustWriteAt(t *testing.T, f *os.File, data []byte, off int64) {
	t.Helper()
	if _, err := f.WriteAt(data, off); err != nil {
		t.Fatal(err)
	}
}

func mustSync(t *testing.T, f *os.File) {
	t.Helper()
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
}

// TestCutKeepsExactlySyncedData: after a cut each file holds what its last
// fsync left, whatever happened to it since; before the cut, reads see
// everything.
func TestCutKeepsExactlySyncedData(t *testing.T) {
	l := newLab(t)
	v1 := []byte("version one, synced")
	cases := []struct {
		name string
		// do changes the file name on the mount and returns what reads
		// must see before the cut.
		do    func(name string) []byte
		after []byte
	}{{
		name: "never synced",
		do: func(name string) []byte {
			l.writeFile(name, []byte("lost"), false)
			return []byte("lost")
		},
		after: []byte{},
	}, {
		name: "synced then overwritten and extended",
		do: func(name string) []byte {
			l.writeFile(name, v1, true)
			f := l.open(name, os.O_RDWR)
			mustWriteAt(t, f, []byte("VERSION"), 0)
			mustWriteAt(t, f, []byte("+tail"), int64(len(v1)))
			return []byte("VERSION one, synced+tail")
		},
		after: v1,
	}, {
		name: "synced then appended",
		do: func(name string) []byte {
			f := l.open(name, os.O_RDWR|os.O_CREATE|os.O_APPEND)
			f.Write([]byte("first "))
			mustSync(t, f)
			f.Write([]byte("second"))
			return []byte("first second")
		},
		after: []byte("first "),
	}, {
		name: "synced with fdatasync",
		do: func(name string) []byte {
			f := l.open(name, os.O_RDWR|os.O_CREATE)
			mustWriteAt(t, f, v1, 0)
			if err := unix.Fdatasync(int(f.Fd())); err != nil {
				t.Fatal(err)
			}
			mustWriteAt(t, f, []byte("V"), 0)
			return append([]byte("V"), v1[1:]...)
		},
		after: v1,
	}, {
		name: "truncated down, not synced",
		do: func(name string) []byte {
			l.writeFile(name, v1, true)
			if err := os.Truncate(l.path(name), 7); err != nil {
				t.Fatal(err)
			}
			return v1[:7]
		},
		after: v1,
	}, {
		name: "truncated down and up, synced",
		do: func(name string) []byte {
			l.writeFile(name, v1, true)
			f := l.open(name, os.O_RDWR)
			f.Truncate(3)
			f.Truncate(6)
			mustSync(t, f)
			mustWriteAt(t, f, []byte("lost"), 10)
			return append(append([]byte("ver"), 0, 0, 0), 0, 0, 0, 0, 'l', 'o', 's', 't')
		},
		after: []byte{'v', 'e', 'r', 0, 0, 0},
	}, {
		name: "O_TRUNC, not synced",
		do: func(name string) []byte {
			l.writeFile(name, v1, true)
			l.open(name, os.O_RDWR|os.O_TRUNC)
			return []byte{}
		},
		after: v1,
	}, {
		name: "O_SYNC write",
		do: func(name string) []byte {
			f := l.open(name, os.O_RDWR|os.O_CREATE|os.O_SYNC)
			f.Write([]byte("durable"))
			f.Close()
			return []byte("durable")
		},
		after: []byte("durable"),
	}, {
		name: "synced, then fallocated larger and a hole punched",
		do: func(name string) []byte {
			l.writeFile(name, v1, true)
			f := l.open(name, os.O_RDWR)
			if err := unix.Fallocate(int(f.Fd()), 0, 0, 30); err != nil {
				t.Fatal(err)
			}
			if err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 2, 3); err != nil {
				t.Fatal(err)
			}
			want := append([]byte{}, v1...)
			copy(want[2:], []byte{0, 0, 0})
			return append(want, make([]byte, 30-len(v1))...)
		},
		after: v1,
	}}
	for _, c := range cases {
		t.Run(c.name+"/before cut", func(t *testing.T) {
			l.t = t
			l.wantContent(c.name, c.do(c.name))
		})
	}
	l.t = t
	st := l.restart()
	if st.DroppedBytes == 0 {
		t.Errorf("the cut dropped no bytes: %+v", st)
	}
	for _, c := range cases {
		t.Run(c.name+"/after cut", func(t *testing.T) {
			l.t = t
			l.wantContent(c.name, c.after)
		})
	}
	l.t = t
}

// TestMergedViewMatchesARealFile drives a file on the mount and a file on
// the backing file system with the same random writes, truncates and
// syncs, through two handles: reads, stat and a mapping must agree with the
// real file all along, and after a cut the file must equal the real one as
// of its last sync.
func TestMergedViewMatchesARealFile(t *testing.T) {
	l := newLab(t)
	ref, err := os.OpenFile(filepath.Join(t.TempDir(), "ref"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer ref.Close()
	a := l.open("f", os.O_RDWR|os.O_CREATE)
	b := l.open("f", os.O_RDWR)
	handles := []*os.File{a, b}
	rng := rand.New(rand.NewPCG(1, 2))
	var synced []byte
	check := func(step int, what string) {
		t.Helper()
		want, err := os.ReadFile(ref.Name())
		if err != nil {
			t.Fatal(err)
		}
		got, size := l.content("f")
		if !bytes.Equal(got, want) || size != int64(len(want)) {
			t.Fatalf("step %d (%s): read %d bytes (stat %d), want %d; first difference at %d", step, what, len(got), size, len(want), firstDiff(got, want))
		}
		// A read through an open handle, at an offset, crossing pages.
		if len(want) > 0 {
			off := rng.IntN(len(want))
			buf := make([]byte, min(len(want)-off, 3*pageSize+17))
			if _, err := handles[rng.IntN(2)].ReadAt(buf, int64(off)); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(buf, want[off:off+len(buf)]) {
				t.Fatalf("step %d (%s): pread at %d differs", step, what, off)
			}
		}
	}
	for step := range 400 {
		var what string
		switch op := rng.IntN(10); {
		case op < 6:
			off := int64(rng.IntN(48 << 10))
			data := make([]byte, 1+rng.IntN(9000))
			for i := range data {
				data[i] = byte(rng.Uint32())
			}
			mustWriteAt(t, handles[rng.IntN(2)], data, off)
			mustWriteAt(t, ref, data, off)
			what = fmt.Sprintf("write %d at %d", len(data), off)
		case op < 8:
			size := int64(rng.IntN(56 << 10))
			if err := handles[rng.IntN(2)].Truncate(size); err != nil {
				t.Fatal(err)
			}
			ref.Truncate(size)
			what = fmt.Sprintf("truncate to %d", size)
		default:
			mustSync(t, handles[rng.IntN(2)])
			if synced, err = os.ReadFile(ref.Name()); err != nil {
				t.Fatal(err)
			}
			what = "fsync"
		}
		check(step, what)
	}
	// The page cache behind a mapping is filled from the merged view. The
	// mapping is another process's (see runChild).
	want, _ := os.ReadFile(ref.Name())
	if len(want) > 0 {
		if m := runChildToEnd(t, l.mnt, "mmap", "f"); !bytes.Equal(m, want) {
			t.Errorf("a mapping (%d bytes) differs from the real file (%d bytes) at %d", len(m), len(want), firstDiff(m, want))
		}
	}
	a.Close()
	b.Close()
	l.restart()
	l.wantContent("f", synced)
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// TestRenameKeepsUnsyncedData: unsynced data belongs to the inode, so it
// follows a rename (here over an existing file) and an fsync through a
// handle opened under the old name writes it to the new one.
func TestRenameKeepsUnsyncedData(t *testing.T) {
	l := newLab(t)
	l.writeFile("b", []byte("old b, synced"), true)
	f := l.open("a", os.O_RDWR|os.O_CREATE)
	mustWriteAt(t, f, []byte("new data"), 0)
	if err := os.Rename(l.path("a"), l.path("b")); err != nil {
		t.Fatal(err)
	}
	l.wantContent("b", []byte("new data"))
	mustSync(t, f)
	f.Close()
	l.restart()
	l.wantContent("b", []byte("new data"))
	if _, err := os.Stat(l.path("a")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a after the rename and cut: %v, want it gone", err)
	}
}

// TestUnlinkDiscardsUnsyncedData: once a file's last name is gone and no
// handle holds it, nothing can sync its data, so it is no longer kept;
// another name (a hard link) or an open handle keeps it.
func TestUnlinkDiscardsUnsyncedData(t *testing.T) {
	l := newLab(t)
	data := bytes.Repeat([]byte("x"), 2*pageSize)
	l.writeFile("closed", data, false)
	l.writeFile("linked", data, false)
	if err := os.Link(l.path("linked"), l.path("link")); err != nil {
		t.Fatal(err)
	}
	l.wantContent("link", data)
	open := l.open("open", os.O_RDWR|os.O_CREATE)
	mustWriteAt(t, open, data, 0)
	if got := l.fs.Stats().DirtyBytes; got != 3*int64(len(data)) {
		t.Fatalf("dirty bytes %d, want %d", got, 3*len(data))
	}
	for _, name := range []string{"closed", "linked", "open"} {
		if err := os.Remove(l.path(name)); err != nil {
			t.Fatal(err)
		}
	}
	if got := l.fs.Stats().DirtyBytes; got != 2*int64(len(data)) {
		t.Errorf("dirty bytes after the unlinks %d, want %d (the hard-linked and the open file)", got, 2*len(data))
	}
	buf := make([]byte, len(data))
	if _, err := open.ReadAt(buf, 0); err != nil || !bytes.Equal(buf, data) {
		t.Errorf("read of the unlinked open file: %v", err)
	}
	open.Close()
	l.wantContent("link", data)
	// Release reaches the file system after close returns.
	deadline := 100
	for l.fs.Stats().DirtyBytes != int64(len(data)) && deadline > 0 {
		deadline--
		time.Sleep(10 * time.Millisecond)
	}
	if got := l.fs.Stats().DirtyBytes; got != int64(len(data)) {
		t.Errorf("dirty bytes after closing the unlinked file %d, want %d", got, len(data))
	}
}

// TestStatsCountDirtySyncedAndDropped.
func TestStatsCountDirtySyncedAndDropped(t *testing.T) {
	l := newLab(t)
	f := l.open("f", os.O_RDWR|os.O_CREATE)
	mustWriteAt(t, f, make([]byte, 10000), 0)
	mustWriteAt(t, f, make([]byte, 100), 5000) // rewritten bytes count once
	if got := l.fs.Stats(); got.DirtyBytes != 10000 {
		t.Errorf("after writing 10000 bytes: %+v, want DirtyBytes 10000", got)
	}
	mustSync(t, f)
	if got := l.fs.Stats(); got.DirtyBytes != 0 || got.SyncedBytes != 10000 || got.Syncs != 1 {
		t.Errorf("after fsync: %+v, want DirtyBytes 0, SyncedBytes 10000, Syncs 1", got)
	}
	mustWriteAt(t, f, make([]byte, 3000), 20000)
	f.Close()
	got := l.restart()
	if got.DirtyBytes != 0 || got.DroppedBytes != 3000 {
		t.Errorf("after the cut: %+v, want DirtyBytes 0, DroppedBytes 3000", got)
	}
}

// TestCutPowerOnABusyMount: a process still holding a file makes the
// unmount fail; the data is dropped all the same, the mount answers EIO,
// and a second CutPower unmounts once the file is closed.
func TestCutPowerOnABusyMount(t *testing.T) {
	l := newLab(t)
	l.writeFile("f", []byte("synced"), true)
	f := l.open("f", os.O_RDWR)
	mustWriteAt(t, f, []byte("SYNCED, then not"), 0)
	err := l.fs.CutPower()
	if !errors.Is(err, ErrBusy) {
		t.Fatalf("CutPower with a file open: %v, want ErrBusy", err)
	}
	t.Log(err)
	if _, err := f.ReadAt(make([]byte, 4), 0); !errors.Is(err, syscall.EIO) {
		t.Errorf("read after the cut: %v, want EIO", err)
	}
	f.Close()
	if err := l.fs.CutPower(); err != nil {
		t.Fatal(err)
	}
	l.fs = nil
	l.mount()
	l.wantContent("f", []byte("synced"))
}

// TestUnmountSyncsLikeACleanShutdown.
func TestUnmountSyncsLikeACleanShutdown(t *testing.T) {
	l := newLab(t)
	l.writeFile("f", []byte("written, never synced"), false)
	if err := l.fs.Unmount(); err != nil {
		t.Fatal(err)
	}
	l.fs = nil
	got, err := os.ReadFile(filepath.Join(l.backing, "f"))
	if err != nil || string(got) != "written, never synced" {
		t.Errorf("backing file after a clean unmount: %q, %v", got, err)
	}
}

// TestDirectoryFsync: fsync of a directory on the mount works (JetStream
// syncs the directory after a rename).
func TestDirectoryFsync(t *testing.T) {
	l := newLab(t)
	if err := os.Mkdir(l.path("d"), 0o755); err != nil {
		t.Fatal(err)
	}
	d := l.open("d", os.O_RDONLY)
	mustSync(t, d)
}

// TestFlockIsExclusive: bbolt takes flock(LOCK_EX|LOCK_NB) on its file;
// the kernel's local locks make it work and exclude a second holder.
func TestFlockIsExclusive(t *testing.T) {
	l := newLab(t)
	a := l.open("db", os.O_RDWR|os.O_CREATE)
	b := l.open("db", os.O_RDWR)
	if err := syscall.Flock(int(a.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		t.Fatalf("first flock: %v", err)
	}
	if err := syscall.Flock(int(b.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); !errors.Is(err, syscall.EWOULDBLOCK) {
		t.Errorf("second flock: %v, want EWOULDBLOCK", err)
	}
}
