package lazyfs

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// node is a go-fuse loopback node whose files keep data changes in memory
// until fsync. Namespace operations are the loopback's, passed straight to
// the backing directory; the overrides below report pending sizes, open
// files through fileState, and refuse changes once the power is cut.
type node struct {
	*fs.LoopbackNode
	fsys *FS
}

var (
	_ = (fs.NodeWrapChilder)((*node)(nil))
	_ = (fs.NodeLookuper)((*node)(nil))
	_ = (fs.NodeCreater)((*node)(nil))
	_ = (fs.NodeOpener)((*node)(nil))
	_ = (fs.NodeGetattrer)((*node)(nil))
	_ = (fs.NodeSetattrer)((*node)(nil))
	_ = (fs.NodeStatxer)((*node)(nil))
	_ = (fs.NodeUnlinker)((*node)(nil))
	_ = (fs.NodeRenamer)((*node)(nil))
	_ = (fs.NodeLinker)((*node)(nil))
	_ = (fs.NodeTmpfiler)((*node)(nil))
)

// WrapChild makes every node the loopback creates one of ours.
func (n *node) WrapChild(ctx context.Context, ops fs.InodeEmbedder) fs.InodeEmbedder {
	return &node{LoopbackNode: ops.(*fs.LoopbackNode), fsys: n.fsys}
}

func (n *node) backingPath() string {
	return filepath.Join(n.RootData.Path, n.Path(nil))
}

// pendingAttr replaces the size in out, just filled from the backing file
// at path, with the pending size if the file has one. The kernel must never
// see the backing size of a file with unsynced changes: it would cut its
// page cache and mappings short.
func (f *FS) pendingAttr(path string, out *fuse.Attr) {
	if out.Mode&syscall.S_IFMT != syscall.S_IFREG {
		return
	}
	var st syscall.Stat_t
	if err := syscall.Lstat(path, &st); err != nil {
		return
	}
	if s := f.state(idOf(&st)); s != nil {
		s.attr(out)
	}
}

func (n *node) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	if !n.fsys.enter() {
		return nil, syscall.EIO
	}
	defer n.fsys.leave()
	ch, errno := n.LoopbackNode.Lookup(ctx, name, out)
	if errno == 0 {
		n.fsys.pendingAttr(filepath.Join(n.backingPath(), name), &out.Attr)
	}
	return ch, errno
}

func (n *node) Create(ctx context.Context, name string, flags, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	if !n.fsys.enter() {
		return nil, nil, 0, syscall.EIO
	}
	defer n.fsys.leave()
	var ch *fs.Inode
	h, errno := n.fsys.open(ctx, filepath.Join(n.backingPath(), name), flags, func(flags uint32) (fs.FileHandle, syscall.Errno) {
		var lf fs.FileHandle
		var errno syscall.Errno
		ch, lf, _, errno = n.LoopbackNode.Create(ctx, name, flags, mode, out)
		return lf, errno
	})
	if errno != 0 {
		return nil, nil, 0, errno
	}
	h.state.attr(&out.Attr)
	return ch, h, 0, 0
}

func (n *node) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if !n.fsys.enter() {
		return nil, 0, syscall.EIO
	}
	defer n.fsys.leave()
	h, errno := n.fsys.open(ctx, n.backingPath(), flags, func(flags uint32) (fs.FileHandle, syscall.Errno) {
		lf, _, errno := n.LoopbackNode.Open(ctx, flags)
		return lf, errno
	})
	if errno != 0 {
		return nil, 0, errno
	}
	// No FOPEN_KEEP_CACHE, no FOPEN_DIRECT_IO: reads and mappings go through
	// the page cache, filled from the merged view.
	return h, 0, 0
}

