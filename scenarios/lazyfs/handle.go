package lazyfs

import (
	"context"
	"os"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// handle is an open file on the mount. All handles on one backing inode
// share its fileState, so a sync through any of them writes what all of
// them wrote.
type handle struct {
	fsys  *FS
	state *fileState
}

var (
	_ = (fs.FileReader)((*handle)(nil))
	_ = (fs.FileWriter)((*handle)(nil))
	_ = (fs.FileFsyncer)((*handle)(nil))
	_ = (fs.FileFlusher)((*handle)(nil))
	_ = (fs.FileReleaser)((*handle)(nil))
	_ = (fs.FileGetattrer)((*handle)(nil))
	_ = (fs.FileAllocater)((*handle)(nil))
)

// fsyncDatasync is the FsyncFlags bit of fdatasync.
const fsyncDatasync = 1

func (h *handle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if !h.fsys.enter() {
		return nil, syscall.EIO
	}
	defer h.fsys.leave()
	n, err := h.state.readAt(dest, off)
	if err != nil {
		return nil, fs.ToErrno(err)
	}
	return fuse.ReadResultData(dest[:n]), 0
}

func (h *handle) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	if !h.fsys.enter() {
		return 0, syscall.EIO
	}
	defer h.fsys.leave()
	if err := h.state.writeAt(data, off); err != nil {
		h.fsys.log.Warn("lazyfs write", "err", err)
		return 0, fs.ToErrno(err)
	}
	return uint32(len(data)), 0
}

// Fsync writes the file's unsynced changes, from every handle, to the
// backing file and syncs it. A file opened O_SYNC or O_DSYNC gets here
// after each write: the kernel calls fsync for it.
func (h *handle) Fsync(ctx context.Context, flags uint32) syscall.Errno {
	if !h.fsys.enter() {
		return syscall.EIO
	}
	defer h.fsys.leave()
	h.fsys.count.syncs.Add(1)
	if err := h.state.sync(flags&fsyncDatasync != 0); err != nil {
		h.fsys.log.Warn("lazyfs fsync", "err", err)
		return fs.ToErrno(err)
	}
	return 0
}

// Flush, called at every close, writes nothing: unsynced data stays in
// memory, which is the point.
func (h *handle) Flush(ctx context.Context) syscall.Errno { return 0 }

func (h *handle) Release(ctx context.Context) syscall.Errno {
	if !h.fsys.enter() {
		return 0 // the power cut dropped every state already
	}
	defer h.fsys.leave()
	h.fsys.release(h.state)
	return 0
}

func (h *handle) Getattr(ctx context.Context, out *fuse.AttrOut) syscall.Errno {
	if !h.fsys.enter() {
		return syscall.EIO
	}
	defer h.fsys.leave()
	return h.getattr(out)
}

func (h *handle) getattr(out *fuse.AttrOut) syscall.Errno {
	var st syscall.Stat_t
	err := h.state.withBacking(func(b *os.File) error {
		return syscall.Fstat(int(b.Fd()), &st)
	})
	if err != nil {
		return fs.ToErrno(err)
	}
	out.FromStat(&st)
	h.state.attr(&out.Attr)
	return 0
}

// Allocate supports what needs no real allocation: growing the size
// (mode 0), reserving space (KEEP_SIZE, a no-op) and zeroing a range
// (PUNCH_HOLE or ZERO_RANGE); the changes are pending like writes.
func (h *handle) Allocate(ctx context.Context, off, size uint64, mode uint32) syscall.Errno {
	if !h.fsys.enter() {
		return syscall.EIO
	}
	defer h.fsys.leave()
	keepSize := mode&unix.FALLOC_FL_KEEP_SIZE != 0
	var err error
	switch mode &^ unix.FALLOC_FL_KEEP_SIZE {
	case 0:
		if !keepSize {
			err = h.state.extend(int64(off + size))
		}
	case unix.FALLOC_FL_PUNCH_HOLE:
		if !keepSize {
			return syscall.EINVAL // as Linux: a hole punch must keep the size
		}
		err = h.state.zero(int64(off), int64(size))
	case unix.FALLOC_FL_ZERO_RANGE:
		if err = h.state.zero(int64(off), int64(size)); err == nil && !keepSize {
			err = h.state.extend(int64(off + size))
		}
	default:
		return syscall.EOPNOTSUPP
	}
	return fs.ToErrno(err)
}
