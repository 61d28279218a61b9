// Package meta is meshfs's file-system metadata: the tree, attributes,
// extended attributes and the map from files to blocks, kept in a NATS
// JetStream key-value bucket.
//
// Every operation is atomic: the keys it changes are written as one JetStream
// atomic batch (the stream's AllowAtomicPublish), each message carrying the
// revision of the key that the operation read (Nats-Expected-Last-Subject-
// Sequence), so a concurrent change to any of them rejects the whole batch and
// the operation is retried from a fresh read. A crash half-way leaves either
// all of an operation or none of it.
//
// Errors that a file system returns to its caller are syscall.Errno values
// (ENOENT, EEXIST, ENOTEMPTY, ENOTDIR, EISDIR, EINVAL, ENAMETOOLONG, ENODATA),
// possibly wrapped; anything else is a failure of the store itself.
package meta

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/meshfs/meshfs/persist"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Ino is an inode number. Inode numbers are never reused.
type Ino uint64

// RootIno is the root directory's inode, created by the first Open.
const RootIno Ino = 1

// MaxNameLen is the longest file name, in bytes (ENAMETOOLONG past it).
const MaxNameLen = 255

// Attr is an inode's attributes.
type Attr struct {
	Ino  Ino    `json:"ino"`
	Mode uint32 `json:"mode"` // file type bits (syscall.S_IFREG, S_IFDIR, S_IFLNK) | permission bits
	Uid  uint32 `json:"uid"`
	Gid  uint32 `json:"gid"`
	Size uint64 `json:"size"` // regular file: bytes; symlink: len(Target); dir: 0
	// Stored is the bytes of a regular file held in blocks (holes excluded),
	// what st_blocks reports.
	Stored uint64 `json:"stored,omitempty"`
	Nlink  uint32 `json:"nlink"`
	Atime  int64  `json:"atime"` // Unix nanoseconds
	Mtime  int64  `json:"mtime"`
	Ctime  int64  `json:"ctime"`
	// Target is a symlink's target.
	Target string `json:"target,omitempty"`
}

// IsDir reports whether the inode is a directory.
func (a Attr) IsDir() bool { return a.Mode&syscall.S_IFMT == syscall.S_IFDIR }

// DirEntry is one name in a directory.
type DirEntry struct {
	Name string `json:"name"`
	Ino  Ino    `json:"ino"`
	Mode uint32 `json:"mode"` // file type bits only
}

// BlockRef says which block holds one block-sized slot of a file. Slot i of a
// file covers bytes [i*BlockSize, (i+1)*BlockSize). The slot's bytes are the
// first Len bytes of the block; bytes of the slot past Len (up to the file
// size) read as zeros, and so does a slot with no BlockRef (a hole).
type BlockRef struct {
	ID  persist.BlockID `json:"id"`
	Len uint32          `json:"len"`
}

// SetAttrIn carries the attributes to change; nil fields are left alone.
type SetAttrIn struct {
	Mode  *uint32 // permission bits only; the type bits are kept
	Uid   *uint32
	Gid   *uint32
	Size  *uint64 // truncate or extend; slots past the new size are dropped and the last slot's Len clamped
	Atime *int64
	Mtime *int64
}

// Options configure a Store.
type Options struct {
	// Bucket is the KV bucket's name; default "meshfs_meta".
	Bucket string
	// Replicas is the bucket's replica count when Open creates it; default 1.
	Replicas int
	// PlacementTags, when Open creates the bucket, restrict its replicas to
	// servers that have all these tags.
	PlacementTags []string
	// BlockSize is the cluster block size; it defines slot geometry.
	BlockSize int
	// OpTimeout bounds each metadata call that has no earlier deadline of
	// its own; default 5 s.
	OpTimeout time.Duration
	// MustExist makes Open fail with ErrNoFileSystem instead of creating
	// the bucket or the root directory. A block collector opens this way:
	// marking against a freshly created, empty file system would condemn
	// every block.
	MustExist bool
}

// ErrNoFileSystem is returned by Open with MustExist when the bucket or its
// root directory does not exist.
var ErrNoFileSystem = errors.New("no meshfs file system in this metadata store")

// Store is the metadata of one file system. It is safe for concurrent use by
// many goroutines, and several Stores (one per mount) may share one bucket.
type Store struct {
	nc    *nats.Conn
	kv    jetstream.KeyValue
	opts  Options
	alloc allocator
	locks *inoLocks

	subjPrefix string // "$KV.<bucket>."
	stream     string // "KV_<bucket>"
	origin     string // written with every change, see Watch
	msgGetSubj string // the stream's message-get API subject (answered by the leader)
	// attemptTimeout bounds one request, so that a lost one is retried
	// within the operation's deadline.
	attemptTimeout time.Duration
	// maxBatch is the most keys one atomic batch may hold (a variable so
	// that tests can exercise the multi-batch paths).
	maxBatch int

	closed atomic.Bool
}

