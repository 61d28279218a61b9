package fuse

// Large namespaces and large files, through real mounts:
//
//   - TestLargeDirectory: a directory of 100,000 entries lists exactly, in
//     pages (getdents with a small buffer) and with os.ReadDir.
//   - TestLargeSparseFile: a 20 GiB sparse file: writes at its end and in
//     its middle, holes read as zeros, truncation down and up.
//   - TestLargeHugeSparseFile: a 1 EiB sparse file of one byte is written,
//     read, truncated and reclaimed, and st_blocks counts one block.
//   - TestLargeExtents: a file whose block map holds 100,000 separate
//     blocks, committed by one close, by several fsyncs, and through the
//     metadata API at once and in several commits.
//   - TestLargeCommitChunkLimit: where one commit's block-map size ends.
//
// They run in every `go test` at sizes that still cross the same boundaries
// (several pages of getdents, several block-map chunks per commit), to keep
// `go test -race ./fuse` fast; MESHFS_LARGE=1 runs the full sizes.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"runtime/metrics"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"golang.org/x/sys/unix"

	"github.com/meshfs/meshfs/mesh/meta"
	"github.com/meshfs/meshfs/persist"
)

// largeMode reports whether MESHFS_LARGE=1 asks for the full sizes.
func largeMode() bool { return os.Getenv("MESHFS_LARGE") == "1" }

// largeSize returns large under MESHFS_LARGE=1 and small otherwise.
func largeSize(small, large int) int {
	if largeMode() {
		return large
	}
	return small
}

// largeCountingMeta counts the metadata calls a mount makes.
type largeCountingMeta struct {
	Metadata
	readDirs, lookups, blocks, commits atomic.Int64
}

func (c *largeCountingMeta) ReadDir(ctx context.Context, parent meta.Ino) ([]meta.DirEntry, error) {
	c.readDirs.Add(1)
	return c.Metadata.ReadDir(ctx, parent)
}

func (c *largeCountingMeta) Lookup(ctx context.Context, parent meta.Ino, name string) (meta.Attr, error) {
	c.lookups.Add(1)
	return c.Metadata.Lookup(ctx, parent, name)
}

func (c *largeCountingMeta) Blocks(ctx context.Context, ino meta.Ino, first, last int64) (map[int64]meta.BlockRef, error) {
	c.blocks.Add(1)
	return c.Metadata.Blocks(ctx, ino, first, last)
}

func (c *largeCountingMeta) CommitWrite(ctx context.Context, ino meta.Ino, slots map[int64]meta.BlockRef, minSize uint64, mtime int64) (meta.Attr, error) {
	c.commits.Add(1)
	return c.Metadata.CommitWrite(ctx, ino, slots, minSize, mtime)
}

// largeMemUse is what one measured step cost in memory, process-wide (the
// embedded NATS server and the mount run in the test's process too).
type largeMemUse struct {
	allocated uint64 // bytes allocated during the step
	peak      uint64 // highest live heap seen during the step (sampled)
	before    uint64 // live heap just before the step (after a GC)
	retained  uint64 // live heap after the step and a GC, while its result is kept
}

func (m largeMemUse) String() string {
	mib := func(b uint64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }
	return fmt.Sprintf("allocated %s, peak heap %s (from %s), retained %s",
		mib(m.allocated), mib(m.peak), mib(m.before), mib(largeSub(m.retained, m.before)))
}

func largeSub(a, b uint64) uint64 {
	if a < b {
		return 0
	}
	return a - b
}

// measureLarge runs step and reports its duration and memory use. step's
// result must be kept alive by the caller across the call for retained to
// count it.
func measureLarge(step func()) (time.Duration, largeMemUse) {
	heap := func() uint64 {
		s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
		metrics.Read(s)
		return s[0].Value.Uint64()
	}
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	u := largeMemUse{before: heap()}
	allocBefore := ms.TotalAlloc
	var peak atomic.Uint64
	peak.Store(u.before)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				if h := heap(); h > peak.Load() {
					peak.Store(h)
				}
			}
		}
	})
	start := time.Now()
	step()
	d := time.Since(start)
	close(stop)
	wg.Wait()
	runtime.ReadMemStats(&ms)
	u.allocated = ms.TotalAlloc - allocBefore
	u.peak = max(peak.Load(), heap())
	runtime.GC()
	u.retained = heap()
	return d, u
}

func largeInoOf(t *testing.T, path string) meta.Ino {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return meta.Ino(st.Ino)
}

// ---------------------------------------------------------------------------
// A directory of 100,000 entries.

// bulkEntry is one name to add to a directory in bulk.
type bulkEntry struct {
	name string
	ino  meta.Ino
}

