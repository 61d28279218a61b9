package fuse

import (
	"context"
	"errors"
	"math"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	gofuse "github.com/hanwen/go-fuse/v2/fuse"

	"github.com/meshfs/meshfs/mesh/meta"
)

// node is one inode of the tree: a directory, a regular file or a symlink.
// It holds no state of its own beyond the mount, because go-fuse may make
// several node values for one inode number and keeps only one: everything
// per-inode lives in the metadata store or in the mount's fileState.
type node struct {
	fs.Inode
	m *FS
}

var (
	_ = (fs.InodeEmbedder)((*node)(nil))
	_ = (fs.NodeLookuper)((*node)(nil))
	_ = (fs.NodeGetattrer)((*node)(nil))
	_ = (fs.NodeSetattrer)((*node)(nil))
	_ = (fs.NodeCreater)((*node)(nil))
	_ = (fs.NodeOpener)((*node)(nil))
	_ = (fs.NodeReader)((*node)(nil))
	_ = (fs.NodeWriter)((*node)(nil))
	_ = (fs.NodeFlusher)((*node)(nil))
	_ = (fs.NodeFsyncer)((*node)(nil))
	_ = (fs.NodeReleaser)((*node)(nil))
	_ = (fs.NodeUnlinker)((*node)(nil))
	_ = (fs.NodeMkdirer)((*node)(nil))
	_ = (fs.NodeRmdirer)((*node)(nil))
	_ = (fs.NodeRenamer)((*node)(nil))
	_ = (fs.NodeReaddirer)((*node)(nil))
	_ = (fs.NodeOpendirHandler)((*node)(nil))
	_ = (fs.NodeSymlinker)((*node)(nil))
	_ = (fs.NodeReadlinker)((*node)(nil))
	_ = (fs.NodeLinker)((*node)(nil))
	_ = (fs.NodeStatfser)((*node)(nil))
)

func (n *node) ino() meta.Ino { return meta.Ino(n.StableAttr().Ino) }

// inoOf returns the inode number of another node of this file system.
func inoOf(e fs.InodeEmbedder) meta.Ino {
	return meta.Ino(e.EmbeddedInode().StableAttr().Ino)
}

// checkName refuses names the metadata store would refuse, before any
// round trip to it.
func checkName(name string) syscall.Errno {
	if len(name) > meta.MaxNameLen {
		return syscall.ENAMETOOLONG
	}
	return 0
}

// caller returns the uid and gid of the process making the request, which
// own what it creates.
func caller(ctx context.Context) (uid, gid uint32) {
	if c, ok := gofuse.FromContext(ctx); ok {
		return c.Uid, c.Gid
	}
	return 0, 0
}

// child returns the tree node for an inode the metadata store described.
func (n *node) child(ctx context.Context, attr meta.Attr, out *gofuse.EntryOut) *fs.Inode {
	n.m.fillAttr(&out.Attr, attr)
	in := n.NewInode(ctx, &node{m: n.m}, fs.StableAttr{
		Mode: attr.Mode & syscall.S_IFMT,
		Ino:  uint64(attr.Ino),
	})
	n.m.kernel.made(attr.Ino, in)
	return in
}

// fillAttr converts attributes for the kernel. A file this mount holds
// unflushed data for reports its in-memory size, and the time of its last
// write as mtime and ctime (as write(2) must; the commit records that
// time). st_blocks counts the bytes held in blocks, so holes take no space
// (as du expects); unflushed slots count as whole blocks, at most the
// file's size, since what they replace is known only at the commit.
func (m *FS) fillAttr(out *gofuse.Attr, a meta.Attr) {
	size, stored := a.Size, a.Stored
	if a.Mode&syscall.S_IFMT == syscall.S_IFREG {
		if st := m.fileFor(a.Ino); st != nil {
			if local, mtime, unflushed, ok := st.localView(); ok {
				size = uint64(local)
				stored = min(size, stored+uint64(unflushed)*uint64(m.bs))
				// Times set by utimens were committed before any
				// data still here was written (Setattr flushes), so
				// the last write's time is the mtime, whatever the
				// committed one says.
				a.Mtime = mtime
				a.Ctime = max(a.Ctime, mtime)
			}
		}
	} else {
		stored = size
	}
	out.Ino = uint64(a.Ino)
	out.Size = size
	out.Blocks = (stored + 511) / 512
	out.Mode = a.Mode
	out.Nlink = a.Nlink
	out.Uid = a.Uid
	out.Gid = a.Gid
	out.Atime, out.Atimensec = splitNs(a.Atime)
	out.Mtime, out.Mtimensec = splitNs(a.Mtime)
	out.Ctime, out.Ctimensec = splitNs(a.Ctime)
	out.Blksize = uint32(m.bs)
}

