package lazyfs

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// ErrBusy: the mount could not be unmounted because something still uses
// it (an open file, a mapping, a working directory).
var ErrBusy = errors.New("mount is busy")

// Options configure a mount.
type Options struct {
	// Logger receives mount, unmount and power-cut events; nil discards them.
	Logger *slog.Logger
	// Debug logs every FUSE request and reply at debug level.
	Debug bool
}

// Stats are totals since Mount.
type Stats struct {
	// DirtyBytes are written but not yet synced, now. Within each 4 KiB
	// page, the span from the first to the last byte written counts.
	DirtyBytes int64
	// SyncedBytes were written to backing files by fsync or Unmount.
	SyncedBytes int64
	// DroppedBytes were thrown away by CutPower.
	DroppedBytes int64
	// Syncs counts fsync and fdatasync calls on files.
	Syncs int64
}

// FS is a mounted lazy pass-through file system.
type FS struct {
	log        *slog.Logger
	mountpoint string
	server     *fuse.Server
	count      counters

	// power is held shared by every operation and exclusively by CutPower
	// and Unmount, so that once cut is set no operation touches a backing
	// file's data. Operations take it once, at the top: nested read locks
	// could deadlock against a waiting CutPower.
	power sync.RWMutex
	cut   bool // set by CutPower or a completed Unmount; guarded by power

	mu    sync.Mutex
	files map[fileID]*fileState // files with open handles or unsynced changes
}

// Mount mounts a lazy view of the directory backing at mountpoint, which
// must exist. The file system is served until Unmount or CutPower.
func Mount(mountpoint, backing string, opts Options) (*FS, error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	backing, err := filepath.Abs(backing)
	if err != nil {
		return nil, fmt.Errorf("lazyfs: mount %s: %w", backing, err)
	}
	root, err := fs.NewLoopbackRoot(backing)
	if err != nil {
		return nil, fmt.Errorf("lazyfs: mount %s: %w", backing, err)
	}
	f := &FS{
		log:        log.With("mountpoint", mountpoint),
		mountpoint: mountpoint,
		files:      make(map[fileID]*fileState),
	}
	lb := root.(*fs.LoopbackNode)
	top := &node{LoopbackNode: lb, fsys: f}
	lb.RootData.RootNode = top
	// No kernel caching of names or attributes: the size the kernel holds
	// must always be the pending one, which only this process knows.
	var zero time.Duration
	f.server, err = fs.Mount(mountpoint, top, &fs.Options{
		EntryTimeout:    &zero,
		AttrTimeout:     &zero,
		NegativeTimeout: &zero,
		MountOptions: fuse.MountOptions{
			// No fusermount needed as root; as another user, fall back to it.
			DirectMount:       true,
			DirectMountStrict: os.Geteuid() == 0,
			FsName:            backing,
			Name:              "lazyfs",
			MaxWrite:          1 << 20,
			// The kernel checks permissions: this process opens backing
			// files read-write whatever the caller asked for.
			Options: []string{"default_permissions"},
			Debug:   opts.Debug,
			Logger:  slog.NewLogLogger(log.Handler(), slog.LevelDebug),
		},
	})
	if err != nil {
		return nil, fmt.Errorf("lazyfs: mount %s on %s: %w", backing, mountpoint, err)
	}
	f.log.Info("lazyfs mounted", "backing", backing)
	return f, nil
}

// Unmount unmounts and then, like the clean shutdown of a real disk,
// writes every unsynced change to the backing files and syncs them. If the
// mount is busy it returns ErrBusy and stays mounted, changes kept. After
// a CutPower whose unmount failed, Unmount only retries the unmount.
func (f *FS) Unmount() error {
	if err := f.unmount(); err != nil {
		return fmt.Errorf("lazyfs: %w", err)
	}
	f.power.Lock()
	defer f.power.Unlock()
	if f.cut {
		return nil
	}
	f.cut = true
	f.mu.Lock()
	defer f.mu.Unlock()
	var errs []error
	for id, s := range f.files {
		if s.isDirty() {
			if err := s.sync(false); err != nil {
				errs = append(errs, fmt.Errorf("lazyfs: unmount %s: sync inode %d: %w", f.mountpoint, id.ino, err))
			}
		}
		s.close()
	}
	f.files = nil
	f.log.Info("lazyfs unmounted", "synced_bytes", f.count.synced.Load())
	return errors.Join(errs...)
}