// bulkCreateFiles adds empty regular files to dir straight in the metadata
// bucket, 500 at a time (an inode and a dirent each) in atomic batches of
// 1000 messages, the most the server takes: about 25 µs an entry, where
// creating them one by one takes ~3.5-4 ms each (Store.Create in one
// directory is serialized on the directory's inode, and every commit is
// fsynced), so 100,000 would take six minutes. It writes the records in the
// layout documented in mesh/meta/keys.go; the caller checks through the
// Store API that it reads them back.
func bulkCreateFiles(t *testing.T, nc *nats.Conn, dir meta.Ino, ents []bulkEntry) {
	t.Helper()
	const prefix = "$KV.meshfs_meta." // the default bucket the harness uses
	type inodeRec struct {
		Ino   meta.Ino `json:"ino"`
		Mode  uint32   `json:"mode"`
		Uid   uint32   `json:"uid"`
		Gid   uint32   `json:"gid"`
		Size  uint64   `json:"size"`
		Nlink uint32   `json:"nlink"`
		Atime int64    `json:"atime"`
		Mtime int64    `json:"mtime"`
		Ctime int64    `json:"ctime"`
	}
	type direntRec struct {
		Ino  meta.Ino `json:"ino"`
		Mode uint32   `json:"mode"`
	}
	ts := time.Now().UnixNano()
	var msgs []*nats.Msg
	for _, e := range ents {
		ival, err := json.Marshal(inodeRec{Ino: e.ino, Mode: syscall.S_IFREG | 0o644, Nlink: 1, Atime: ts, Mtime: ts, Ctime: ts})
		if err != nil {
			t.Fatal(err)
		}
		m := nats.NewMsg(prefix + "i." + strconv.FormatUint(uint64(e.ino), 10))
		m.Data = ival
		msgs = append(msgs, m)
		dval, err := json.Marshal(direntRec{Ino: e.ino, Mode: syscall.S_IFREG})
		if err != nil {
			t.Fatal(err)
		}
		m = nats.NewMsg(prefix + "d." + strconv.FormatUint(uint64(dir), 10) + "." + base64.RawURLEncoding.EncodeToString([]byte(e.name)))
		m.Data = dval
		msgs = append(msgs, m)
	}
	const batchMax = 1000
	for b := 0; b < len(msgs); b += batchMax {
		batch := msgs[b:min(b+batchMax, len(msgs))]
		id := fmt.Sprintf("bulk-%d-%d", dir, b)
		for i, m := range batch {
			m.Header.Set("Nats-Batch-Id", id)
			m.Header.Set("Nats-Batch-Sequence", strconv.Itoa(i+1))
			if i < len(batch)-1 {
				if err := nc.PublishMsg(m); err != nil {
					t.Fatalf("bulk create: publish: %v", err)
				}
				continue
			}
			m.Header.Set("Nats-Batch-Commit", "1")
			reply, err := nc.RequestMsg(m, 30*time.Second)
			if err != nil {
				t.Fatalf("bulk create: commit batch %d: %v", b/batchMax, err)
			}
			var ack struct {
				Error *struct {
					Description string `json:"description"`
				} `json:"error"`
				Count int `json:"count"`
			}
			if err := json.Unmarshal(reply.Data, &ack); err != nil || ack.Error != nil || ack.Count != len(batch) {
				t.Fatalf("bulk create: batch %d acknowledged %q (%v)", b/batchMax, reply.Data, err)
			}
		}
	}
}

// largeDirName is the i-th name of the big directory: mostly short, some
// long (up to the 255-byte limit) and some not ASCII, so that pages hold
// different numbers of entries.
func largeDirName(i int) string {
	switch {
	case i%997 == 0:
		return fmt.Sprintf("long-%07d-", i) + strings.Repeat("x", 255-len("long-0000000-"))
	case i%101 == 0:
		return fmt.Sprintf("ünïcødé %07d ✓", i)
	}
	return fmt.Sprintf("f%07d", i)
}

// direntPage is one linux_dirent64 as getdents returns it.
type direntPage struct {
	name string
	off  int64
	typ  uint8
}

// parseDirents decodes the linux_dirent64 records getdents put in buf.
func parseDirents(t *testing.T, buf []byte) []direntPage {
	t.Helper()
	var out []direntPage
	for len(buf) > 0 {
		if len(buf) < 19 {
			t.Fatalf("truncated dirent record of %d bytes", len(buf))
		}
		off := int64(binary.NativeEndian.Uint64(buf[8:16]))
		reclen := int(binary.NativeEndian.Uint16(buf[16:18]))
		if reclen < 19 || reclen > len(buf) {
			t.Fatalf("bad dirent record length %d (%d bytes left)", reclen, len(buf))
		}
		name := buf[19:reclen]
		if i := bytes.IndexByte(name, 0); i >= 0 {
			name = name[:i]
		}
		out = append(out, direntPage{name: string(name), off: off, typ: buf[18]})
		buf = buf[reclen:]
	}
	return out
}