func splitNs(ns int64) (uint64, uint32) {
	sec, nsec := ns/1e9, ns%1e9
	if nsec < 0 {
		sec, nsec = sec-1, nsec+1e9
	}
	return uint64(sec), uint32(nsec)
}

func (n *node) Lookup(ctx context.Context, name string, out *gofuse.EntryOut) (*fs.Inode, syscall.Errno) {
	if e := checkName(name); e != 0 {
		return nil, e
	}
	n.m.kernel.seen(n.ino(), n.EmbeddedInode())
	mctx, cancel := metaCtx(ctx)
	defer cancel()
	attr, err := n.m.meta.Lookup(mctx, n.ino(), name)
	if err != nil {
		return nil, n.m.errno("lookup", err, "parent", n.ino(), "name", name)
	}
	return n.child(ctx, attr, out), 0
}

func (n *node) Getattr(ctx context.Context, f fs.FileHandle, out *gofuse.AttrOut) syscall.Errno {
	n.m.kernel.seen(n.ino(), n.EmbeddedInode())
	st := n.m.fileFor(n.ino())
	var seq uint64
	if st != nil {
		seq = st.seqNow()
	}
	mctx, cancel := metaCtx(ctx)
	defer cancel()
	attr, err := n.m.meta.GetAttr(mctx, n.ino())
	switch {
	case errors.Is(err, syscall.ENOENT) && st != nil:
		// Open here, removed by another mount: as for a file unlinked
		// while open, fstat shows it with no links.
		attr = st.lastAttr()
	case err != nil:
		return n.m.errno("getattr", err, "ino", n.ino())
	case st != nil:
		st.refreshSize(seq, attr)
	}
	n.m.fillAttr(&out.Attr, attr)
	return 0
}

func (n *node) Setattr(ctx context.Context, f fs.FileHandle, in *gofuse.SetAttrIn, out *gofuse.AttrOut) syscall.Errno {
	m, ino := n.m, n.ino()
	var sa meta.SetAttrIn
	if mode, ok := in.GetMode(); ok {
		sa.Mode = &mode
	}
	if uid, ok := in.GetUID(); ok {
		sa.Uid = &uid
	}
	if gid, ok := in.GetGID(); ok {
		sa.Gid = &gid
	}
	size, hasSize := in.GetSize()
	if hasSize {
		sa.Size = &size
	}
	// go-fuse resolves UTIME_NOW to the current time; UTIME_OMIT leaves
	// the field unset.
	atime, hasAtime := in.GetATime()
	if hasAtime {
		ns := clampUnixNano(atime)
		sa.Atime = &ns
	}
	mtime, hasMtime := in.GetMTime()
	if hasMtime {
		ns := clampUnixNano(mtime)
		sa.Mtime = &ns
	}

	// Unflushed data is committed first: a truncation must cut the data
	// written before it, and a commit after utimens would overwrite the
	// mtime it set (cp -p, tar and rsync set times on open files).
	// flushMu is held to the end, so no commit of data past a new size
	// can slip in between the metadata change and the local one.
	var st *fileState
	if s := m.fileFor(ino); s != nil && (hasSize || hasAtime || hasMtime) {
		st = s
		st.flushMu.Lock()
		defer st.flushMu.Unlock()
		if err := st.flushLocked(ctx); err != nil {
			return m.errno("setattr: flush", err, "ino", ino)
		}
	}
	attr, errno := n.setattr(ctx, sa)
	if errno != 0 {
		return errno
	}
	if st != nil && hasSize {
		st.truncateLocked(int64(size))
	}
	m.fillAttr(&out.Attr, attr)
	return 0
}

