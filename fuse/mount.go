package fuse

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	gofuse "github.com/hanwen/go-fuse/v2/fuse"

	"github.com/meshfs/meshfs/mesh/meta"
	"github.com/meshfs/meshfs/persist"
)

// Metadata is the part of the metadata store a mount uses; *meta.Store
// implements it. It must be safe for concurrent use. Errors the file system
// should return to its caller are syscall.Errno values (possibly wrapped);
// any other error is treated as a failure of the store and reported as EIO.
type Metadata interface {
	GetAttr(ctx context.Context, ino meta.Ino) (meta.Attr, error)
	Lookup(ctx context.Context, parent meta.Ino, name string) (meta.Attr, error)
	ReadDir(ctx context.Context, parent meta.Ino) ([]meta.DirEntry, error)
	Create(ctx context.Context, parent meta.Ino, name string, mode, uid, gid uint32) (meta.Attr, error)
	Mkdir(ctx context.Context, parent meta.Ino, name string, mode, uid, gid uint32) (meta.Attr, error)
	Symlink(ctx context.Context, parent meta.Ino, name, target string, uid, gid uint32) (meta.Attr, error)
	Link(ctx context.Context, ino, newParent meta.Ino, newName string) (meta.Attr, error)
	Unlink(ctx context.Context, parent meta.Ino, name string) (meta.Attr, error)
	Rmdir(ctx context.Context, parent meta.Ino, name string) (meta.Attr, error)
	Rename(ctx context.Context, oldParent meta.Ino, oldName string, newParent meta.Ino, newName string, flags uint32) (replaced meta.Attr, ok bool, err error)
	Reclaim(ctx context.Context, ino meta.Ino) error
	SetAttr(ctx context.Context, ino meta.Ino, in meta.SetAttrIn) (meta.Attr, error)
	Blocks(ctx context.Context, ino meta.Ino, first, last int64) (map[int64]meta.BlockRef, error)
	CommitWrite(ctx context.Context, ino meta.Ino, slots map[int64]meta.BlockRef, minSize uint64, mtime int64) (meta.Attr, error)
	GetXattr(ctx context.Context, ino meta.Ino, name string) ([]byte, error)
	ListXattr(ctx context.Context, ino meta.Ino) ([]string, error)
	SetXattr(ctx context.Context, ino meta.Ino, name string, value []byte, flags uint32) error
	RemoveXattr(ctx context.Context, ino meta.Ino, name string) error
}

// Blocks stores and fetches content-addressed blocks on the mesh;
// *blocknet.Replicator implements it. It must be safe for concurrent use.
// Write returns only once the block is durably held (the mount commits
// metadata pointing at it right after), and Read returns content whose hash
// is id. The mount never modifies a slice it passed to Write or got from Read.
type Blocks interface {
	Write(ctx context.Context, data []byte) (persist.BlockID, error)
	Read(ctx context.Context, id persist.BlockID) ([]byte, error)
}

// Options configure a mount.
type Options struct {
	Meta   Metadata
	Blocks Blocks
	// BlockSize is the cluster block size: slot i of a file holds the bytes
	// [i*BlockSize, (i+1)*BlockSize). It must match the metadata store's.
	BlockSize int
	// StatFS reports the mesh's capacity for statfs(2); nil reports 0.
	StatFS func(ctx context.Context) (total, free uint64, err error)
	// WriteBuffer bounds the bytes a mount holds in dirty and uploading
	// buffers; default 256 MiB. A full buffer makes write wait, never drop.
	WriteBuffer int64
	// Uploads is how many blocks are uploaded in parallel; default 8.
	Uploads int
	// EntryTimeout and AttrTimeout are the kernel's cache timeouts for
	// names and attributes; zero means 1 s, a negative value disables the cache.
	EntryTimeout, AttrTimeout time.Duration
	// Feed, when set, is followed to invalidate the kernel's caches of
	// names, attributes and content that other mounts change, so that
	// long cache timeouts stay fresh. Without it, other mounts' changes
	// show once the kernel's cache times out.
	Feed ChangeFeed
	// TouchInterval is how often the blocks uploaded for writes not yet
	// committed are touched on the nodes (when Blocks can Touch), so their
	// collectors, whose grace period must be longer, never take them from
	// a file held open for long; default 10 min.
	TouchInterval time.Duration
	// AllowOther lets users other than the one who mounted use the mount
	// (the kernel checks permissions, as default_permissions is always
	// on). As a user other than root it needs user_allow_other in
	// /etc/fuse.conf.
	AllowOther bool
	// Debug logs every FUSE request (at Info level, through Logger).
	Debug  bool
	Logger *slog.Logger
}