// TestLargeDirectory fills one directory with 100,000 entries (10,000
// without MESHFS_LARGE) and lists it through mounts: with getdents in small
// pages, checking that the pages hold every name once, with its type, and
// that a seek back to a page's offset resumes there; and, with
// MESHFS_LARGE, with os.ReadDir. It also times the metadata store's own
// listing and records how much memory each listing takes.
//
// The mount reads the store's whole listing into memory for the first
// page and serves the other pages from that copy: one Store.ReadDir per
// open directory. It must not look names up one by one to list them (as
// go-fuse does for READDIRPLUS, which the mount therefore turns off: with
// it, listing 100,000 entries took 17-19 s instead of well under one).
func TestLargeDirectory(t *testing.T) {
	t.Parallel()
	n := largeSize(10_000, 100_000)
	tm := newTestMeshBlockSize(t, slot)
	nc := tm.nc
	ctx := context.Background()
	store := tm.meta

	dir, err := store.Mkdir(ctx, meta.RootIno, "big", 0o755, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	names := make([]string, n)
	for i := range names {
		names[i] = largeDirName(i)
	}

	// Some entries are made through the mount, the ordinary way (files,
	// directories, symlinks); the rest in bulk.
	const viaMount = 150
	_, a := tm.mount()
	start := time.Now()
	for i := range viaMount {
		p := filepath.Join(a, "big", names[i])
		switch i % 3 {
		case 0:
			mustWrite(t, p, []byte(names[i]))
		case 1:
			if err := os.Mkdir(p, 0o755); err != nil {
				t.Fatal(err)
			}
		case 2:
			if err := os.Symlink(names[i], p); err != nil {
				t.Fatal(err)
			}
		}
	}
	perCreate := time.Since(start) / viaMount
	var bulk []bulkEntry
	for i := viaMount; i < n; i++ {
		bulk = append(bulk, bulkEntry{name: names[i], ino: meta.Ino(1<<40 + i)})
	}
	start = time.Now()
	bulkCreateFiles(t, nc, dir.Ino, bulk)
	t.Logf("populated %d entries: %d through the mount (%v each), %d in bulk in %v",
		n, viaMount, perCreate.Round(time.Microsecond), len(bulk), time.Since(start).Round(time.Millisecond))
	// The bulk records read back through the Store API like created ones.
	for _, i := range []int{viaMount, n / 2, n - 1} {
		attr, err := store.Lookup(ctx, dir.Ino, names[i])
		if err != nil || attr.Ino != meta.Ino(1<<40+i) || attr.Mode != syscall.S_IFREG|0o644 || attr.Nlink != 1 {
			t.Fatalf("lookup of bulk entry %q: %+v, %v", names[i], attr, err)
		}
	}

	want := slices.Clone(names)
	slices.Sort(want)
	checkNames := func(what string, got []string) {
		t.Helper()
		if len(got) != n {
			t.Errorf("%s: %d names, want %d", what, len(got), n)
		}
		sorted := slices.Clone(got)
		slices.Sort(sorted)
		if d := slices.Compact(slices.Clone(sorted)); len(d) != len(sorted) {
			t.Errorf("%s: %d duplicate names", what, len(sorted)-len(d))
		}
		if !slices.Equal(sorted, want) {
			missing, extra := 0, 0
			have := map[string]bool{}
			for _, s := range got {
				have[s] = true
			}
			for _, s := range want {
				if !have[s] {
					missing++
				}
			}
			for _, s := range slices.Compact(sorted) {
				if _, ok := slices.BinarySearch(want, s); !ok {
					extra++
				}
			}
			t.Errorf("%s: %d names missing, %d not created", what, missing, extra)
		}
	}

	// The metadata store's own listing, with the deadline a mount gives it
	// (30 s). Without a deadline of its own the store's OpTimeout of 5 s
	// would apply, which 100,000 entries under -race can exceed.
	var ents []meta.DirEntry
	d, mem := measureLarge(func() {
		ctx, cancel := context.WithTimeout(ctx, metaTimeout)
		defer cancel()
		ents, err = store.ReadDir(ctx, dir.Ino)
	})
	if err != nil {
		t.Fatalf("Store.ReadDir: %v", err)
	}
	got := make([]string, len(ents))
	for i, e := range ents {
		got[i] = e.Name
	}
	checkNames("Store.ReadDir", got)
	if !slices.IsSorted(got) {
		t.Errorf("Store.ReadDir: names not sorted")
	}
	t.Logf("Store.ReadDir of %d entries: %v; %v", n, d.Round(time.Millisecond), mem)
	runtime.KeepAlive(ents)
	ents, got = nil, nil

	// Through a fresh mount, in pages of 4 KiB: the kernel asks the mount
	// for one page at a time (READDIRPLUS).
	cm := &largeCountingMeta{Metadata: tm.newMeta()}
	_, b := tm.mount(func(o *Options) { o.Meta = cm })
	var pages [][]direntPage
	var firstPage time.Duration
	d, mem = measureLarge(func() {
		fd, err := unix.Open(filepath.Join(b, "big"), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd)
		buf := make([]byte, 4096)
		start := time.Now()
		for {
			nr, err := unix.Getdents(fd, buf)
			if err != nil {
				t.Fatalf("getdents after %d pages: %v", len(pages), err)
			}
			if nr == 0 {
				break
			}
			if len(pages) == 0 {
				firstPage = time.Since(start)
			}
			pages = append(pages, parseDirents(t, buf[:nr]))
		}

		// Seek back to the offset of an entry in the middle of the listing
		// (telldir/seekdir): reading resumes with the entry after it.
		mid := pages[len(pages)/2]
		at := mid[len(mid)/2]
		var next string
		for i, p := range pages {
			for j, e := range p {
				if e == at {
					switch {
					case j+1 < len(p):
						next = p[j+1].name
					case i+1 < len(pages):
						next = pages[i+1][0].name
					}
				}
			}
		}
		if _, err := unix.Seek(fd, at.off, io.SeekStart); err != nil {
			t.Fatalf("seek to directory offset %d: %v", at.off, err)
		}
		nr, err := unix.Getdents(fd, buf)
		if err != nil || nr == 0 {
			t.Fatalf("getdents after seek to %d: %d bytes, %v", at.off, nr, err)
		}
		if resumed := parseDirents(t, buf[:nr]); resumed[0].name != next {
			t.Errorf("after seeking to the offset of %q (%d), got %q first, want %q", at.name, at.off, resumed[0].name, next)
		}
	})
	var listed []string
	var dots int
	types := map[uint8]int{}
	lastOff := int64(0)
	for _, p := range pages {
		for _, e := range p {
			if e.off <= lastOff {
				t.Errorf("offset %d of %q does not follow %d", e.off, e.name, lastOff)
			}
			lastOff = e.off
			if e.name == "." || e.name == ".." {
				dots++
				continue
			}
			listed = append(listed, e.name)
			types[e.typ]++
		}
	}
	checkNames("getdents in 4 KiB pages", listed)
	if types[unix.DT_DIR] != viaMount/3 || types[unix.DT_LNK] != viaMount/3 || types[unix.DT_REG] != n-2*viaMount/3 {
		t.Errorf("getdents: entry types %v, want %d DT_DIR, %d DT_LNK, %d DT_REG", types, viaMount/3, viaMount/3, n-2*viaMount/3)
	}
	t.Logf("getdents of %d entries in %d pages of 4 KiB: %v (first page after %v); "+
		"the mount made %d ReadDir and %d Lookup calls; %v; \".\" and \"..\" listed: %d",
		n, len(pages), d.Round(time.Millisecond), firstPage.Round(time.Millisecond),
		cm.readDirs.Load(), cm.lookups.Load(), mem, dots)
	if len(pages) < 10 {
		t.Errorf("only %d pages: the listing was not paged", len(pages))
	}
	// The mount reads the whole directory from the store for the first
	// page and serves the other pages from memory: one ReadDir per open.
	if r := cm.readDirs.Load(); r != 1 {
		t.Errorf("%d Store.ReadDir calls for one listing, want 1", r)
	}
	if l := cm.lookups.Load(); l > int64(n/100) {
		t.Errorf("%d Lookup calls to list %d entries: the mount looks names up one by one (READDIRPLUS?)", l, n)
	}
	runtime.KeepAlive(pages)
	pages, listed = nil, nil

	// os.ReadDir on yet another mount, what ls and most programs do: the
	// same requests with larger pages. Only with MESHFS_LARGE, for its
	// timing: it costs as much as the paged listing and checks nothing more.
	c := b
	if largeMode() {
		cm2 := &largeCountingMeta{Metadata: tm.newMeta()}
		_, c = tm.mount(func(o *Options) { o.Meta = cm2 })
		var des []os.DirEntry
		d, mem = measureLarge(func() {
			des, err = os.ReadDir(filepath.Join(c, "big"))
		})
		if err != nil {
			t.Fatalf("os.ReadDir: %v", err)
		}
		got = make([]string, len(des))
		for i, e := range des {
			got[i] = e.Name()
		}
		checkNames("os.ReadDir", got)
		t.Logf("os.ReadDir of %d entries: %v; the mount made %d ReadDir and %d Lookup calls; %v",
			n, d.Round(time.Millisecond), cm2.readDirs.Load(), cm2.lookups.Load(), mem)
		if l := cm2.lookups.Load(); l > int64(n/100) {
			t.Errorf("%d Lookup calls to list %d entries with os.ReadDir", l, n)
		}
		runtime.KeepAlive(des)
	}

	// Names are still found one by one, and the directory is not empty.
	for _, i := range []int{0, 1, 2, viaMount, n / 3, n - 1} {
		if _, err := os.Lstat(filepath.Join(c, "big", names[i])); err != nil {
			t.Errorf("stat %q: %v", names[i], err)
			_, err1 := os.Stat(filepath.Join(c, "big"))
			_, err2 := store.Lookup(ctx, meta.RootIno, "big")
			_, err3 := store.Lookup(ctx, dir.Ino, names[i])
			_, err4 := store.GetAttr(ctx, dir.Ino)
			t.Logf("stat of the directory through the mount: %v; the store's lookup of it: %v, of the name: %v; getattr of the directory: %v",
				err1, err2, err3, err4)
		}
	}
	if err := syscall.Rmdir(filepath.Join(c, "big")); !errors.Is(err, syscall.ENOTEMPTY) {
		t.Errorf("rmdir of the big directory: %v, want ENOTEMPTY", err)
	}
}

// ---------------------------------------------------------------------------
// A 20 GiB sparse file.

// sparseModel is the expected content of a sparse file: its size and the
// data written, later writes over earlier ones; everything else is zeros.
type sparseModel struct {
	size   int64
	writes []sparseWrite
}

type sparseWrite struct {
	off  int64
	data []byte
}

func (m *sparseModel) write(off int64, data []byte) {
	m.writes = append(m.writes, sparseWrite{off, bytes.Clone(data)})
	m.size = max(m.size, off+int64(len(data)))
}

// truncate cuts the data past size for good: it reads as zeros after the
// file grows again.
func (m *sparseModel) truncate(size int64) {
	for i, w := range m.writes {
		if end := w.off + int64(len(w.data)); end > size {
			m.writes[i].data = w.data[:max(0, min(int64(len(w.data)), size-w.off))]
		}
	}
	m.size = size
}

// at returns the n bytes from off that a read returns (fewer at the end).
func (m *sparseModel) at(off int64, n int) []byte {
	if off >= m.size {
		return nil
	}
	out := make([]byte, min(int64(n), m.size-off))
	for _, w := range m.writes {
		lo, hi := max(w.off, off), min(w.off+int64(len(w.data)), off+int64(len(out)))
		if lo < hi {
			copy(out[lo-off:hi-off], w.data[lo-w.off:hi-w.off])
		}
	}
	return out
}

// checkSparse reads the file at each offset and compares with the model.
func checkSparse(t *testing.T, what, path string, m *sparseModel, offs []int64, n int) {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() != m.size {
		t.Errorf("%s: size %d, want %d", what, st.Size(), m.size)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, n)
	for _, off := range offs {
		if off < 0 {
			continue
		}
		want := m.at(off, n)
		got, err := f.ReadAt(buf, off)
		if err != nil && !(errors.Is(err, io.EOF) && got == len(want)) {
			t.Errorf("%s: read %d bytes at %d: %d, %v", what, n, off, got, err)
			continue
		}
		sameContent(t, fmt.Sprintf("%s: %d bytes at offset %d", what, n, off), buf[:got], want)
	}
}

// TestLargeSparseFile makes a 20 GiB file of a few bytes (at its start, in
// its middle across a slot boundary, and its last byte), with the tests'
// 64 KiB slots (327,680 slots, 320 block-map chunks) and with the production
// 4 MiB blocks. Holes read as zeros, the block map holds only the written
// slots, and truncating down and up again (by path and on an open file with
// unflushed data) leaves zeros where data was cut.
func TestLargeSparseFile(t *testing.T) {
	t.Parallel()
	for _, bs := range []int{slot, 4 << 20} {
		t.Run(fmt.Sprintf("block%dKiB", bs>>10), func(t *testing.T) {
			t.Parallel()
			testLargeSparseFile(t, bs)
		})
	}
}

func testLargeSparseFile(t *testing.T, bs int) {
	const size = 20 << 30
	tm := newTestMeshBlockSize(t, bs)
	cm := &largeCountingMeta{Metadata: tm.newMeta()}
	_, a := tm.mount(func(o *Options) { o.Meta = cm })
	path := filepath.Join(a, "sparse")
	var m sparseModel
	head := []byte("the head of a 20 GiB file")
	mid := randBytes(1000, 41)
	midOff := int64(10<<30) - 500 // across a slot boundary
	last := []byte{0x5a}

	start := time.Now()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []sparseWrite{{0, head}, {midOff, mid}, {size - 1, last}} {
		if _, err := f.WriteAt(w.data, w.off); err != nil {
			t.Fatalf("write %d bytes at %d: %v", len(w.data), w.off, err)
		}
		m.write(w.off, w.data)
	}
	if err := f.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	t.Logf("wrote and closed the 20 GiB sparse file in %v", time.Since(start).Round(time.Millisecond))
	if m.size != size {
		t.Fatalf("model size %d", m.size)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	if st.Size != size {
		t.Fatalf("size %d, want %d", st.Size, size)
	}
	t.Logf("stat: size %d, st_blocks %d (%d bytes), st_blksize %d", st.Size, st.Blocks, st.Blocks*512, st.Blksize)
	ino := meta.Ino(st.Ino)

	b64 := int64(bs)
	offsets := func() []int64 {
		return []int64{
			0, int64(len(head)) - 5, b64 - 10, b64, 1 << 30, midOff - 100, midOff + 400, midOff + 990,
			10 << 30, 15<<30 - 3, size - 4<<20, size - 100, size - 1, size, size + 1<<20,
		}
	}
	// check reads the file through the writing mount and, if second, through
	// a new mount that has seen nothing of it.
	check := func(what string, second bool) {
		t.Helper()
		start := time.Now()
		blocksBefore := cm.blocks.Load()
		checkSparse(t, what, path, &m, offsets(), 200)
		checkSparse(t, what+" (128 KiB reads)", path, &m, []int64{midOff - 64<<10, size - 128<<10}, 128<<10)
		if second {
			_, b := tm.mount()
			checkSparse(t, what+", second mount", filepath.Join(b, "sparse"), &m, offsets(), 200)
			// A larger read across holes and data, as cp would do it.
			checkSparse(t, what+", second mount, 8 MiB read", filepath.Join(b, "sparse"), &m, []int64{midOff - 4<<20}, 8<<20)
		}
		t.Logf("%s: reads checked in %v; the writing mount loaded the block map %d times",
			what, time.Since(start).Round(time.Millisecond), cm.blocks.Load()-blocksBefore)
	}
	check("after writing", true)

	slotsOf := func(offs ...int64) []int64 {
		var s []int64
		for _, o := range offs {
			s = append(s, o/b64)
		}
		slices.Sort(s)
		return slices.Compact(s)
	}
	checkMap := func(what string, want []int64) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), metaTimeout)
		defer cancel()
		refs, err := tm.meta.Blocks(ctx, ino, 0, size/b64)
		if err != nil {
			t.Fatalf("%s: block map: %v", what, err)
		}
		var got []int64
		for s := range refs {
			got = append(got, s)
		}
		slices.Sort(got)
		if !slices.Equal(got, want) {
			t.Errorf("%s: block map slots %v, want %v", what, got, want)
		}
	}
	checkMap("after writing", slotsOf(0, midOff, midOff+int64(len(mid))-1, size-1))
	if w := tm.blocks.writes.Load(); w > 4 {
		t.Errorf("%d blocks uploaded for a file of 4 written slots", w)
	}

	// Truncate down past the last byte, then into the middle write, then
	// up to 20 GiB again: what was cut reads as zeros.
	steps := []int64{15 << 30, midOff + 300, size}
	for _, n := range steps {
		start := time.Now()
		if err := os.Truncate(path, n); err != nil {
			t.Fatalf("truncate to %d: %v", n, err)
		}
		m.truncate(n)
		t.Logf("truncate to %d took %v", n, time.Since(start).Round(time.Millisecond))
		check(fmt.Sprintf("after truncate to %d", n), n == size)
	}
	checkMap("after truncating down and up", slotsOf(0, midOff))

	// On an open file, with unflushed data: write near the end, cut to
	// 5 GiB (dropping the head of the middle write's slot too), write past
	// the cut, close.
	f, err = os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("unflushed"), size-9); err != nil {
		t.Fatal(err)
	}
	m.write(size-9, []byte("unflushed"))
	if err := f.Truncate(5 << 30); err != nil {
		t.Fatalf("ftruncate: %v", err)
	}
	m.truncate(5 << 30)
	after := []byte("after the cut")
	if _, err := f.WriteAt(after, 6<<30); err != nil {
		t.Fatal(err)
	}
	m.write(6<<30, after)
	if err := f.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	check("after ftruncate on an open file", false)
	checkMap("after ftruncate on an open file", slotsOf(0, 6<<30))

	// Grow back to 20 GiB through ftruncate alone.
	if err := os.Truncate(path, size); err != nil {
		t.Fatal(err)
	}
	m.truncate(size)
	check("after growing back to 20 GiB", true)
}