// open opens the backing file at path through open (the loopback's Open or
// Create), read-write when it can, so that a sync through any handle can
// write. Flags the kernel already applied, or that only matter for a real
// write, are not passed on; O_TRUNC becomes a pending truncate.
func (f *FS) open(ctx context.Context, path string, flags uint32, open func(flags uint32) (fs.FileHandle, syscall.Errno)) (*handle, syscall.Errno) {
	const notPassed = syscall.O_ACCMODE | syscall.O_TRUNC | syscall.O_APPEND | syscall.O_DIRECT | syscall.O_SYNC | syscall.O_DSYNC
	base := flags &^ notPassed
	writable := true
	lf, errno := open(base | syscall.O_RDWR)
	switch errno {
	case syscall.EACCES, syscall.EPERM, syscall.EROFS, syscall.ETXTBSY:
		lf, errno = open(base | flags&syscall.O_ACCMODE)
		writable = flags&syscall.O_ACCMODE != syscall.O_RDONLY
	}
	if errno != 0 {
		return nil, errno
	}
	file, err := ownDescriptor(ctx, lf, path)
	if err != nil {
		return nil, fs.ToErrno(err)
	}
	s, err := f.acquire(file, writable)
	if err != nil {
		f.log.Warn("lazyfs open", "path", path, "err", err)
		return nil, fs.ToErrno(err)
	}
	h := &handle{fsys: f, state: s}
	if flags&syscall.O_TRUNC != 0 {
		if err := s.truncate(0); err != nil {
			f.release(s)
			return nil, fs.ToErrno(err)
		}
	}
	return h, 0
}

// ownDescriptor takes a duplicate of the descriptor of a loopback file
// handle and releases the handle: the state keeps its own descriptor,
// independent of any one handle.
func ownDescriptor(ctx context.Context, lf fs.FileHandle, path string) (*os.File, error) {
	defer lf.(fs.FileReleaser).Release(ctx)
	fd, ok := lf.(fs.FilePassthroughFder).PassthroughFd()
	if !ok {
		return nil, fmt.Errorf("open backing file %s: %w", path, syscall.EBADF)
	}
	dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open backing file %s: dup: %w", path, err)
	}
	return os.NewFile(uintptr(dup), path), nil
}

func (n *node) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	if !n.fsys.enter() {
		return syscall.EIO
	}
	defer n.fsys.leave()
	return n.getattr(f, out)
}

func (n *node) getattr(f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	if h, ok := f.(*handle); ok {
		return h.getattr(out)
	}
	p := n.backingPath()
	var st syscall.Stat_t
	var err error
	if n.IsRoot() {
		err = syscall.Stat(p, &st)
	} else {
		err = syscall.Lstat(p, &st)
	}
	if err != nil {
		return fs.ToErrno(err)
	}
	out.FromStat(&st)
	if st.Mode&syscall.S_IFMT == syscall.S_IFREG {
		if s := n.fsys.state(idOf(&st)); s != nil {
			s.attr(&out.Attr)
		}
	}
	return 0
}

// Setattr keeps a size change pending; mode, owner and times go to the
// backing file at once.
func (n *node) Setattr(ctx context.Context, f fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if !n.fsys.enter() {
		return syscall.EIO
	}
	defer n.fsys.leave()
	h, _ := f.(*handle)
	if size, ok := in.GetSize(); ok {
		var s *fileState
		if h != nil {
			s = h.state
		} else {
			// truncate(2) by name: no handle, so open one for the state.
			path := n.backingPath()
			file, err := os.OpenFile(path, os.O_RDWR, 0)
			if err != nil {
				return fs.ToErrno(err)
			}
			if s, err = n.fsys.acquire(file, true); err != nil {
				return fs.ToErrno(err)
			}
			defer n.fsys.release(s)
		}
		if err := s.truncate(int64(size)); err != nil {
			n.fsys.log.Warn("lazyfs truncate", "path", n.backingPath(), "err", err)
			return fs.ToErrno(err)
		}
	}
	rest := *in
	rest.Valid &^= fuse.FATTR_SIZE | fuse.FATTR_FH | fuse.FATTR_LOCKOWNER
	if rest.Valid != 0 {
		var ignored fuse.AttrOut
		var errno syscall.Errno
		if h != nil {
			// Through the descriptor: the file may have no name left. The
			// LoopbackFile is never released, so the descriptor stays ours.
			err := h.state.withBacking(func(b *os.File) error {
				if errno := fs.NewLoopbackFileFromOS(b).Setattr(context.Background(), &rest, &ignored); errno != 0 {
					return errno
				}
				return nil
			})
			errno = fs.ToErrno(err)
		} else {
			errno = n.LoopbackNode.Setattr(ctx, nil, &rest, &ignored)
		}
		if errno != 0 {
			return errno
		}
	}
	return n.getattr(f, out)
}