// clampUnixNano is t in Unix nanoseconds, held to the years 1678 to 2262
// that an int64 of nanoseconds covers (ext4 clamps to its own range too).
func clampUnixNano(t time.Time) int64 {
	switch {
	case t.Before(time.Unix(0, math.MinInt64)):
		return math.MinInt64
	case t.After(time.Unix(0, math.MaxInt64)):
		return math.MaxInt64
	}
	return t.UnixNano()
}

// setattr applies sa. One that changes nothing still marks ctime, as
// chown(path, -1, -1) must.
func (n *node) setattr(ctx context.Context, sa meta.SetAttrIn) (meta.Attr, syscall.Errno) {
	mctx, cancel := metaCtx(ctx)
	defer cancel()
	attr, err := n.m.meta.SetAttr(mctx, n.ino(), sa)
	if err != nil {
		return attr, n.m.errno("setattr", err, "ino", n.ino())
	}
	return attr, 0
}

func (n *node) Create(ctx context.Context, name string, flags uint32, mode uint32, out *gofuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	if e := checkName(name); e != 0 {
		return nil, nil, 0, e
	}
	m := n.m
	uid, gid := caller(ctx)
	mctx, cancel := metaCtx(ctx)
	defer cancel()
	attr, err := m.meta.Create(mctx, n.ino(), name, mode&07777, uid, gid)
	if errors.Is(err, syscall.EEXIST) && flags&syscall.O_EXCL == 0 {
		// Another mount created the name since the kernel's lookup:
		// open(2) without O_EXCL opens the existing file.
		return n.openExisting(ctx, name, flags, out)
	}
	if err != nil {
		return nil, nil, 0, m.errno("create", err, "parent", n.ino(), "name", name)
	}
	return n.child(ctx, attr, out), m.openCreated(attr), 0, 0
}

// openExisting answers a create whose name turned out to exist.
func (n *node) openExisting(ctx context.Context, name string, flags uint32, out *gofuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	m := n.m
	mctx, cancel := metaCtx(ctx)
	defer cancel()
	attr, err := m.meta.Lookup(mctx, n.ino(), name)
	if err != nil {
		return nil, nil, 0, m.errno("create: lookup", err, "parent", n.ino(), "name", name)
	}
	ino := attr.Ino
	switch attr.Mode & syscall.S_IFMT {
	case syscall.S_IFREG:
	case syscall.S_IFDIR:
		return nil, nil, 0, syscall.EISDIR
	default:
		return nil, nil, 0, syscall.EEXIST
	}
	if flags&syscall.O_TRUNC != 0 {
		st := m.fileFor(ino)
		if st != nil {
			// Open here too: no commit of older data may land after
			// the truncation, and the local data goes with it.
			st.flushMu.Lock()
			defer st.flushMu.Unlock()
		}
		zero := uint64(0)
		if attr, err = m.meta.SetAttr(mctx, ino, meta.SetAttrIn{Size: &zero}); err != nil {
			return nil, nil, 0, m.errno("create: truncate", err, "ino", ino)
		}
		if st != nil {
			st.truncateLocked(0)
		}
	}
	h, err := m.openFile(ctx, ino, readsContent(flags))
	if err != nil {
		return nil, nil, 0, m.errno("create: open", err, "ino", ino)
	}
	return n.child(ctx, attr, out), h, 0, 0
}

// readsContent reports whether an open with flags may read the file's
// current content.
func readsContent(flags uint32) bool {
	return flags&syscall.O_ACCMODE != syscall.O_WRONLY && flags&syscall.O_TRUNC == 0
}