// ---------------------------------------------------------------------------
// A file of 100,000 extents.

// extentBlockSize is the block size of the extent tests: small, so that
// 100,000 blocks make a file of only 400 MB (mostly zeros).
const extentBlockSize = 4096

// extentData is the content written at the start of slot i of the extent
// file with the given seed: distinct for every (seed, i), so that every
// slot has a block of its own.
func extentData(seed uint64, i int) []byte {
	var b [24]byte
	copy(b[:8], "extent:")
	binary.LittleEndian.PutUint64(b[8:], seed)
	binary.LittleEndian.PutUint64(b[16:], uint64(i))
	return b[:]
}

// extentFileSum is the sha256 of an n-slot extent file: slot i holds
// extentData(seed, i) and zeros, up to the end of the last slot's data.
func extentFileSum(seed uint64, n int) [32]byte {
	h := sha256.New()
	zeros := make([]byte, extentBlockSize)
	for i := range n {
		d := extentData(seed, i)
		h.Write(d)
		if i < n-1 {
			h.Write(zeros[:extentBlockSize-len(d)])
		}
	}
	var sum [32]byte
	h.Sum(sum[:0])
	return sum
}

// largeHashFile reads a whole file in 1 MiB reads and returns its sha256.
func largeHashFile(t *testing.T, path string) ([32]byte, int64) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	nr, err := io.CopyBuffer(h, f, make([]byte, 1<<20))
	if err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	var sum [32]byte
	h.Sum(sum[:0])
	return sum, nr
}

