package lazyfs

import (
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// pageSize is the unit in which unsynced data is kept. Pages are whole, so
// a partial write first reads the rest of its page from the merged view.
const pageSize = 4096

// fileID names a backing inode. Keying unsynced data by inode, not path,
// keeps it with the file across renames and shares it between hard links.
// An ID cannot be reused while a fileState holds it: the state keeps the
// backing file open, so the backing file system cannot free the inode.
type fileID struct {
	dev, ino uint64
}

func idOf(st *syscall.Stat_t) fileID {
	return fileID{dev: st.Dev, ino: st.Ino}
}

// page is one pageSize piece of a file's merged content. Its bytes at or
// past the file's pending size are zero, so a later extension reads zeros.
type page struct {
	data [pageSize]byte
	// lo and hi bound the bytes written to this page since the last sync;
	// they are what Stats counts as dirty.
	lo, hi int
}

// counters are the FS-wide totals behind Stats.
type counters struct {
	dirty, synced, dropped, syncs atomic.Int64
}

// fileState is one backing file while the mount uses it: an open
// descriptor on it and the writes and size changes not yet synced to it.
//
// While dirty, the merged content of the file is: for offsets below size,
// the page's bytes if a page is kept, else the backing file's bytes if the
// offset is below keep, else zeros. Nothing is written to the backing file
// until sync, so the backing file holds exactly what the last sync left.
type fileState struct {
	id    fileID
	count *counters

	// handles is the number of open handles on the file; guarded by FS.mu.
	handles int

	mu sync.RWMutex
	// backing is opened read-write when it can be: sync writes through it
	// whichever handle asked for the sync.
	backing  *os.File
	writable bool
	dirty    bool
	// size is the pending size; keep is how much of the backing file's
	// content still shows through (a truncate below it hides the rest).
	size, keep int64
	pages      map[int64]*page
	dirtyBytes int64
}

func newFileState(id fileID, backing *os.File, writable bool, count *counters) *fileState {
	return &fileState{id: id, count: count, backing: backing, writable: writable}
}

// begin starts keeping changes in memory, from the backing file's current
// size. The backing file does not change while the state is dirty. Must
// hold s.mu.
func (s *fileState) begin() error {
	if s.dirty {
		return nil
	}
	size, err := s.currentSize()
	if err != nil {
		return err
	}
	s.size, s.keep = size, size
	s.pages = make(map[int64]*page)
	s.dirty = true
	return nil
}

// currentSize is the merged size; must hold s.mu.
func (s *fileState) currentSize() (int64, error) {
	if s.dirty {
		return s.size, nil
	}
	fi, err := s.backing.Stat()
	if err != nil {
		return 0, fmt.Errorf("stat backing file: %w", err)
	}
	return fi.Size(), nil
}

// readAt reads the merged content into buf, returning fewer bytes only at
// the end of the file.
func (s *fileState) readAt(buf []byte, off int64) (int, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if !s.dirty {
		n, err := s.backing.ReadAt(buf, off)
		if errors.Is(err, io.EOF) {
			err = nil
		}
		return n, err
	}
	if off >= s.size {
		return 0, nil
	}
	buf = buf[:min(int64(len(buf)), s.size-off)]
	end := off + int64(len(buf))
	shown := 0
	if off < s.keep {
		n, err := s.backing.ReadAt(buf[:min(end, s.keep)-off], off)
		if err != nil && !errors.Is(err, io.EOF) {
			return 0, err
		}
		shown = n
	}
	clear(buf[shown:])
	for idx := off / pageSize; idx*pageSize < end; idx++ {
		p := s.pages[idx]
		if p == nil {
			continue
		}
		start := idx * pageSize
		from := max(off, start)
		to := min(end, start+pageSize)
		copy(buf[from-off:to-off], p.data[from-start:to-start])
	}
	return len(buf), nil
}

// writeAt keeps data as written at off, growing the pending size.
func (s *fileState) writeAt(data []byte, off int64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.begin(); err != nil {
		return err
	}
	end := off + int64(len(data))
	for pos := off; pos < end; {
		idx := pos / pageSize
		in := int(pos - idx*pageSize)
		n := min(pageSize-in, int(end-pos))
		p, err := s.page(idx)
		if err != nil {
			return err
		}
		copy(p.data[in:in+n], data[pos-off:])
		s.markDirty(p, in, in+n)
		pos += int64(n)
	}
	s.size = max(s.size, end)
	return nil
}

// page returns the kept page idx, first filling it from the merged view.
func (s *fileState) page(idx int64) (*page, error) {
	if p := s.pages[idx]; p != nil {
		return p, nil
	}
	p := &page{}
	start := idx * pageSize
	if start < s.keep {
		n := min(pageSize, s.keep-start)
		if _, err := s.backing.ReadAt(p.data[:n], start); err != nil && !errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("read backing page at %d: %w", start, err)
		}
	}
	s.pages[idx] = p
	return p, nil
}

func (s *fileState) markDirty(p *page, lo, hi int) {
	before := p.hi - p.lo
	if before == 0 {
		p.lo, p.hi = lo, hi
	} else {
		p.lo, p.hi = min(p.lo, lo), max(p.hi, hi)
	}
	s.addDirty(int64(p.hi - p.lo - before))
}

func (s *fileState) addDirty(n int64) {
	s.dirtyBytes += n
	s.count.dirty.Add(n)
}