func (n *node) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	n.m.kernel.seen(n.ino(), n.EmbeddedInode())
	h, err := n.m.openFile(ctx, n.ino(), readsContent(flags))
	if err != nil {
		return nil, 0, n.m.errno("open", err, "ino", n.ino())
	}
	// No FOPEN_KEEP_CACHE: the kernel drops its cached pages at open, so
	// an open after another mount's close reads that mount's data.
	return h, 0, 0
}

func (n *node) Read(ctx context.Context, f fs.FileHandle, dest []byte, off int64) (gofuse.ReadResult, syscall.Errno) {
	h, ok := f.(*handle)
	if !ok {
		return nil, syscall.EBADF
	}
	nr, err := h.st.read(ctx, dest, off)
	if err != nil {
		return nil, n.m.errno("read", err, "ino", n.ino(), "off", off)
	}
	return gofuse.ReadResultData(dest[:nr]), 0
}

func (n *node) Write(ctx context.Context, f fs.FileHandle, data []byte, off int64) (uint32, syscall.Errno) {
	h, ok := f.(*handle)
	if !ok {
		return 0, syscall.EBADF
	}
	if err := h.st.write(ctx, data, off); err != nil {
		return 0, n.m.errno("write", err, "ino", n.ino(), "off", off)
	}
	return uint32(len(data)), 0
}

// Flush is close(2): the file's data is on the mesh and committed when it
// returns.
func (n *node) Flush(ctx context.Context, f fs.FileHandle) syscall.Errno {
	h, ok := f.(*handle)
	if !ok {
		return 0
	}
	if err := h.st.flush(ctx); err != nil {
		n.m.discardAfterFailedClose(ctx, h.st)
		return n.m.errno("flush", err, "ino", n.ino())
	}
	return 0
}

// Fsync is flush: blocks are durable on the nodes when Blocks.Write
// returns, and the metadata store makes each commit durable.
func (n *node) Fsync(ctx context.Context, f fs.FileHandle, flags uint32) syscall.Errno {
	st := n.m.fileFor(n.ino())
	if h, ok := f.(*handle); ok {
		st = h.st
	}
	if st == nil {
		return 0 // a directory, or a file with nothing unflushed here
	}
	if err := st.flush(ctx); err != nil {
		return n.m.errno("fsync", err, "ino", n.ino())
	}
	return 0
}

func (n *node) Release(ctx context.Context, f fs.FileHandle) syscall.Errno {
	if h, ok := f.(*handle); ok {
		n.m.releaseFile(h.st)
	}
	return 0
}

func (n *node) Readdir(ctx context.Context) (fs.DirStream, syscall.Errno) {
	n.m.kernel.seen(n.ino(), n.EmbeddedInode())
	mctx, cancel := metaCtx(ctx)
	defer cancel()
	entries, err := n.m.meta.ReadDir(mctx, n.ino())
	if err != nil {
		return nil, n.m.errno("readdir", err, "ino", n.ino())
	}
	list := make([]gofuse.DirEntry, len(entries))
	for i, e := range entries {
		list[i] = gofuse.DirEntry{Name: e.Name, Ino: uint64(e.Ino), Mode: e.Mode & syscall.S_IFMT}
	}
	return fs.NewListDirStream(list), 0
}

func (n *node) Mkdir(ctx context.Context, name string, mode uint32, out *gofuse.EntryOut) (*fs.Inode, syscall.Errno) {
	if e := checkName(name); e != 0 {
		return nil, e
	}
	uid, gid := caller(ctx)
	mctx, cancel := metaCtx(ctx)
	defer cancel()
	attr, err := n.m.meta.Mkdir(mctx, n.ino(), name, mode&07777, uid, gid)
	if err != nil {
		return nil, n.m.errno("mkdir", err, "parent", n.ino(), "name", name)
	}
	return n.child(ctx, attr, out), 0
}

