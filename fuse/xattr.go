package fuse

import (
	"context"
	"strings"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
)

var (
	_ = (fs.NodeGetxattrer)((*node)(nil))
	_ = (fs.NodeSetxattrer)((*node)(nil))
	_ = (fs.NodeListxattrer)((*node)(nil))
	_ = (fs.NodeRemovexattrer)((*node)(nil))
)

// checkXattrName refuses what a local file system refuses before looking:
// a name outside the known namespaces (EOPNOTSUPP) and a namespace with
// nothing after it (EINVAL).
func checkXattrName(name string) syscall.Errno {
	for _, ns := range []string{"user.", "trusted.", "security.", "system."} {
		if rest, ok := strings.CutPrefix(name, ns); ok {
			if rest == "" {
				return syscall.EINVAL
			}
			return 0
		}
	}
	return syscall.EOPNOTSUPP
}

// Getxattr follows getxattr(2)'s size protocol: a dest too small for the
// value (size 0 is the caller asking for the size) gets ERANGE and the size
// it needs; go-fuse turns that into a plain size answer for a 0-byte dest.
func (n *node) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	if e := checkXattrName(attr); e != 0 {
		return 0, e
	}
	mctx, cancel := metaCtx(ctx)
	defer cancel()
	val, err := n.m.meta.GetXattr(mctx, n.ino(), attr)
	if err != nil {
		return 0, n.m.errno("getxattr", err, "ino", n.ino(), "name", attr)
	}
	if len(dest) < len(val) {
		return uint32(len(val)), syscall.ERANGE
	}
	return uint32(copy(dest, val)), 0
}

func (n *node) Setxattr(ctx context.Context, attr string, data []byte, flags uint32) syscall.Errno {
	if e := checkXattrName(attr); e != 0 {
		return e
	}
	mctx, cancel := metaCtx(ctx)
	defer cancel()
	// data belongs to go-fuse's request buffer and is reused after we
	// return; the store may keep what it is given.
	val := append([]byte(nil), data...)
	if err := n.m.meta.SetXattr(mctx, n.ino(), attr, val, flags); err != nil {
		return n.m.errno("setxattr", err, "ino", n.ino(), "name", attr)
	}
	return 0
}

// Listxattr returns the names, each followed by a NUL, with the same size
// protocol as Getxattr.
func (n *node) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	mctx, cancel := metaCtx(ctx)
	defer cancel()
	names, err := n.m.meta.ListXattr(mctx, n.ino())
	if err != nil {
		return 0, n.m.errno("listxattr", err, "ino", n.ino())
	}
	size := 0
	for _, name := range names {
		size += len(name) + 1
	}
	if len(dest) < size {
		return uint32(size), syscall.ERANGE
	}
	off := 0
	for _, name := range names {
		off += copy(dest[off:], name)
		dest[off] = 0
		off++
	}
	return uint32(size), 0
}

func (n *node) Removexattr(ctx context.Context, attr string) syscall.Errno {
	if e := checkXattrName(attr); e != 0 {
		return e
	}
	mctx, cancel := metaCtx(ctx)
	defer cancel()
	if err := n.m.meta.RemoveXattr(mctx, n.ino(), attr); err != nil {
		return n.m.errno("removexattr", err, "ino", n.ino(), "name", attr)
	}
	return 0
}