const (
	defaultWriteBuffer = 256 << 20
	defaultUploads     = 8
	// blockTimeout bounds one block upload or download.
	blockTimeout = 30 * time.Second
	// metaTimeout is an outer bound for one metadata call; the store
	// applies its own, shorter, per-call deadline inside it.
	metaTimeout = 30 * time.Second
	// readCacheBlocks is how many recently read blocks a mount keeps: the
	// kernel reads in pieces of at most 1 MiB, so without it every piece
	// of a 4 MiB block would fetch the whole block again.
	readCacheBlocks = 16
	// readAheadSlots is how many slots past a sequential read are fetched
	// ahead. Together with maxPrefetches it bounds read-ahead memory to a
	// few blocks, well inside the read cache, so a prefetched block is not
	// evicted before it is read.
	readAheadSlots = 4
	// maxPrefetches bounds concurrent read-ahead fetches per mount.
	maxPrefetches = 4
	// feedStartTimeout bounds how long Mount waits for the change feed.
	feedStartTimeout = 10 * time.Second
	// releaseFlushTimeout bounds the commit, at a file's last release, of
	// data written after its last close (see flushAtRelease).
	releaseFlushTimeout = time.Minute
)

// FS is one mounted meshfs file system. (Not named Mount: that is the
// function that makes one.)
type FS struct {
	mountpoint string
	meta       Metadata
	blocks     Blocks
	bs         int64
	statfs     func(ctx context.Context) (total, free uint64, err error)
	log        *slog.Logger
	server     *gofuse.Server
	root       *node

	// ctx is cancelled at unmount; background uploads and prefetches use it.
	ctx    context.Context
	cancel context.CancelFunc
	// bg counts background goroutines (uploads, prefetches); unmount waits.
	bg       sync.WaitGroup
	served   chan struct{} // closed when the serve loop has returned
	stopOnce sync.Once

	buf        *budget
	uploadSem  chan struct{}
	uploadFail atomic.Int64 // failed uploads, mount-wide, for writers waiting on a full buffer
	cache      *blockCache

	filesMu sync.Mutex
	files   map[meta.Ino]*fileState // open regular files, by inode
	dirs    map[meta.Ino]*openDir   // open directories, by inode

	kernel  kernelInodes // nodes the kernel knows, for invalidations
	changes atomic.Int64 // change feed events seen

	// beforeCommit, if set, is called by a flush after its uploads have
	// landed and before it commits: a test hook, to let writes race the
	// commit deterministically. Atomic because tests set it while the
	// mount serves requests.
	beforeCommit atomic.Pointer[func(ino meta.Ino)]
}