// Flags of Rename and SetXattr, as in Linux.
const (
	renameNoReplace = 1 // RENAME_NOREPLACE
	xattrCreate     = 1 // XATTR_CREATE
	xattrReplace    = 2 // XATTR_REPLACE
)

var errClosed = errors.New("metadata store closed")

// opCtx gives a call the store's OpTimeout unless it has a deadline already.
func (s *Store) opCtx(ctx context.Context) (context.Context, context.CancelFunc, error) {
	if s.closed.Load() {
		return nil, nil, errClosed
	}
	if _, ok := ctx.Deadline(); ok {
		ctx, cancel := context.WithCancel(ctx)
		return ctx, cancel, nil
	}
	ctx, cancel := context.WithTimeout(ctx, s.opts.OpTimeout)
	return ctx, cancel, nil
}

// Open binds to the bucket, creating it (with AllowAtomicPublish on its
// stream) and the root directory (mode 0755|S_IFDIR, owned by root) if they
// do not exist yet.
func Open(ctx context.Context, nc *nats.Conn, opts Options) (*Store, error) {
	return openStore(ctx, nc, opts)
}

// Close releases the store's resources (not the connection).
func (s *Store) Close() error {
	s.closed.Store(true)
	return nil
}

// GetAttr returns the inode's attributes (ENOENT if it does not exist).
func (s *Store) GetAttr(ctx context.Context, ino Ino) (Attr, error) {
	ctx, cancel, err := s.opCtx(ctx)
	if err != nil {
		return Attr{}, err
	}
	defer cancel()
	a, err := s.getAttr(ctx, ino)
	if err != nil {
		return Attr{}, fmt.Errorf("getattr %d: %w", ino, err)
	}
	return a, nil
}

// Lookup returns the attributes of the inode that name in parent points at.
func (s *Store) Lookup(ctx context.Context, parent Ino, name string) (Attr, error) {
	ctx, cancel, err := s.opCtx(ctx)
	if err != nil {
		return Attr{}, err
	}
	defer cancel()
	a, err := s.lookup(ctx, parent, name)
	if err != nil {
		return Attr{}, fmt.Errorf("lookup %q in %d: %w", name, parent, err)
	}
	return a, nil
}

// ReadDir lists parent's entries (without "." and ".."), sorted by name.
func (s *Store) ReadDir(ctx context.Context, parent Ino) ([]DirEntry, error) {
	ctx, cancel, err := s.opCtx(ctx)
	if err != nil {
		return nil, err
	}
	defer cancel()
	ents, err := s.readDir(ctx, parent)
	if err != nil {
		return nil, fmt.Errorf("readdir %d: %w", parent, err)
	}
	return ents, nil
}

// Create makes a regular file (mode's permission bits | S_IFREG); EEXIST if
// name is taken.
func (s *Store) Create(ctx context.Context, parent Ino, name string, mode, uid, gid uint32) (Attr, error) {
	ctx, cancel, err := s.opCtx(ctx)
	if err != nil {
		return Attr{}, err
	}
	defer cancel()
	a, err := s.mknod(ctx, parent, name, inodeRec{Mode: syscall.S_IFREG | mode&0o7777, Uid: uid, Gid: gid, Nlink: 1})
	if err != nil {
		return Attr{}, fmt.Errorf("create %q in %d: %w", name, parent, err)
	}
	return a, nil
}

// Mkdir makes a directory; EEXIST if name is taken. The parent's nlink grows by one.
func (s *Store) Mkdir(ctx context.Context, parent Ino, name string, mode, uid, gid uint32) (Attr, error) {
	ctx, cancel, err := s.opCtx(ctx)
	if err != nil {
		return Attr{}, err
	}
	defer cancel()
	a, err := s.mknod(ctx, parent, name, inodeRec{Mode: syscall.S_IFDIR | mode&0o7777, Uid: uid, Gid: gid, Nlink: 2})
	if err != nil {
		return Attr{}, fmt.Errorf("mkdir %q in %d: %w", name, parent, err)
	}
	return a, nil
}

