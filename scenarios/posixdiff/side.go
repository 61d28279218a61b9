package posixdiff

import (
	"encoding/binary"
	"fmt"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Side is one tree a sequence runs on: a root directory and the handles the
// sequence has opened there, by slot. It is not safe for concurrent use.
type Side struct {
	// Name labels the side in reports ("meshfs", "local").
	Name string
	root string
	fds  []int // -1: closed; a closed slot is handed to the kernel as is (EBADF)
	// dirs says which slots hold a directory (from the fstat at open).
	dirs []bool
	// tolerate holds the names of Deviations not checked.
	tolerate map[string]bool
	// settle makes the timestamp rules of calls of settleKind decisive:
	// before such a call, wait until the object's times are older than
	// the clock slack, so a time the call fails to update can never pass
	// for a fresh one. Minimize uses it so that a minimal sequence shows
	// a timestamp mismatch every time.
	settle     bool
	settleKind Kind
	current    Kind // the kind of the call being applied
}

// NewSide returns a Side working under root (which must exist) with the
// given number of handle slots.
func NewSide(name, root string, slots int) *Side {
	s := &Side{Name: name, root: root, fds: make([]int, slots), dirs: make([]bool, slots)}
	for i := range s.fds {
		s.fds[i] = -1
	}
	return s
}

// Root is the directory the side works under.
func (s *Side) Root() string { return s.root }

func (s *Side) abs(p string) string {
	if p == "" || p == "." {
		return s.root
	}
	return filepath.Join(s.root, p)
}

func (s *Side) fd(slot int) int {
	if slot < 0 || slot >= len(s.fds) {
		return -1
	}
	return s.fds[slot]
}

// retry repeats a call the kernel interrupted before the file system saw
// it: a FUSE request still queued when a signal arrives (the Go runtime
// signals its threads all the time) fails with EINTR and was not performed.
func retry(f func() error) error {
	for {
		if err := f(); err != unix.EINTR {
			return err
		}
	}
}

// CloseAll closes every open slot and returns each close's result, in slot
// order, closed slots included (as a blank result), so two sides compare.
func (s *Side) CloseAll() []Result {
	out := make([]Result, len(s.fds))
	for i, fd := range s.fds {
		if fd >= 0 {
			out[i] = Result{Errno: errnoOf(unix.Close(fd))}
			s.fds[i] = -1
		}
	}
	return out
}

// Apply performs op and returns what it did.
func (s *Side) Apply(op Op) Result {
	s.current = op.Kind
	if skip, why := s.tolerated(op); skip {
		return Result{Value: why + ": not compared"}
	}
	switch op.Kind {
	case KindOpen:
		return s.open(op)
	case KindClose:
		fd := s.fd(op.Slot)
		if fd >= 0 {
			s.fds[op.Slot] = -1
		}
		return Result{Errno: errnoOf(unix.Close(fd))}
	case KindPwrite, KindWrite:
		return s.write(op)
	case KindPread, KindRead:
		return s.read(op)
	case KindSeek:
		return s.seek(op)
	case KindFtruncate:
		w := s.watchSlot(op.Slot)
		err := retry(func() error { return unix.Ftruncate(s.fd(op.Slot), op.Off) })
		r := Result{Errno: errnoOf(err)}
		if err == nil && w.preErr == nil && w.pre.Size != op.Off {
			w.updated(&r, "mc")
		}
		return r
	case KindTruncate:
		w := s.watchPath(op.Path, op.Path, true)
		err := retry(func() error { return unix.Truncate(s.abs(op.Path), op.Off) })
		r := Result{Errno: errnoOf(err)}
		if err == nil && w.preErr == nil && w.pre.Size != op.Off {
			w.updated(&r, "mc")
		}
		return r
	case KindFsync:
		return Result{Errno: errnoOf(retry(func() error { return unix.Fsync(s.fd(op.Slot)) }))}
	case KindFstat:
		var st unix.Stat_t
		err := retry(func() error { return unix.Fstat(s.fd(op.Slot), &st) })
		return statResult(err, &st)
	case KindLstat:
		var st unix.Stat_t
		err := retry(func() error { return unix.Lstat(s.abs(op.Path), &st) })
		return statResult(err, &st)
	case KindReadFile:
		return s.readFile(op.Path)
	case KindReaddir:
		names, err := listDir(s.abs(op.Path))
		return valueResult(err, "entries=%s", strings.Join(names, " "))
	case KindRmtree:
		removed, err := removeTree(s.abs(op.Path))
		return Result{Errno: errnoOf(err), Value: fmt.Sprintf("removed=%d", removed)}
	case KindRename:
		return s.rename(op)
	case KindLink:
		return s.link(op)
	case KindUnlink, KindRmdir:
		remove := unix.Unlink
		if op.Kind == KindRmdir {
			remove = unix.Rmdir
		}
		w := s.watchParent(op.Path)
		err := retry(func() error { return remove(s.abs(op.Path)) })
		r := Result{Errno: errnoOf(err)}
		if err == nil {
			w.updated(&r, "mc")
		}
		return r
	case KindMkdir, KindSymlink:
		return s.mknod(op)
	case KindReadlink:
		buf := make([]byte, 4096)
		var n int
		err := retry(func() (err error) { n, err = unix.Readlink(s.abs(op.Path), buf); return err })
		if err != nil {
			return Result{Errno: errnoOf(err)}
		}
		return Result{Value: fmt.Sprintf("target=%q", buf[:n])}
	case KindChmod, KindChown, KindUtimens, KindSetxattr, KindRemovexattr:
		return s.setattr(op)
	case KindGetxattr:
		return s.getxattr(op)
	case KindListxattr:
		names, err := userXattrs(s.abs(op.Path))
		return valueResult(err, "names=%s", strings.Join(names, ","))
	case KindFsetxattr:
		w := s.watchSlot(op.Slot)
		err := retry(func() error {
			return unix.Fsetxattr(s.fd(op.Slot), op.Name, payload(op.Seed, op.Len), op.Flags)
		})
		r := Result{Errno: errnoOf(err)}
		if err == nil {
			w.kept(&r, "m") // see setattr on xattrs and ctime
		}
		return r
	case KindFgetxattr:
		return getxattrSized(func(dest []byte) (int, error) { return unix.Fgetxattr(s.fd(op.Slot), op.Name, dest) }, -1)
	}
	return Result{Errno: unix.ENOSYS, Value: "unknown op " + op.Kind.String()}
}

// seek is lseek(2) on a handle. A directory's offsets are the file
// system's own cookies (ext4's are hashes, and it refuses SEEK_END past
// them), so on a directory only that it is one is compared.
func (s *Side) seek(op Op) Result {
	if s.fd(op.Slot) >= 0 && s.dirs[op.Slot] {
		return Result{Value: "directory: offsets not compared"}
	}
	var off int64
	err := retry(func() (err error) { off, err = unix.Seek(s.fd(op.Slot), op.Off, op.Flags); return err })
	return valueResult(err, "off=%d", off)
}

// tolerated says whether op falls under one of the Deviations the side
// tolerates, and which.
func (s *Side) tolerated(op Op) (bool, string) {
	// The last second int64 nanoseconds since 1970 can hold.
	const maxNanoSec = (1<<63 - 1) / 1_000_000_000
	past2262 := func(ts unix.Timespec) bool {
		return ts.Nsec != unix.UTIME_NOW && ts.Nsec != unix.UTIME_OMIT && ts.Sec >= maxNanoSec
	}
	if op.Kind == KindUtimens && s.tolerate["times-past-2262"] && (past2262(op.Atime) || past2262(op.Mtime)) {
		return true, "a time past 2262 (times-past-2262)"
	}
	return false, ""
}

func valueResult(err error, format string, args ...any) Result {
	if err != nil {
		return Result{Errno: errnoOf(err)}
	}
	return Result{Value: fmt.Sprintf(format, args...)}
}

func statResult(err error, st *unix.Stat_t) Result {
	if err != nil {
		return Result{Errno: errnoOf(err)}
	}
	return Result{Value: statString(st)}
}

// parentOf is the directory holding p, relative to the root ("" for the
// root itself).
func parentOf(p string) string {
	d := path.Dir(p)
	if d == "." {
		return ""
	}
	return d
}

func (s *Side) open(op Op) Result {
	var prev Result
	if fd := s.fd(op.Slot); fd >= 0 {
		// The slot's old handle goes first, as a program reusing a
		// variable would close it; its close is part of the result.
		prev.Errno = errnoOf(unix.Close(fd))
		s.fds[op.Slot] = -1
	}
	// The name may exist as a symlink to nothing: open(O_CREAT) then
	// makes the file the link points to, in another directory.
	var pre, link unix.Stat_t
	existed := unix.Stat(s.abs(op.Path), &pre) == nil
	named := unix.Lstat(s.abs(op.Path), &link) == nil
	w := s.watchParent(op.Path)
	var fd int
	err := retry(func() (err error) { fd, err = unix.Open(s.abs(op.Path), op.Flags|unix.O_CLOEXEC, op.Mode); return err })
	r := Result{Errno: errnoOf(err)}
	if prev.Errno != 0 {
		r.Value = "close of the slot's previous handle: " + errnoName(prev.Errno) + "; "
	}
	if err != nil {
		return r
	}
	if op.Slot < 0 || op.Slot >= len(s.fds) {
		unix.Close(fd)
		return Result{Errno: unix.EBADF, Value: "no such slot"}
	}
	s.fds[op.Slot] = fd
	var st unix.Stat_t
	err = unix.Fstat(fd, &st)
	s.dirs[op.Slot] = err == nil && st.Mode&unix.S_IFMT == unix.S_IFDIR
	if err != nil {
		r.Value += "fstat after open: " + errnoName(errnoOf(err))
		return r
	}
	r.Value += statString(&st)
	// The new handle's object as the open left it; its times are checked
	// against the start of the call.
	file := &watch{s: s, label: slotLabel(op.Slot), slot: op.Slot, pre: st, t0: w.t0}
	switch {
	case !existed && op.Flags&unix.O_CREAT != 0:
		// open(2): a file it creates gets all three times set, and its
		// directory's mtime and ctime are marked for update.
		file.updated(&r, "mc")
		if !named {
			w.updated(&r, "mc")
		}
	case existed && op.Flags&unix.O_TRUNC != 0 && pre.Mode&unix.S_IFMT == unix.S_IFREG:
		// "If O_TRUNC is set and the file did previously exist, upon
		// successful completion, open() shall mark for update" mtime and ctime.
		file.updated(&r, "mc")
	}
	return r
}

func (s *Side) write(op Op) Result {
	w := s.watchSlot(op.Slot)
	data := payload(op.Seed, op.Len)
	var n int
	err := retry(func() (err error) {
		if op.Kind == KindPwrite {
			n, err = unix.Pwrite(s.fd(op.Slot), data, op.Off)
		} else {
			n, err = unix.Write(s.fd(op.Slot), data)
		}
		return err
	})
	if err != nil {
		return Result{Errno: errnoOf(err)}
	}
	r := Result{Value: fmt.Sprintf("n=%d", n)}
	if n > 0 {
		// write(2): "Upon successful completion, where nbyte is greater
		// than 0, write() shall mark for update" mtime and ctime.
		w.updated(&r, "mc")
	}
	return r
}

func (s *Side) read(op Op) Result {
	w := s.watchSlot(op.Slot)
	buf := make([]byte, max(op.Len, 0))
	var n int
	err := retry(func() (err error) {
		if op.Kind == KindPread {
			n, err = unix.Pread(s.fd(op.Slot), buf, op.Off)
		} else {
			n, err = unix.Read(s.fd(op.Slot), buf)
		}
		return err
	})
	if err != nil {
		return Result{Errno: errnoOf(err)}
	}
	r := Result{Value: fmt.Sprintf("n=%d", n), Data: buf[:n]}
	w.kept(&r, "mc")
	return r
}

// readFile reads a whole file through a handle of its own, as a program
// opening it after the writer's close does.
func (s *Side) readFile(p string) Result {
	var fd int
	err := retry(func() (err error) { fd, err = unix.Open(s.abs(p), unix.O_RDONLY|unix.O_CLOEXEC, 0); return err })
	if err != nil {
		return Result{Errno: errnoOf(err)}
	}
	data, rerr := readAll(fd)
	cerr := unix.Close(fd)
	switch {
	case rerr != nil:
		return Result{Errno: errnoOf(rerr), Value: fmt.Sprintf("read failed after %d bytes", len(data))}
	case cerr != nil:
		return Result{Errno: errnoOf(cerr), Value: "close failed"}
	}
	return Result{Value: fmt.Sprintf("n=%d", len(data)), Data: data}
}

func readAll(fd int) ([]byte, error) {
	var data []byte
	buf := make([]byte, 128<<10)
	for {
		var n int
		err := retry(func() (err error) { n, err = unix.Read(fd, buf); return err })
		if err != nil {
			return data, err
		}
		if n == 0 {
			return data, nil
		}
		data = append(data, buf[:n]...)
	}
}

// removeTree removes p and everything under it, without following
// symlinks, depth first in name order, and stops at the first failure; it
// returns how many objects it removed.
func removeTree(p string) (int, error) {
	var st unix.Stat_t
	if err := retry(func() error { return unix.Lstat(p, &st) }); err != nil {
		return 0, err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		if err := retry(func() error { return unix.Unlink(p) }); err != nil {
			return 0, err
		}
		return 1, nil
	}
	names, err := listDir(p)
	if err != nil {
		return 0, err
	}
	removed := 0
	for _, n := range names {
		k, err := removeTree(filepath.Join(p, n[:strings.LastIndexByte(n, '(')]))
		removed += k
		if err != nil {
			return removed, err
		}
	}
	if err := retry(func() error { return unix.Rmdir(p) }); err != nil {
		return removed, err
	}
	return removed + 1, nil
}

// listDir returns a directory's entries as "name(type)" sorted by name,
// from getdents64 itself. "." and ".." are left out: POSIX lets a file
// system return them or not ("If entries for dot or dot-dot exist…"), and
// meshfs (go-fuse's plain READDIR) does not, where ext4 does.
func listDir(dir string) ([]string, error) {
	var fd int
	err := retry(func() (err error) {
		fd, err = unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
		return err
	})
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	var names []string
	buf := make([]byte, 8192)
	for {
		var n int
		err := retry(func() (err error) { n, err = unix.Getdents(fd, buf); return err })
		if err != nil {
			return nil, err
		}
		if n == 0 {
			break
		}
		for b := buf[:n]; len(b) >= 19; {
			// struct linux_dirent64: ino u64, off s64, reclen u16, type u8, name.
			reclen := int(binary.NativeEndian.Uint16(b[16:18]))
			if reclen < 19 || reclen > len(b) {
				return nil, fmt.Errorf("getdents64 %s: record of %d bytes: %w", dir, reclen, syscall.EIO)
			}
			typ, name := b[18], b[19:reclen]
			if i := slices.Index(name, 0); i >= 0 {
				name = name[:i]
			}
			if string(name) != "." && string(name) != ".." {
				names = append(names, fmt.Sprintf("%s(%s)", name, direntType(typ)))
			}
			b = b[reclen:]
		}
	}
	slices.Sort(names)
	return names, nil
}

func direntType(t byte) string {
	switch t {
	case unix.DT_REG:
		return "f"
	case unix.DT_DIR:
		return "d"
	case unix.DT_LNK:
		return "l"
	case unix.DT_UNKNOWN:
		return "?"
	}
	return fmt.Sprint(t)
}

func (s *Side) rename(op Op) Result {
	var src, dst unix.Stat_t
	srcOK := unix.Lstat(s.abs(op.Path), &src) == nil
	dstOK := unix.Lstat(s.abs(op.Path2), &dst) == nil
	from := s.watchParent(op.Path)
	to := s.watchParent(op.Path2)
	moved := s.watchPath(op.Path, op.Path, false)
	err := retry(func() error {
		return unix.Renameat2(unix.AT_FDCWD, s.abs(op.Path), unix.AT_FDCWD, s.abs(op.Path2), uint(op.Flags))
	})
	r := Result{Errno: errnoOf(err)}
	if err != nil || !srcOK || (dstOK && src.Ino == dst.Ino && src.Dev == dst.Dev) {
		return r // renaming a file onto itself changes nothing
	}
	// rename(2): "Upon successful completion, rename() shall mark for
	// update the last data modification and last file status change
	// timestamps of the parent directory of each file."
	from.updated(&r, "mc")
	to.updated(&r, "mc")
	// The moved object's own data did not change.
	moved.label = op.Path2
	moved.path = op.Path2
	moved.kept(&r, "m")
	return r
}

func (s *Side) link(op Op) Result {
	file := s.watchPath(op.Path, op.Path, false)
	dir := s.watchParent(op.Path2)
	err := retry(func() error { return unix.Link(s.abs(op.Path), s.abs(op.Path2)) })
	r := Result{Errno: errnoOf(err)}
	if err != nil {
		return r
	}
	// link(2): the file's ctime and the new parent's mtime and ctime are
	// marked for update.
	file.updated(&r, "c")
	file.kept(&r, "m")
	dir.updated(&r, "mc")
	var st unix.Stat_t
	if err := unix.Lstat(s.abs(op.Path2), &st); err == nil {
		r.Value = statString(&st)
	}
	return r
}

// mknod is mkdir and symlink: a new name whose times are all set and whose
// directory's mtime and ctime are marked for update.
func (s *Side) mknod(op Op) Result {
	dir := s.watchParent(op.Path)
	var err error
	if op.Kind == KindMkdir {
		err = retry(func() error { return unix.Mkdir(s.abs(op.Path), op.Mode) })
	} else {
		err = retry(func() error { return unix.Symlink(op.Path2, s.abs(op.Path)) })
	}
	r := Result{Errno: errnoOf(err)}
	if err != nil {
		return r
	}
	dir.updated(&r, "mc")
	made := &watch{s: s, label: op.Path, path: op.Path, slot: -1, t0: dir.t0}
	made.updated(&r, "mc")
	var st unix.Stat_t
	if err := unix.Lstat(s.abs(op.Path), &st); err == nil {
		r.Value = statString(&st)
	}
	return r
}

// setattr is the calls that change an inode's attributes, not its data:
// each leaves mtime alone (but utimens, which sets it), and chmod, chown
// and utimens mark ctime for update. Extended attributes are not POSIX:
// Linux file systems update ctime on setxattr, except ext4 when the value
// does not change, so for them ctime is not checked.
func (s *Side) setattr(op Op) Result {
	follow := op.Kind == KindChmod // chmod(2) follows symlinks; the others are the l* calls
	w := s.watchPath(op.Path, op.Path, follow)
	p := s.abs(op.Path)
	var err error
	switch op.Kind {
	case KindChmod:
		err = retry(func() error { return unix.Chmod(p, op.Mode) })
	case KindChown:
		err = retry(func() error { return unix.Lchown(p, op.Uid, op.Gid) })
	case KindUtimens:
		err = retry(func() error {
			return unix.UtimesNanoAt(unix.AT_FDCWD, p, []unix.Timespec{op.Atime, op.Mtime}, unix.AT_SYMLINK_NOFOLLOW)
		})
	case KindSetxattr:
		err = retry(func() error { return unix.Lsetxattr(p, op.Name, payload(op.Seed, op.Len), op.Flags) })
	case KindRemovexattr:
		err = retry(func() error { return unix.Lremovexattr(p, op.Name) })
	}
	r := Result{Errno: errnoOf(err)}
	if err != nil {
		return r
	}
	if op.Kind == KindUtimens && op.Atime.Nsec == unix.UTIME_OMIT && op.Mtime.Nsec == unix.UTIME_OMIT {
		// utimensat(2) with both omitted succeeds without even looking
		// the path up.
		return r
	}
	if op.Kind != KindSetxattr && op.Kind != KindRemovexattr {
		w.updated(&r, "c")
	}
	var st unix.Stat_t
	if serr := w.stat(&st); serr != nil {
		r.Value = "stat after: " + errnoName(errnoOf(serr))
		return r
	}
	switch op.Kind {
	case KindUtimens:
		// Explicit times must be stored as given, to the nanosecond;
		// UTIME_NOW means the current time; UTIME_OMIT keeps the old.
		r.Value = statString(&st)
		switch op.Mtime.Nsec {
		case unix.UTIME_NOW:
			w.updated(&r, "m")
		case unix.UTIME_OMIT:
			w.kept(&r, "m")
		default:
			r.Value += " mtime=" + timespecString(st.Mtim)
		}
		// A symlink's atime changes whenever a path lookup follows it,
		// as the stat after this call may.
		if op.Atime.Nsec != unix.UTIME_NOW && op.Atime.Nsec != unix.UTIME_OMIT && st.Mode&unix.S_IFMT != unix.S_IFLNK {
			r.Value += " atime=" + timespecString(st.Atim)
		}
	case KindChmod, KindChown:
		r.Value = statString(&st)
		w.kept(&r, "m")
	default:
		w.kept(&r, "m")
	}
	return r
}

func (s *Side) getxattr(op Op) Result {
	p := s.abs(op.Path)
	return getxattrSized(func(dest []byte) (int, error) { return unix.Lgetxattr(p, op.Name, dest) }, op.Len)
}

// getxattrSized follows getxattr(2)'s size protocol: with bufSize -1 it
// asks the size with an empty buffer and then reads into one that big;
// otherwise it reads into a buffer of bufSize bytes (0 asks the size;
// too small gives ERANGE).
func getxattrSized(get func(dest []byte) (int, error), bufSize int) Result {
	if bufSize >= 0 {
		buf := make([]byte, bufSize)
		var n int
		err := retry(func() (err error) { n, err = get(buf); return err })
		if err != nil {
			return Result{Errno: errnoOf(err)}
		}
		if bufSize == 0 {
			return Result{Value: fmt.Sprintf("size=%d", n)}
		}
		return Result{Value: fmt.Sprintf("n=%d", n), Data: buf[:n]}
	}
	var size int
	err := retry(func() (err error) { size, err = get(nil); return err })
	if err != nil {
		return Result{Errno: errnoOf(err), Value: "asking the size"}
	}
	buf := make([]byte, size)
	var n int
	err = retry(func() (err error) { n, err = get(buf); return err })
	if err != nil {
		return Result{Errno: errnoOf(err), Value: fmt.Sprintf("reading %d bytes", size)}
	}
	return Result{Value: fmt.Sprintf("size=%d n=%d", size, n), Data: buf[:n]}
}

// userXattrs lists a path's extended attributes in the user and trusted
// namespaces, sorted: the others (security.*, system.*) belong to the
// host's setup.
func userXattrs(p string) ([]string, error) {
	var size int
	err := retry(func() (err error) { size, err = unix.Llistxattr(p, nil); return err })
	if err != nil {
		return nil, err
	}
	buf := make([]byte, size)
	var n int
	err = retry(func() (err error) { n, err = unix.Llistxattr(p, buf); return err })
	if err != nil {
		return nil, err
	}
	var names []string
	for _, name := range strings.Split(string(buf[:n]), "\x00") {
		if strings.HasPrefix(name, "user.") || strings.HasPrefix(name, "trusted.") {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	return names, nil
}