// truncate sets the pending size. Bytes cut off stay cut off: growing the
// file again shows zeros there, as on a real file system.
func (s *fileState) truncate(size int64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if cur, err := s.currentSize(); err != nil || cur == size {
		return err
	}
	if err := s.begin(); err != nil {
		return err
	}
	if size < s.size {
		for idx, p := range s.pages {
			if idx*pageSize >= size {
				s.addDirty(-int64(p.hi - p.lo))
				delete(s.pages, idx)
			}
		}
		if p := s.pages[size/pageSize]; p != nil {
			cut := int(size % pageSize)
			clear(p.data[cut:])
			before := p.hi - p.lo
			p.hi = min(p.hi, cut)
			p.lo = min(p.lo, p.hi)
			s.addDirty(int64(p.hi - p.lo - before))
		}
		s.keep = min(s.keep, size)
	}
	s.size = size
	return nil
}

// extend grows the pending size to at least size.
func (s *fileState) extend(size int64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if cur, err := s.currentSize(); err != nil || cur >= size {
		return err
	}
	if err := s.begin(); err != nil {
		return err
	}
	s.size = size
	return nil
}

// zero makes [off, off+n) read as zeros, within the current size.
func (s *fileState) zero(off, n int64) error {
	s.mu.RLock()
	size, err := s.currentSize()
	s.mu.RUnlock()
	if err != nil {
		return err
	}
	end := min(off+n, size)
	zeros := make([]byte, min(max(end-off, 0), 1<<20))
	for pos := off; pos < end; pos += int64(len(zeros)) {
		if err := s.writeAt(zeros[:min(int64(len(zeros)), end-pos)], pos); err != nil {
			return err
		}
	}
	return nil
}

// attr overrides the backing file's size with the pending one.
// Timestamps stay the backing file's: they move at sync.
func (s *fileState) attr(out *fuse.Attr) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.dirty {
		out.Size = uint64(s.size)
		out.Blocks = (out.Size + 511) / 512
	}
}

// sync writes the pending size and pages to the backing file, then syncs
// it (fdatasync when datasync). On error the state stays dirty, so a
// retry writes everything again.
func (s *fileState) sync(datasync bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dirty {
		if err := s.writeBack(); err != nil {
			return err
		}
	}
	var err error
	if datasync {
		err = unix.Fdatasync(int(s.backing.Fd()))
	} else {
		err = s.backing.Sync()
	}
	if err != nil {
		return fmt.Errorf("sync backing file: %w", err)
	}
	if s.dirty {
		s.count.synced.Add(s.dirtyBytes)
		s.count.dirty.Add(-s.dirtyBytes)
		s.dirtyBytes = 0
		s.pages = nil
		s.dirty = false
	}
	return nil
}

// writeBack makes the backing file's content the merged content: cut it to
// keep, write the pages in runs of adjacent pages, then set the size.
func (s *fileState) writeBack() error {
	if !s.writable {
		return fmt.Errorf("write back: %w (backing file opened read-only)", unix.EBADF)
	}
	fi, err := s.backing.Stat()
	if err != nil {
		return fmt.Errorf("stat backing file: %w", err)
	}
	backingSize := fi.Size()
	if s.keep < backingSize {
		if err := s.backing.Truncate(s.keep); err != nil {
			return fmt.Errorf("truncate backing file to %d: %w", s.keep, err)
		}
		backingSize = s.keep
	}
	idxs := make([]int64, 0, len(s.pages))
	for idx := range s.pages {
		if idx*pageSize < s.size {
			idxs = append(idxs, idx)
		}
	}
	slices.Sort(idxs)
	const maxRun = 1 << 20
	var run []byte
	var runStart int64
	flush := func() error {
		if len(run) == 0 {
			return nil
		}
		if _, err := s.backing.WriteAt(run, runStart); err != nil {
			return fmt.Errorf("write %d bytes at %d to backing file: %w", len(run), runStart, err)
		}
		backingSize = max(backingSize, runStart+int64(len(run)))
		run = run[:0]
		return nil
	}
	for _, idx := range idxs {
		start := idx * pageSize
		if len(run) > 0 && (runStart+int64(len(run)) != start || len(run) >= maxRun) {
			if err := flush(); err != nil {
				return err
			}
		}
		if len(run) == 0 {
			runStart = start
		}
		run = append(run, s.pages[idx].data[:min(pageSize, s.size-start)]...)
	}
	if err := flush(); err != nil {
		return err
	}
	if backingSize != s.size {
		if err := s.backing.Truncate(s.size); err != nil {
			return fmt.Errorf("truncate backing file to %d: %w", s.size, err)
		}
	}
	return nil
}

// discard throws the unsynced changes away and returns how many dirty
// bytes they held.
func (s *fileState) discard() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.dirtyBytes
	s.addDirty(-n)
	s.pages = nil
	s.dirty = false
	return n
}

func (s *fileState) isDirty() bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.dirty
}

// adopt replaces a read-only backing descriptor with a writable one, so
// that sync can write. It reports whether it kept f.
func (s *fileState) adopt(f *os.File, writable bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.writable || !writable {
		return false
	}
	s.backing.Close()
	s.backing, s.writable = f, true
	return true
}

// withBacking calls fn with the backing descriptor, which adopt cannot
// close meanwhile.
func (s *fileState) withBacking(fn func(*os.File) error) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return fn(s.backing)
}

func (s *fileState) close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.backing.Close()
}