// checkExtentMap checks that ino's block map has one block per slot, each
// holding extentData(seed, slot).
func checkExtentMap(t *testing.T, tm *testMesh, what string, ino meta.Ino, seed uint64, n int) {
	t.Helper()
	// The deadline a mount gives a metadata call: without one, the store's
	// OpTimeout of 5 s applies, which 100,000 slots under -race exceed.
	ctx, cancel := context.WithTimeout(context.Background(), metaTimeout)
	defer cancel()
	start := time.Now()
	refs, err := tm.meta.Blocks(ctx, ino, 0, int64(n))
	if err != nil {
		t.Fatalf("%s: block map: %v", what, err)
	}
	took := time.Since(start)
	if len(refs) != n {
		t.Errorf("%s: block map has %d slots, want %d", what, len(refs), n)
	}
	ids := make(map[persist.BlockID]bool, n)
	bad := 0
	for i := range n {
		d := extentData(seed, i)
		r, ok := refs[int64(i)]
		if !ok || r.ID != persist.Sum(d) || r.Len != uint32(len(d)) {
			if bad++; bad <= 3 {
				t.Errorf("%s: slot %d: %+v, want block of %q", what, i, r, d)
			}
		}
		ids[r.ID] = true
	}
	if len(ids) != n {
		t.Errorf("%s: %d distinct blocks, want %d", what, len(ids), n)
	}
	t.Logf("%s: block map of %d slots read in %v", what, len(refs), took.Round(time.Millisecond))
}