// Mount mounts the file system at mountpoint and serves it until Unmount
// or an external umount.
func Mount(mountpoint string, opts Options) (*FS, error) {
	if opts.Meta == nil || opts.Blocks == nil {
		return nil, errors.New("meshfs mount: Options.Meta and Options.Blocks are required")
	}
	if opts.BlockSize <= 0 {
		return nil, fmt.Errorf("meshfs mount: invalid block size %d", opts.BlockSize)
	}
	abs, err := checkMountpoint(mountpoint)
	if err != nil {
		return nil, err
	}
	if opts.WriteBuffer <= 0 {
		opts.WriteBuffer = defaultWriteBuffer
	}
	if opts.Uploads <= 0 {
		opts.Uploads = defaultUploads
	}
	if opts.TouchInterval <= 0 {
		opts.TouchInterval = 10 * time.Minute
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.Default()
	}
	logger = logger.With("mountpoint", abs)

	ctx, cancel := context.WithCancel(context.Background())
	m := &FS{
		mountpoint: abs,
		meta:       opts.Meta,
		blocks:     opts.Blocks,
		bs:         int64(opts.BlockSize),
		statfs:     opts.StatFS,
		log:        logger,
		ctx:        ctx,
		cancel:     cancel,
		served:     make(chan struct{}),
		buf:        newBudget(opts.WriteBuffer),
		uploadSem:  make(chan struct{}, opts.Uploads),
		files:      make(map[meta.Ino]*fileState),
		dirs:       make(map[meta.Ino]*openDir),
		kernel:     kernelInodes{m: make(map[meta.Ino]*fs.Inode)},
	}
	m.cache = newBlockCache(readCacheBlocks, maxPrefetches)
	if t, ok := opts.Blocks.(blockToucher); ok {
		m.bg.Add(1)
		go m.touchPending(t, opts.TouchInterval)
	}

	entry, attr := cacheTimeout(opts.EntryTimeout), cacheTimeout(opts.AttrTimeout)
	root := &node{m: m}
	m.root = root
	fsOpts := &fs.Options{
		MountOptions: gofuse.MountOptions{
			DirectMount: true,
			// Larger requests mean fewer round trips into the mount for
			// big sequential reads and writes; go-fuse caps it at the
			// kernel's limit.
			MaxWrite: 1 << 20,
			FsName:   "meshfs",
			Name:     "meshfs",
			// With READDIRPLUS go-fuse looks up every entry of a listing
			// itself: one metadata round trip per name, 12.9 s for 10,000
			// entries. Plain readdir lists them from one scan (a 3,000
			// entry listing went from 2.9 s to 41 ms); ls -l still stats
			// what it needs.
			DisableReadDirPlus: true,
			AllowOther:         opts.AllowOther,
			// The kernel checks permission bits against our attributes;
			// the node methods do no permission checks of their own.
			Options: []string{"default_permissions"},
			Debug:   opts.Debug,
			// Only Debug makes go-fuse log much, so show it at Info.
			Logger: slog.NewLogLogger(logger.Handler(), slog.LevelInfo),
		},
		// Mode 0 means mode 0: go-fuse would otherwise show it as 0644.
		NullPermissions: true,
		EntryTimeout:    &entry,
		AttrTimeout:     &attr,
		RootStableAttr:  &fs.StableAttr{Ino: uint64(meta.RootIno)},
		Logger:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	server, err := gofuse.NewServer(fs.NewNodeFS(root, fsOpts), abs, &fsOpts.MountOptions)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("meshfs mount at %s: %w", abs, err)
	}
	m.server = server
	go func() {
		defer close(m.served)
		server.Serve()
	}()
	if err := server.WaitMount(); err != nil {
		// The serve loop ends with the unmount; nothing else has started.
		_ = server.Unmount()
		cancel()
		return nil, fmt.Errorf("meshfs mount at %s: %w", abs, err)
	}
	m.kernel.seen(meta.RootIno, root.EmbeddedInode())
	if opts.Feed != nil {
		// Follow the feed from before the kernel caches anything: a
		// change made between the mount and the feed's start would
		// otherwise stay stale for the whole cache timeout.
		ready := make(chan struct{})
		m.bg.Add(1)
		go m.follow(opts.Feed, ready)
		select {
		case <-ready:
		case <-time.After(feedStartTimeout):
			logger.Warn("change feed not started yet; other mounts' changes show after the cache timeout until it does", "waited", feedStartTimeout)
		}
	}
	logger.Info("meshfs mounted")
	return m, nil
}

func cacheTimeout(d time.Duration) time.Duration {
	switch {
	case d == 0:
		return time.Second
	case d < 0:
		return 0
	}
	return d
}

// Unmount unmounts the file system and waits for the serve loop and the
// background uploads and prefetches to end. Data not yet flushed is lost.
func (m *FS) Unmount() error {
	select {
	case <-m.served:
		m.stop()
		return nil
	default:
	}
	if err := m.server.Unmount(); err != nil {
		return fmt.Errorf("meshfs unmount %s: %w", m.mountpoint, err)
	}
	m.stop()
	return nil
}

// Wait blocks until the file system is unmounted (by Unmount or by an
// external umount) and its background work has ended.
func (m *FS) Wait() {
	<-m.served
	m.stop()
}

// stop waits for the serve loop, then cancels and waits for background work.
func (m *FS) stop() {
	<-m.served
	m.stopOnce.Do(func() {
		m.cancel()
		m.buf.close()
		m.bg.Wait()
		m.log.Info("meshfs unmounted")
	})
}

