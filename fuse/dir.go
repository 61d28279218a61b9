package fuse

import (
	"context"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	gofuse "github.com/hanwen/go-fuse/v2/fuse"
)

// openDir counts the handles open on a directory, so that one removed
// (rmdir, or renamed over) through this mount while open here keeps its
// inode, empty at nlink 0, for them, as on a local file system: fstat,
// getdents and xattrs through the handle go on working, and the last
// release reclaims the inode. Handles on other mounts are not counted
// (they answer ENOENT), nor is a working directory, which holds no handle.
// Like an unlinked file's, the inode stays as garbage if this mount dies
// between the removal and the reclaim.
type openDir struct {
	opens   int
	reclaim bool // removed while open: reclaim at the last release
}

// dirHandle is one open directory. Its listing is read at the first
// getdents (or seek) and served from memory until the handle is rewound.
type dirHandle struct {
	n  *node
	ds fs.DirStream
}

var (
	_ = (fs.FileReaddirenter)((*dirHandle)(nil))
	_ = (fs.FileSeekdirer)((*dirHandle)(nil))
	_ = (fs.FileReleasedirer)((*dirHandle)(nil))
	_ = (fs.FileFsyncdirer)((*dirHandle)(nil))
)

func (n *node) OpendirHandle(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	m := n.m
	m.filesMu.Lock()
	d := m.dirs[n.ino()]
	if d == nil {
		d = &openDir{}
		m.dirs[n.ino()] = d
	}
	d.opens++
	m.filesMu.Unlock()
	return &dirHandle{n: n}, 0, 0
}

func (h *dirHandle) stream(ctx context.Context) syscall.Errno {
	if h.ds != nil {
		return 0
	}
	ds, errno := h.n.Readdir(ctx)
	if errno != 0 {
		return errno
	}
	h.ds = ds
	return 0
}

func (h *dirHandle) Readdirent(ctx context.Context) (*gofuse.DirEntry, syscall.Errno) {
	if errno := h.stream(ctx); errno != 0 {
		return nil, errno
	}
	if !h.ds.HasNext() {
		return nil, 0
	}
	e, errno := h.ds.Next()
	return &e, errno
}

func (h *dirHandle) Seekdir(ctx context.Context, off uint64) syscall.Errno {
	if off == 0 && h.ds != nil {
		// A rewind (rewinddir, or lseek to 0) reads the directory
		// afresh, as getdents on a local file system would show
		// entries made since the open.
		h.ds.Close()
		h.ds = nil
	}
	if errno := h.stream(ctx); errno != 0 {
		return errno
	}
	if sd, ok := h.ds.(fs.FileSeekdirer); ok {
		return sd.Seekdir(ctx, off)
	}
	return syscall.ENOTSUP
}

// Fsyncdir has nothing to do: every change to a directory is durable on a
// majority of the metadata servers when its call returns.
func (h *dirHandle) Fsyncdir(ctx context.Context, flags uint32) syscall.Errno { return 0 }

func (h *dirHandle) Releasedir(ctx context.Context, releaseFlags uint32) {
	m, ino := h.n.m, h.n.ino()
	m.filesMu.Lock()
	d := m.dirs[ino]
	if d == nil {
		m.filesMu.Unlock()
		return
	}
	d.opens--
	if d.opens > 0 {
		m.filesMu.Unlock()
		return
	}
	delete(m.dirs, ino)
	reclaim := d.reclaim
	m.filesMu.Unlock()
	if h.ds != nil {
		h.ds.Close()
	}
	if reclaim {
		m.reclaim(m.ctx, ino)
	}
}