// Symlink makes a symbolic link to target (mode 0777|S_IFLNK).
func (s *Store) Symlink(ctx context.Context, parent Ino, name, target string, uid, gid uint32) (Attr, error) {
	ctx, cancel, err := s.opCtx(ctx)
	if err != nil {
		return Attr{}, err
	}
	defer cancel()
	if target == "" || len(target) > maxSymlinkLen {
		return Attr{}, fmt.Errorf("symlink %q in %d: target of %d bytes: %w", name, parent, len(target), errSymlinkTarget(target))
	}
	a, err := s.mknod(ctx, parent, name, inodeRec{
		Mode: syscall.S_IFLNK | 0o777, Uid: uid, Gid: gid, Nlink: 1,
		Size: uint64(len(target)), Target: []byte(target),
	})
	if err != nil {
		return Attr{}, fmt.Errorf("symlink %q in %d: %w", name, parent, err)
	}
	return a, nil
}

// Link adds the name newName in newParent for the existing non-directory ino
// (EPERM for a directory), raising its nlink.
func (s *Store) Link(ctx context.Context, ino, newParent Ino, newName string) (Attr, error) {
	ctx, cancel, err := s.opCtx(ctx)
	if err != nil {
		return Attr{}, err
	}
	defer cancel()
	a, err := s.link(ctx, ino, newParent, newName)
	if err != nil {
		return Attr{}, fmt.Errorf("link %d as %q in %d: %w", ino, newName, newParent, err)
	}
	return a, nil
}

// Unlink removes a non-directory name (EISDIR for a directory) and lowers
// the inode's nlink. An inode whose nlink reaches 0 keeps its attributes and
// blocks until Reclaim, so open handles keep working; the returned Attr is
// the inode after the unlink.
func (s *Store) Unlink(ctx context.Context, parent Ino, name string) (Attr, error) {
	ctx, cancel, err := s.opCtx(ctx)
	if err != nil {
		return Attr{}, err
	}
	defer cancel()
	a, err := s.unlink(ctx, parent, name)
	if err != nil {
		return Attr{}, fmt.Errorf("unlink %q in %d: %w", name, parent, err)
	}
	return a, nil
}

// Rmdir removes an empty directory (ENOTEMPTY, ENOTDIR) and returns its
// attributes, at nlink 0: its inode stays, empty, for handles open on it,
// until the caller Reclaims it (see Unlink).
func (s *Store) Rmdir(ctx context.Context, parent Ino, name string) (Attr, error) {
	ctx, cancel, err := s.opCtx(ctx)
	if err != nil {
		return Attr{}, err
	}
	defer cancel()
	attr, err := s.rmdir(ctx, parent, name)
	if err != nil {
		return Attr{}, fmt.Errorf("rmdir %q in %d: %w", name, parent, err)
	}
	return attr, nil
}

// Rename moves oldName in oldParent to newName in newParent in one atomic
// step. An existing target is replaced (a file by a non-directory, an empty
// directory by a directory; else EISDIR, ENOTDIR or ENOTEMPTY) and the
// replaced inode is unlinked as by Unlink (returned, with ok true, so the
// caller can Reclaim it). Moving a directory into its own subtree is EINVAL.
// flags may hold RENAME_NOREPLACE (EEXIST if the target exists).
func (s *Store) Rename(ctx context.Context, oldParent Ino, oldName string, newParent Ino, newName string, flags uint32) (replaced Attr, ok bool, err error) {
	ctx, cancel, err := s.opCtx(ctx)
	if err != nil {
		return Attr{}, false, err
	}
	defer cancel()
	replaced, ok, err = s.rename(ctx, oldParent, oldName, newParent, newName, flags)
	if err != nil {
		return Attr{}, false, fmt.Errorf("rename %q in %d to %q in %d: %w", oldName, oldParent, newName, newParent, err)
	}
	return replaced, ok, nil
}