// checkMountpoint returns the absolute mountpoint once it is known to be an
// existing directory that nothing is mounted on.
func checkMountpoint(mountpoint string) (string, error) {
	abs, err := filepath.Abs(mountpoint)
	if err != nil {
		return "", fmt.Errorf("meshfs mount: mountpoint %q: %w", mountpoint, err)
	}
	abs = filepath.Clean(abs)
	var st syscall.Stat_t
	if err := syscall.Stat(abs, &st); err != nil {
		if errors.Is(err, syscall.ENOTCONN) {
			return "", fmt.Errorf("meshfs mount: mountpoint %s is a dead FUSE mount (unmount it first): %w", abs, err)
		}
		return "", fmt.Errorf("meshfs mount: mountpoint %s: %w", abs, err)
	}
	if st.Mode&syscall.S_IFMT != syscall.S_IFDIR {
		return "", fmt.Errorf("meshfs mount: mountpoint %s is not a directory", abs)
	}
	mounted, err := isMountPoint(abs, &st)
	if err != nil {
		return "", fmt.Errorf("meshfs mount: checking mountpoint %s: %w", abs, err)
	}
	if mounted {
		return "", fmt.Errorf("meshfs mount: %s is already a mount point", abs)
	}
	return abs, nil
}

// isMountPoint reports whether something is mounted on dir: it is listed in
// /proc/self/mountinfo, or it lies on another device than its parent (for a
// bind mount of the same device, only mountinfo can tell).
func isMountPoint(dir string, st *syscall.Stat_t) (bool, error) {
	if dir == "/" {
		return true, nil
	}
	f, err := os.Open("/proc/self/mountinfo")
	if err == nil {
		defer f.Close()
		found, err := mountinfoHas(f, dir)
		if err != nil {
			return false, err
		}
		if found {
			return true, nil
		}
	}
	var parent syscall.Stat_t
	if err := syscall.Stat(filepath.Dir(dir), &parent); err != nil {
		return false, err
	}
	return parent.Dev != st.Dev, nil
}

// mountinfoHas reports whether dir is the mount point (fifth field) of a
// line of a mountinfo file.
func mountinfoHas(r io.Reader, dir string) (bool, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		if unescapeMountinfo(fields[4]) == dir {
			return true, nil
		}
	}
	return false, sc.Err()
}

// unescapeMountinfo undoes the kernel's octal escapes (\040 for a space).
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// metaCtx gives one metadata call its deadline. The request's cancellation
// is deliberately dropped: the kernel interrupts a request on any signal,
// and the Go runtime signals its threads (SIGURG) all the time, so honouring
// it would fail ordinary calls of Go programs with EINTR. The caller's
// identity (fuse.FromContext) is kept.
func metaCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), metaTimeout)
}

// errno turns an error of the metadata store or the mesh into the errno the
// caller sees: an errno that answers the request (see fileErrnos) is passed
// on; anything else, such as a network errno from a node that did not
// answer, is logged and reported as EIO.
func (m *FS) errno(op string, err error, args ...any) syscall.Errno {
	if err == nil {
		return 0
	}
	var e syscall.Errno
	if errors.As(err, &e) && fileErrnos[e] {
		return e
	}
	m.log.Error("meshfs: "+op+" failed", append(args, "err", err)...)
	return syscall.EIO
}

// fileErrnos are the errnos the metadata store and the mount give as
// answers about the file system, as a local file system would. Others in an
// error's chain come from the transport (ECONNREFUSED from a dead node, say)
// and mean the request could not be carried out: EIO.
var fileErrnos = map[syscall.Errno]bool{
	syscall.ENOENT: true, syscall.EEXIST: true, syscall.ENOTDIR: true, syscall.EISDIR: true,
	syscall.ENOTEMPTY: true, syscall.ENAMETOOLONG: true, syscall.EINVAL: true, syscall.EPERM: true,
	syscall.EACCES: true, syscall.ENOSPC: true, syscall.EFBIG: true, syscall.ENODATA: true,
	syscall.ERANGE: true, syscall.E2BIG: true, syscall.EXDEV: true, syscall.ESTALE: true,
	syscall.ELOOP: true, syscall.EBADF: true, syscall.EROFS: true, syscall.ENOTSUP: true,
	syscall.EMLINK: true, syscall.EOVERFLOW: true, syscall.EIO: true,
}
