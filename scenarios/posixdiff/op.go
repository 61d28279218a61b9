package posixdiff

import (
	"fmt"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

// Kind is the system call (or short sequence of calls) an Op makes.
type Kind uint8

// The kinds of operation. Path-based calls take Op.Path (and Op.Path2);
// handle-based calls take Op.Slot, one of a fixed number of open handles.
const (
	KindOpen        Kind = iota // open(Path, Flags, Mode) into Slot, closing what Slot held
	KindClose                   // close(Slot)
	KindPwrite                  // pwrite(Slot, payload(Seed, Len), Off)
	KindWrite                   // write(Slot, payload(Seed, Len)) at the handle's offset
	KindPread                   // pread(Slot, Len, Off)
	KindRead                    // read(Slot, Len) at the handle's offset
	KindSeek                    // lseek(Slot, Off, Flags = whence)
	KindFtruncate               // ftruncate(Slot, Off)
	KindTruncate                // truncate(Path, Off)
	KindFsync                   // fsync(Slot)
	KindFstat                   // fstat(Slot)
	KindLstat                   // lstat(Path)
	KindReadFile                // open(Path, O_RDONLY), read to the end, close
	KindReaddir                 // open(Path, O_DIRECTORY), getdents to the end, close
	KindRename                  // renameat2(Path, Path2, Flags)
	KindLink                    // link(Path, Path2)
	KindUnlink                  // unlink(Path)
	KindMkdir                   // mkdir(Path, Mode)
	KindRmdir                   // rmdir(Path)
	KindSymlink                 // symlink(target Path2, Path)
	KindReadlink                // readlink(Path)
	KindChmod                   // chmod(Path, Mode), following symlinks
	KindChown                   // lchown(Path, Uid, Gid)
	KindUtimens                 // utimensat(Path, {Atime, Mtime}, AT_SYMLINK_NOFOLLOW)
	KindSetxattr                // lsetxattr(Path, Name, payload(Seed, Len), Flags)
	KindGetxattr                // lgetxattr(Path, Name) with a buffer of Len bytes (-1: ask the size first)
	KindListxattr               // llistxattr(Path)
	KindRemovexattr             // lremovexattr(Path, Name)
	KindFsetxattr               // fsetxattr(Slot, Name, payload(Seed, Len), Flags)
	KindFgetxattr               // fgetxattr(Slot, Name), size asked first
	KindRmtree                  // rm -rf Path: unlink and rmdir everything under it, depth first
	numKinds
)

var kindNames = [numKinds]string{
	KindOpen: "open", KindClose: "close", KindPwrite: "pwrite", KindWrite: "write",
	KindPread: "pread", KindRead: "read", KindSeek: "lseek", KindFtruncate: "ftruncate",
	KindTruncate: "truncate", KindFsync: "fsync", KindFstat: "fstat", KindLstat: "lstat",
	KindReadFile: "readfile", KindReaddir: "readdir", KindRename: "rename", KindLink: "link",
	KindUnlink: "unlink", KindMkdir: "mkdir", KindRmdir: "rmdir", KindSymlink: "symlink",
	KindReadlink: "readlink", KindChmod: "chmod", KindChown: "chown", KindUtimens: "utimens",
	KindSetxattr: "setxattr", KindGetxattr: "getxattr", KindListxattr: "listxattr",
	KindRemovexattr: "removexattr", KindFsetxattr: "fsetxattr", KindFgetxattr: "fgetxattr",
	KindRmtree: "rmtree",
}

func (k Kind) String() string {
	if k < numKinds {
		return kindNames[k]
	}
	return fmt.Sprintf("kind(%d)", k)
}

// ParseKinds parses a comma-separated list of kind names (as Kind.String
// writes them), for flags that exclude kinds.
func ParseKinds(list string) ([]Kind, error) {
	var out []Kind
	for _, name := range strings.Split(list, ",") {
		name = strings.TrimSpace(name)
		if name == "" {
			continue
		}
		i := slices.Index(kindNames[:], name)
		if i < 0 {
			return nil, fmt.Errorf("unknown operation %q (known: %s)", name, strings.Join(kindNames[:], ", "))
		}
		out = append(out, Kind(i))
	}
	return out, nil
}

// Op is one operation of a sequence. Which fields matter depends on Kind
// (see the Kind constants); the rest are zero. An Op carries everything its
// execution needs, so a recorded sequence replays identically with any of
// its operations dropped.
type Op struct {
	Kind  Kind
	Path  string // relative to the tree's root, never absolute, never above it
	Path2 string // rename and link: the new name; symlink: the target
	Slot  int
	Flags int    // open flags, renameat2 flags, xattr flags, lseek whence
	Mode  uint32 // open, mkdir, chmod
	Off   int64  // offset, or the size of a truncate
	Len   int    // bytes to write or read; xattr value length or buffer size
	Seed  uint64 // the written bytes and xattr values are payload(Seed, Len)
	Uid   int    // chown; -1 leaves it
	Gid   int
	Atime unix.Timespec // utimens; Nsec may be UTIME_NOW or UTIME_OMIT
	Mtime unix.Timespec
	Name  string // xattr name
}

// String renders the op as a line of a reproduction listing.
func (o Op) String() string {
	switch o.Kind {
	case KindOpen:
		return fmt.Sprintf("open %s %s mode=%#o -> h%d", o.Path, openFlagsString(o.Flags), o.Mode, o.Slot)
	case KindClose, KindFsync, KindFstat:
		return fmt.Sprintf("%s h%d", o.Kind, o.Slot)
	case KindPwrite:
		return fmt.Sprintf("pwrite h%d off=%d len=%d seed=%#x", o.Slot, o.Off, o.Len, o.Seed)
	case KindWrite:
		return fmt.Sprintf("write h%d len=%d seed=%#x", o.Slot, o.Len, o.Seed)
	case KindPread:
		return fmt.Sprintf("pread h%d off=%d len=%d", o.Slot, o.Off, o.Len)
	case KindRead:
		return fmt.Sprintf("read h%d len=%d", o.Slot, o.Len)
	case KindSeek:
		return fmt.Sprintf("lseek h%d off=%d whence=%s", o.Slot, o.Off, whenceString(o.Flags))
	case KindFtruncate:
		return fmt.Sprintf("ftruncate h%d size=%d", o.Slot, o.Off)
	case KindTruncate:
		return fmt.Sprintf("truncate %s size=%d", o.Path, o.Off)
	case KindRename:
		return fmt.Sprintf("rename %s -> %s%s", o.Path, o.Path2, renameFlagsString(o.Flags))
	case KindLink:
		return fmt.Sprintf("link %s -> %s", o.Path, o.Path2)
	case KindSymlink:
		return fmt.Sprintf("symlink %s -> %q", o.Path, o.Path2)
	case KindMkdir, KindChmod:
		return fmt.Sprintf("%s %s mode=%#o", o.Kind, o.Path, o.Mode)
	case KindChown:
		return fmt.Sprintf("chown %s uid=%d gid=%d", o.Path, o.Uid, o.Gid)
	case KindUtimens:
		return fmt.Sprintf("utimens %s atime=%s mtime=%s", o.Path, timespecString(o.Atime), timespecString(o.Mtime))
	case KindSetxattr:
		return fmt.Sprintf("setxattr %s %s len=%d seed=%#x%s", o.Path, o.Name, o.Len, o.Seed, xattrFlagsString(o.Flags))
	case KindGetxattr:
		return fmt.Sprintf("getxattr %s %s bufsize=%d", o.Path, o.Name, o.Len)
	case KindRemovexattr:
		return fmt.Sprintf("removexattr %s %s", o.Path, o.Name)
	case KindFsetxattr:
		return fmt.Sprintf("fsetxattr h%d %s len=%d seed=%#x%s", o.Slot, o.Name, o.Len, o.Seed, xattrFlagsString(o.Flags))
	case KindFgetxattr:
		return fmt.Sprintf("fgetxattr h%d %s", o.Slot, o.Name)
	}
	// lstat, readfile, readdir, unlink, rmdir, readlink, listxattr, rmtree
	return fmt.Sprintf("%s %s", o.Kind, o.Path)
}

func openFlagsString(flags int) string {
	var parts []string
	switch flags & unix.O_ACCMODE {
	case unix.O_RDONLY:
		parts = append(parts, "O_RDONLY")
	case unix.O_WRONLY:
		parts = append(parts, "O_WRONLY")
	case unix.O_RDWR:
		parts = append(parts, "O_RDWR")
	}
	for _, f := range []struct {
		bit  int
		name string
	}{{unix.O_CREAT, "O_CREAT"}, {unix.O_EXCL, "O_EXCL"}, {unix.O_TRUNC, "O_TRUNC"}, {unix.O_APPEND, "O_APPEND"}, {unix.O_NOFOLLOW, "O_NOFOLLOW"}} {
		if flags&f.bit != 0 {
			parts = append(parts, f.name)
		}
	}
	return strings.Join(parts, "|")
}

func renameFlagsString(flags int) string {
	switch flags {
	case 0:
		return ""
	case unix.RENAME_NOREPLACE:
		return " RENAME_NOREPLACE"
	case unix.RENAME_EXCHANGE:
		return " RENAME_EXCHANGE"
	}
	return fmt.Sprintf(" flags=%#x", flags)
}

func xattrFlagsString(flags int) string {
	switch flags {
	case 0:
		return ""
	case unix.XATTR_CREATE:
		return " XATTR_CREATE"
	case unix.XATTR_REPLACE:
		return " XATTR_REPLACE"
	}
	return fmt.Sprintf(" flags=%#x", flags)
}

func whenceString(w int) string {
	switch w {
	case unix.SEEK_SET:
		return "SEEK_SET"
	case unix.SEEK_CUR:
		return "SEEK_CUR"
	case unix.SEEK_END:
		return "SEEK_END"
	}
	return fmt.Sprint(w)
}

func timespecString(ts unix.Timespec) string {
	switch ts.Nsec {
	case unix.UTIME_NOW:
		return "now"
	case unix.UTIME_OMIT:
		return "omit"
	}
	return fmt.Sprintf("%d.%09d", ts.Sec, ts.Nsec)
}

// payload returns the n bytes an op with this seed writes. No byte is zero,
// so written data is never mistaken for a hole.
func payload(seed uint64, n int) []byte {
	b := make([]byte, n)
	x := seed
	for i := 0; i < n; i += 8 {
		x = splitmix(x)
		v := x
		for j := i; j < min(i+8, n); j++ {
			b[j] = byte(v%255) + 1
			v /= 255
		}
	}
	return b
}

// splitmix is SplitMix64's step: a cheap, well-mixed sequence from a seed.
func splitmix(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	z := x
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}