// CutPower throws away every unsynced change, leaving the backing files as
// the last fsync left them, and unmounts, which also drops the kernel's page
// cache. Call it once every process using the mount is dead (SIGKILLed and
// waited for); mount again with Mount to restart. From the cut on, every
// operation on the mount fails with EIO. If the unmount fails, the changes
// are dropped all the same and the error wraps ErrBusy when the mount was
// busy; CutPower or Unmount may be called again to retry the unmount.
func (f *FS) CutPower() error {
	f.power.Lock()
	if !f.cut {
		f.cut = true
		f.mu.Lock()
		var dropped int64
		for _, s := range f.files {
			dropped += s.discard()
			s.close()
		}
		f.files = nil
		f.mu.Unlock()
		f.count.dropped.Add(dropped)
		f.log.Info("lazyfs power cut", "dropped_bytes", dropped)
	}
	f.power.Unlock()
	if err := f.unmount(); err != nil {
		return fmt.Errorf("lazyfs: power cut: unsynced data dropped, but %w", err)
	}
	return nil
}

func (f *FS) unmount() error {
	err := f.server.Unmount()
	if errors.Is(err, syscall.EBUSY) {
		return fmt.Errorf("unmount %s: %w (a process still has a file, mapping or directory open there): %w", f.mountpoint, ErrBusy, err)
	}
	if err != nil {
		return fmt.Errorf("unmount %s: %w", f.mountpoint, err)
	}
	return nil
}

// Stats returns the totals since Mount.
func (f *FS) Stats() Stats {
	return Stats{
		DirtyBytes:   f.count.dirty.Load(),
		SyncedBytes:  f.count.synced.Load(),
		DroppedBytes: f.count.dropped.Load(),
		Syncs:        f.count.syncs.Load(),
	}
}

// enter starts an operation; false once the power is cut. A true return
// must be paired with leave.
func (f *FS) enter() bool {
	f.power.RLock()
	if f.cut {
		f.power.RUnlock()
		return false
	}
	return true
}

func (f *FS) leave() { f.power.RUnlock() }

// acquire returns the state of the backing file open as file, taking a
// handle on it. It takes ownership of file: kept as the state's descriptor
// or closed.
func (f *FS) acquire(file *os.File, writable bool) (*fileState, error) {
	var st syscall.Stat_t
	if err := syscall.Fstat(int(file.Fd()), &st); err != nil {
		file.Close()
		return nil, fmt.Errorf("stat backing file %s: %w", file.Name(), err)
	}
	id := idOf(&st)
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.files[id]
	if s == nil {
		s = newFileState(id, file, writable, &f.count)
		f.files[id] = s
	} else if !s.adopt(file, writable) {
		file.Close()
	}
	s.handles++
	return s, nil
}

// release drops a handle taken by acquire. The state goes once it has no
// handles and nothing unsynced, or nothing unsynced worth keeping: the file
// has no name left, so nothing could ever sync it.
func (f *FS) release(s *fileState) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s.handles--
	f.forgetIfIdle(s)
}

// forgetIfIdle drops the state when no handle holds it and it is clean or
// unlinked; must hold f.mu.
func (f *FS) forgetIfIdle(s *fileState) {
	if s.handles > 0 {
		return
	}
	if s.isDirty() {
		var st syscall.Stat_t
		if err := syscall.Fstat(int(s.backing.Fd()), &st); err != nil || st.Nlink > 0 {
			return
		}
		s.discard()
	}
	s.close()
	delete(f.files, s.id)
}

// forgetIfUnlinked is called after a name was removed: when it was the
// file's last one and no handle is open, its unsynced data goes.
func (f *FS) forgetIfUnlinked(id fileID) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if s := f.files[id]; s != nil {
		f.forgetIfIdle(s)
	}
}

// state returns the state of id, or nil when it has none.
func (f *FS) state(id fileID) *fileState {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.files[id]
}