// Reclaim deletes an inode whose nlink is 0, with its block map and xattrs.
// It is a no-op for an inode that still has links or is already gone.
func (s *Store) Reclaim(ctx context.Context, ino Ino) error {
	ctx, cancel, err := s.opCtx(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	if err := s.reclaim(ctx, ino); err != nil {
		return fmt.Errorf("reclaim %d: %w", ino, err)
	}
	return nil
}

// SetAttr changes attributes and returns the result; ctime is set to now.
func (s *Store) SetAttr(ctx context.Context, ino Ino, in SetAttrIn) (Attr, error) {
	ctx, cancel, err := s.opCtx(ctx)
	if err != nil {
		return Attr{}, err
	}
	defer cancel()
	a, err := s.setAttr(ctx, ino, in)
	if err != nil {
		return Attr{}, fmt.Errorf("setattr %d: %w", ino, err)
	}
	return a, nil
}

// Blocks returns the BlockRefs of slots [first, last] of a regular file that
// are not holes, keyed by slot index.
func (s *Store) Blocks(ctx context.Context, ino Ino, first, last int64) (map[int64]BlockRef, error) {
	ctx, cancel, err := s.opCtx(ctx)
	if err != nil {
		return nil, err
	}
	defer cancel()
	m, err := s.blocks(ctx, ino, first, last)
	if err != nil {
		return nil, fmt.Errorf("blocks %d [%d, %d]: %w", ino, first, last, err)
	}
	return m, nil
}

// CommitWrite atomically records new BlockRefs for the given slots and sets
// the file size to max(current size, minSize), mtime and ctime to mtime. It is
// the commit of a write: the blocks must already be stored. A slot whose
// BlockRef has a zero ID becomes a hole.
func (s *Store) CommitWrite(ctx context.Context, ino Ino, slots map[int64]BlockRef, minSize uint64, mtime int64) (Attr, error) {
	ctx, cancel, err := s.opCtx(ctx)
	if err != nil {
		return Attr{}, err
	}
	defer cancel()
	a, err := s.commitWrite(ctx, ino, slots, minSize, mtime)
	if err != nil {
		return Attr{}, fmt.Errorf("commit write of %d slots to %d: %w", len(slots), ino, err)
	}
	return a, nil
}

// scanTimeout bounds ReferencedBlocks when its caller gives no deadline: it
// reads the whole block map, which OpTimeout (meant for one operation on a
// few keys) would cut short on a large file system.
const scanTimeout = 5 * time.Minute

// ReferencedBlocks calls fn with the id of every block that a file's block
// map references, an id once per slot that holds it (so possibly more than
// once), in no particular order. It stops at fn's first error and returns it
// as is. fn runs while the scan is in flight and should be quick, such as
// adding the id to a set.
//
// It is the mark phase of the block garbage collector. Files whose nlink is
// 0 but that are not reclaimed yet (still open somewhere) keep their blocks
// and are included; reclaimed files and slots cut off by truncation are not.
// An error decoding any block-map record fails the whole call, since a
// collector that sweeps after a partial mark would delete live blocks.
//
// The scan is not a snapshot: it reads each key's latest value as of the
// start of the scan, and references committed while it runs or after it may
// be missed. The collector relies on its grace period for those: a write puts
// its blocks (which refreshes their put time) before it commits the block map
// that references them, so blocks put within the grace period before the
// sweep are never deleted. A commit that references a block without putting
// it within that period is not protected.
//
// Without a deadline on ctx the call gets one of 5 minutes, not OpTimeout.
func (s *Store) ReferencedBlocks(ctx context.Context, fn func(id persist.BlockID) error) error {
	if s.closed.Load() {
		return errClosed
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, scanTimeout)
		defer cancel()
	}
	return s.referencedBlocks(ctx, fn)
}

// GetXattr returns the value of an extended attribute (ENODATA if unset).
func (s *Store) GetXattr(ctx context.Context, ino Ino, name string) ([]byte, error) {
	ctx, cancel, err := s.opCtx(ctx)
	if err != nil {
		return nil, err
	}
	defer cancel()
	v, err := s.getXattr(ctx, ino, name)
	if err != nil {
		return nil, fmt.Errorf("getxattr %q of %d: %w", name, ino, err)
	}
	return v, nil
}

// ListXattr returns the names of the inode's extended attributes, sorted.
func (s *Store) ListXattr(ctx context.Context, ino Ino) ([]string, error) {
	ctx, cancel, err := s.opCtx(ctx)
	if err != nil {
		return nil, err
	}
	defer cancel()
	names, err := s.listXattr(ctx, ino)
	if err != nil {
		return nil, fmt.Errorf("listxattr of %d: %w", ino, err)
	}
	return names, nil
}

// SetXattr sets an extended attribute. flags may hold XATTR_CREATE (EEXIST if
// set) or XATTR_REPLACE (ENODATA if unset).
func (s *Store) SetXattr(ctx context.Context, ino Ino, name string, value []byte, flags uint32) error {
	ctx, cancel, err := s.opCtx(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	if err := s.setXattr(ctx, ino, name, value, flags); err != nil {
		return fmt.Errorf("setxattr %q of %d: %w", name, ino, err)
	}
	return nil
}

// RemoveXattr removes an extended attribute (ENODATA if unset).
func (s *Store) RemoveXattr(ctx context.Context, ino Ino, name string) error {
	ctx, cancel, err := s.opCtx(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	if err := s.removeXattr(ctx, ino, name); err != nil {
		return fmt.Errorf("removexattr %q of %d: %w", name, ino, err)
	}
	return nil
}