func (n *node) Symlink(ctx context.Context, target, name string, out *gofuse.EntryOut) (*fs.Inode, syscall.Errno) {
	if e := checkName(name); e != 0 {
		return nil, e
	}
	uid, gid := caller(ctx)
	mctx, cancel := metaCtx(ctx)
	defer cancel()
	attr, err := n.m.meta.Symlink(mctx, n.ino(), name, target, uid, gid)
	if err != nil {
		return nil, n.m.errno("symlink", err, "parent", n.ino(), "name", name)
	}
	return n.child(ctx, attr, out), 0
}

func (n *node) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	mctx, cancel := metaCtx(ctx)
	defer cancel()
	attr, err := n.m.meta.GetAttr(mctx, n.ino())
	if err != nil {
		return nil, n.m.errno("readlink", err, "ino", n.ino())
	}
	if attr.Mode&syscall.S_IFMT != syscall.S_IFLNK {
		return nil, syscall.EINVAL
	}
	return []byte(attr.Target), 0
}

func (n *node) Link(ctx context.Context, target fs.InodeEmbedder, name string, out *gofuse.EntryOut) (*fs.Inode, syscall.Errno) {
	if e := checkName(name); e != 0 {
		return nil, e
	}
	mctx, cancel := metaCtx(ctx)
	defer cancel()
	attr, err := n.m.meta.Link(mctx, inoOf(target), n.ino(), name)
	if err != nil {
		return nil, n.m.errno("link", err, "ino", inoOf(target), "parent", n.ino(), "name", name)
	}
	return n.child(ctx, attr, out), 0
}

func (n *node) Unlink(ctx context.Context, name string) syscall.Errno {
	if e := checkName(name); e != 0 {
		return e
	}
	mctx, cancel := metaCtx(ctx)
	defer cancel()
	attr, err := n.m.meta.Unlink(mctx, n.ino(), name)
	if err != nil {
		return n.m.errno("unlink", err, "parent", n.ino(), "name", name)
	}
	n.m.unlinked(ctx, attr)
	return 0
}

func (n *node) Rmdir(ctx context.Context, name string) syscall.Errno {
	if e := checkName(name); e != 0 {
		return e
	}
	mctx, cancel := metaCtx(ctx)
	defer cancel()
	attr, err := n.m.meta.Rmdir(mctx, n.ino(), name)
	if err != nil {
		return n.m.errno("rmdir", err, "parent", n.ino(), "name", name)
	}
	n.m.unlinked(ctx, attr)
	return 0
}

func (n *node) Rename(ctx context.Context, name string, newParent fs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	if e := checkName(name); e != 0 {
		return e
	}
	if e := checkName(newName); e != 0 {
		return e
	}
	if flags&fs.RENAME_EXCHANGE != 0 {
		// The metadata store has no atomic exchange.
		return syscall.EINVAL
	}
	mctx, cancel := metaCtx(ctx)
	defer cancel()
	replaced, ok, err := n.m.meta.Rename(mctx, n.ino(), name, inoOf(newParent), newName, flags)
	if err != nil {
		return n.m.errno("rename", err, "parent", n.ino(), "name", name, "newParent", inoOf(newParent), "newName", newName)
	}
	if ok {
		n.m.unlinked(ctx, replaced)
	}
	return 0
}

func (n *node) Statfs(ctx context.Context, out *gofuse.StatfsOut) syscall.Errno {
	const unit = 4096
	out.Bsize, out.Frsize = unit, unit
	out.NameLen = meta.MaxNameLen
	// Inode numbers are never reused and not a limited resource.
	out.Files, out.Ffree = 1<<40, 1<<40
	if n.m.statfs == nil {
		return 0
	}
	mctx, cancel := metaCtx(ctx)
	defer cancel()
	total, free, err := n.m.statfs(mctx)
	if err != nil {
		return n.m.errno("statfs", err)
	}
	out.Blocks = total / unit
	out.Bfree = free / unit
	out.Bavail = free / unit
	return 0
}