// checkExtentFile reads the extent file through a mount and compares its
// hash with the expected one; it also spot-checks single slots.
func checkExtentFile(t *testing.T, what, path string, seed uint64, n int) {
	t.Helper()
	start := time.Now()
	sum, nr := largeHashFile(t, path)
	want := int64(n-1)*extentBlockSize + int64(len(extentData(seed, 0)))
	if nr != want || sum != extentFileSum(seed, n) {
		t.Errorf("%s: read %d bytes, sha256 %x; want %d bytes, sha256 %x", what, nr, sum, want, extentFileSum(seed, n))
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, i := range []int{n - 1, 0, n / 2, n/2 + 1, 1, n / 7} {
		d := extentData(seed, i)
		got := make([]byte, len(d)+8)
		m, err := f.ReadAt(got, int64(i)*extentBlockSize)
		if err != nil && !(errors.Is(err, io.EOF) && i == n-1) {
			t.Errorf("%s: read slot %d: %v", what, i, err)
			continue
		}
		wantSlot := append(bytes.Clone(d), make([]byte, 8)...)
		if i == n-1 {
			wantSlot = d
		}
		if !bytes.Equal(got[:m], wantSlot) {
			t.Errorf("%s: slot %d reads %x, want %x", what, i, got[:m], wantSlot)
		}
	}
	t.Logf("%s: %d bytes read and hashed in %v", what, nr, time.Since(start).Round(time.Millisecond))
}

// writeExtents writes extentData(seed, i) at the start of every slot i of
// a new file through the mount, with one write per slot; syncEvery > 0
// fsyncs after every syncEvery slots (several commits), else the close
// commits them all at once.
func writeExtents(t *testing.T, path string, seed uint64, n, syncEvery int) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	start := time.Now()
	var syncs time.Duration
	for i := range n {
		if _, err := f.WriteAt(extentData(seed, i), int64(i)*extentBlockSize); err != nil {
			t.Fatalf("write slot %d: %v", i, err)
		}
		if syncEvery > 0 && (i+1)%syncEvery == 0 {
			s := time.Now()
			if err := f.Sync(); err != nil {
				t.Fatalf("fsync after slot %d: %v", i, err)
			}
			syncs += time.Since(s)
		}
	}
	wrote := time.Since(start) - syncs
	start = time.Now()
	if err := f.Close(); err != nil {
		t.Fatalf("close (committing %d slots): %v", n, err)
	}
	t.Logf("%s: %d writes in %v, fsyncs took %v, close %v",
		filepath.Base(path), n, wrote.Round(time.Millisecond), syncs.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
}

// TestLargeExtents makes files whose block maps hold 100,000 separate
// blocks (2,000 without MESHFS_LARGE; that is still two block-map chunks of
// 1024 slots), with 4 KiB blocks:
//
//   - written through a mount, one small write per slot, committed by a
//     single close (one atomic batch of every block-map chunk);
//   - the same, committed by an fsync every tenth of the file;
//   - committed through the metadata API, all slots in one CommitWrite and
//     in several interleaved ones.
//
// Each is read back through another mount and its content hash checked.
// Then one is truncated to half and unlinked, which reclaims its map.
func TestLargeExtents(t *testing.T) {
	t.Parallel()
	n := largeSize(2_000, 100_000)
	tm := newTestMeshBlockSize(t, extentBlockSize)
	cm := &largeCountingMeta{Metadata: tm.newMeta()}
	// A small write buffer: each slot's small write costs a whole 4 KiB
	// buffer until it is uploaded, and spilling must make room.
	_, a := tm.mount(func(o *Options) {
		o.Meta = cm
		o.WriteBuffer = 8 << 20
	})
	_, b := tm.mount()

	t.Run("one-close", func(t *testing.T) {
		path := filepath.Join(a, "one-close")
		commits := cm.commits.Load()
		writeExtents(t, path, 1, n, 0)
		if c := cm.commits.Load() - commits; c != 1 {
			t.Errorf("%d commits for one close, want 1", c)
		}
		checkExtentMap(t, tm, "one close", largeInoOf(t, path), 1, n)
		checkExtentFile(t, "one close, second mount", filepath.Join(b, "one-close"), 1, n)
	})

	t.Run("fsyncs", func(t *testing.T) {
		path := filepath.Join(a, "fsyncs")
		writeExtents(t, path, 2, n, n/10)
		checkExtentMap(t, tm, "fsync every tenth", largeInoOf(t, path), 2, n)
		checkExtentFile(t, "fsync every tenth, second mount", filepath.Join(b, "fsyncs"), 2, n)
	})

	// Through the metadata API: the blocks go to the mesh first, then the
	// block map is committed.
	commitViaAPI := func(t *testing.T, name string, seed uint64, parts int) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		attr, err := tm.meta.Create(ctx, meta.RootIno, name, 0o644, 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		all := make([]map[int64]meta.BlockRef, parts)
		for p := range all {
			all[p] = make(map[int64]meta.BlockRef, n/parts+1)
		}
		for i := range n {
			d := extentData(seed, i)
			id, err := tm.blocks.Write(ctx, d)
			if err != nil {
				t.Fatal(err)
			}
			all[i%parts][int64(i)] = meta.BlockRef{ID: id, Len: uint32(len(d))}
		}
		size := uint64(n-1)*extentBlockSize + uint64(len(extentData(seed, 0)))
		start := time.Now()
		for p, slots := range all {
			if _, err := tm.meta.CommitWrite(ctx, attr.Ino, slots, size, time.Now().UnixNano()); err != nil {
				t.Fatalf("CommitWrite %d of %d (%d slots): %v", p+1, parts, len(slots), err)
			}
		}
		t.Logf("%s: %d CommitWrite call(s) of %d slots in all took %v", name, parts, n, time.Since(start).Round(time.Millisecond))
		checkExtentMap(t, tm, name, attr.Ino, seed, n)
		checkExtentFile(t, name+", mount", filepath.Join(b, name), seed, n)
	}
	t.Run("api-one-commit", func(t *testing.T) { commitViaAPI(t, "api-one-commit", 3, 1) })
	t.Run("api-several-commits", func(t *testing.T) { commitViaAPI(t, "api-several-commits", 4, 7) })

	t.Run("truncate-and-unlink", func(t *testing.T) {
		path := filepath.Join(a, "one-close")
		ino := largeInoOf(t, path)
		half := n / 2
		start := time.Now()
		if err := os.Truncate(path, int64(half-1)*extentBlockSize+int64(len(extentData(1, 0)))); err != nil {
			t.Fatal(err)
		}
		t.Logf("truncate from %d slots to %d: %v", n, half, time.Since(start).Round(time.Millisecond))
		checkExtentMap(t, tm, "truncated to half", ino, 1, half)
		checkExtentFile(t, "truncated to half, second mount", filepath.Join(b, "one-close"), 1, half)
		start = time.Now()
		if err := os.Remove(path); err != nil {
			t.Fatal(err)
		}
		t.Logf("unlink (and reclaim) of %d slots: %v", half, time.Since(start).Round(time.Millisecond))
		if _, err := tm.meta.GetAttr(context.Background(), ino); !errors.Is(err, syscall.ENOENT) {
			t.Errorf("inode after unlink: %v, want ENOENT", err)
		}
	})
}

// TestLargeCommitChunkLimit finds where one commit's block map ends. A
// commit is one atomic batch of at most 1000 messages: the inode and at
// most 999 block-map chunks of 1024 slots. With the tests' 64 KiB slots a
// chunk covers 64 MiB, so writing one byte in each of 999 chunks (a 62 GiB
// sparse file) commits at close, one more chunk does not; with the
// production 4 MiB blocks a chunk covers 4 GiB, so this is a file written
// across more than ~3.9 TiB between two commits (a sequential copy of such
// a file without fsync). An fsync in between splits the commit.
func TestLargeCommitChunkLimit(t *testing.T) {
	t.Parallel()
	tm := newTestMeshBlockSize(t, slot)
	_, a := tm.mount()
	const chunkBytes = 1024 * slot
	write := func(name string, chunks, syncAt int) error {
		t.Helper()
		f, err := os.Create(filepath.Join(a, name))
		if err != nil {
			t.Fatal(err)
		}
		for c := range chunks {
			if _, err := f.WriteAt([]byte{byte(c) | 1}, int64(c)*chunkBytes); err != nil {
				t.Fatalf("%s: write in chunk %d: %v", name, c, err)
			}
			if c+1 == syncAt {
				if err := f.Sync(); err != nil {
					t.Fatalf("%s: fsync: %v", name, err)
				}
			}
		}
		return f.Close()
	}
	check := func(name string, chunks int) {
		t.Helper()
		path := filepath.Join(a, name)
		st, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if want := int64(chunks-1)*chunkBytes + 1; st.Size() != want {
			t.Errorf("%s: size %d, want %d", name, st.Size(), want)
		}
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		for _, c := range []int{0, 1, chunks / 2, chunks - 1} {
			got := make([]byte, 2)
			nr, _ := f.ReadAt(got, int64(c)*chunkBytes)
			want := []byte{byte(c) | 1, 0}
			if c == chunks-1 {
				want = want[:1]
			}
			if !bytes.Equal(got[:nr], want) {
				t.Errorf("%s: chunk %d reads %x, want %x", name, c, got[:nr], want)
			}
		}
	}

	start := time.Now()
	if err := write("c999", 999, 0); err != nil {
		t.Fatalf("close committing 999 chunks: %v", err)
	}
	t.Logf("close committing 999 block-map chunks: ok (%v with the writes)", time.Since(start).Round(time.Millisecond))
	check("c999", 999)

	err := write("c1000", 1000, 0)
	t.Logf("close committing 1000 block-map chunks: %v", err)
	if !errors.Is(err, syscall.EFBIG) {
		t.Errorf("close committing 1000 block-map chunks: %v, want EFBIG (the limit of one commit)", err)
	}
	// Nothing of the failed close is committed.
	if st, err := os.Stat(filepath.Join(a, "c1000")); err != nil || st.Size() != 0 {
		t.Errorf("after the failed close: %v, %v; want an empty file", st.Size(), err)
	}

	if err := write("c1000-fsync", 1000, 500); err != nil {
		t.Fatalf("close committing 1000 chunks with an fsync half-way: %v", err)
	}
	check("c1000-fsync", 1000)
}

// TestLargeHugeSparseFile writes one byte at the end of a 1 EiB file through
// a mount with the production 4 MiB blocks: one block-map chunk, in a size
// that covers 2^28 chunk indices. Reading the file loads its block map, and
// truncating and reclaiming it drop its chunks: when those visited every
// index, each ran into the mount's 30 s deadline (EIO on read, a truncation
// left at an intermediate size, an inode never reclaimed). Its st_blocks
// counts the one block stored, not the holes.
func TestLargeHugeSparseFile(t *testing.T) {
	const bs = 4 << 20
	const size = int64(1) << 60
	tm := newTestMeshBlockSize(t, bs)
	_, a := tm.mount()
	path := filepath.Join(a, "huge")
	start := time.Now()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{0x7e}, size-1); err != nil {
		t.Fatalf("write at 1 EiB - 1: %v", err)
	}
	if err := f.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	st, err := os.Stat(path)
	if err != nil || st.Size() != size {
		t.Fatalf("stat: %v, %v; want size %d", st, err, size)
	}
	ino := largeInoOf(t, path)
	t.Logf("wrote, closed and stat'ed a 1 EiB file of one byte in %v", time.Since(start).Round(time.Millisecond))
	// The byte lands at the end of its slot, so its block holds the
	// whole slot: st_blocks is one block's, not the size's.
	if blocks := st.Sys().(*syscall.Stat_t).Blocks; blocks != bs/512 {
		t.Errorf("st_blocks of a 1 EiB file holding one block: %d, want %d (512-byte units)", blocks, bs/512)
	}

	for _, off := range []int64{size - 1, 0} {
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 1)
		start := time.Now()
		_, err = f.ReadAt(buf, off)
		f.Close()
		t.Logf("read of 1 byte at %d: %x, %v after %v", off, buf, err, time.Since(start).Round(time.Millisecond))
		want := byte(0)
		if off == size-1 {
			want = 0x7e
		}
		if err != nil || buf[0] != want {
			t.Errorf("read of 1 byte at %d: %x, %v; want %x", off, buf, err, want)
		}
	}

	start = time.Now()
	err = os.Truncate(path, 1<<30)
	took := time.Since(start)
	attr, aerr := tm.meta.GetAttr(context.Background(), ino)
	t.Logf("truncate to 1 GiB: %v after %v; committed size now %d (%v)", err, took.Round(time.Millisecond), attr.Size, aerr)
	if err != nil || attr.Size != 1<<30 {
		t.Errorf("truncate of a 1 EiB file of one byte to 1 GiB: %v, size %d", err, attr.Size)
	}

	start = time.Now()
	if err := os.Remove(path); err != nil {
		t.Fatalf("unlink: %v", err)
	}
	t.Logf("unlink: %v", time.Since(start).Round(time.Millisecond))
	if attr, err := tm.meta.GetAttr(context.Background(), ino); !errors.Is(err, syscall.ENOENT) {
		t.Errorf("inode after unlink: %+v, %v; want it reclaimed (ENOENT)", attr, err)
	}
}