// Statx answers ENOSYS: the kernel then asks Getattr, which knows the
// pending size, and does not ask again.
func (n *node) Statx(ctx context.Context, f fs.FileHandle, flags, mask uint32, out *fuse.StatxOut) syscall.Errno {
	return syscall.ENOSYS
}

func (n *node) Unlink(ctx context.Context, name string) syscall.Errno {
	if !n.fsys.enter() {
		return syscall.EIO
	}
	defer n.fsys.leave()
	var st syscall.Stat_t
	known := syscall.Lstat(filepath.Join(n.backingPath(), name), &st) == nil
	errno := n.LoopbackNode.Unlink(ctx, name)
	if errno == 0 && known {
		n.fsys.forgetIfUnlinked(idOf(&st))
	}
	return errno
}

func (n *node) Rename(ctx context.Context, name string, newParent fs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	if !n.fsys.enter() {
		return syscall.EIO
	}
	defer n.fsys.leave()
	// A rename over an existing file removes that file's name.
	var st syscall.Stat_t
	replaced := false
	if np, ok := newParent.(*node); ok && flags&unix.RENAME_EXCHANGE == 0 {
		replaced = syscall.Lstat(filepath.Join(np.backingPath(), newName), &st) == nil
	}
	errno := n.LoopbackNode.Rename(ctx, name, newParent, newName, flags)
	if errno == 0 && replaced {
		n.fsys.forgetIfUnlinked(idOf(&st))
	}
	return errno
}

func (n *node) Link(ctx context.Context, target fs.InodeEmbedder, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	if !n.fsys.enter() {
		return nil, syscall.EIO
	}
	defer n.fsys.leave()
	ch, errno := n.LoopbackNode.Link(ctx, target, name, out)
	if errno == 0 {
		n.fsys.pendingAttr(filepath.Join(n.backingPath(), name), &out.Attr)
	}
	return ch, errno
}

// Tmpfile is not supported: an O_TMPFILE file has no name to open it by
// again, and callers fall back to a named file.
func (n *node) Tmpfile(ctx context.Context, flags, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	return nil, nil, 0, syscall.EOPNOTSUPP
}

// The namespace changes below are the loopback's; after a power cut they
// fail like everything else.

func (n *node) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	if !n.fsys.enter() {
		return nil, syscall.EIO
	}
	defer n.fsys.leave()
	return n.LoopbackNode.Mkdir(ctx, name, mode, out)
}

func (n *node) Mknod(ctx context.Context, name string, mode, rdev uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	if !n.fsys.enter() {
		return nil, syscall.EIO
	}
	defer n.fsys.leave()
	return n.LoopbackNode.Mknod(ctx, name, mode, rdev, out)
}

func (n *node) Rmdir(ctx context.Context, name string) syscall.Errno {
	if !n.fsys.enter() {
		return syscall.EIO
	}
	defer n.fsys.leave()
	return n.LoopbackNode.Rmdir(ctx, name)
}

func (n *node) Symlink(ctx context.Context, target, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	if !n.fsys.enter() {
		return nil, syscall.EIO
	}
	defer n.fsys.leave()
	return n.LoopbackNode.Symlink(ctx, target, name, out)
}

func (n *node) Setxattr(ctx context.Context, attr string, data []byte, flags uint32) syscall.Errno {
	if !n.fsys.enter() {
		return syscall.EIO
	}
	defer n.fsys.leave()
	return n.LoopbackNode.Setxattr(ctx, attr, data, flags)
}

func (n *node) Removexattr(ctx context.Context, attr string) syscall.Errno {
	if !n.fsys.enter() {
		return syscall.EIO
	}
	defer n.fsys.leave()
	return n.LoopbackNode.Removexattr(ctx, attr)
}
