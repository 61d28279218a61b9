package posixdiff

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Result is what one Op did on one tree, in a form two trees can be
// compared by: two file systems that behave alike give Equal Results.
type Result struct {
	// Errno is the call's error; 0 for success.
	Errno syscall.Errno
	// Value is the call's outcome in canonical text: a byte count, a
	// normalised stat, sorted names, a symlink target.
	Value string
	// Data is what a read returned.
	Data []byte
	// Times lists the timestamp rules the call broke (see watch), without
	// clock values, so the lists of two trees compare.
	Times []string
	// Note says, for the report only, by how much the rules were broken.
	// It is not compared: it holds clock values.
	Note string
}

func errnoOf(err error) syscall.Errno {
	if err == nil {
		return 0
	}
	if e, ok := err.(syscall.Errno); ok {
		return e
	}
	return syscall.EIO // never from a system call; kept comparable
}

// Equal reports whether r and o describe the same behaviour.
func (r Result) Equal(o Result) bool {
	return Differ(r, o) == ""
}

// String renders the result for a report.
func (r Result) String() string {
	var b strings.Builder
	if r.Errno != 0 {
		fmt.Fprintf(&b, "%s(%s)", errnoName(r.Errno), r.Errno)
	} else {
		b.WriteString("ok")
	}
	if r.Value != "" {
		b.WriteString(" " + r.Value)
	}
	if r.Data != nil {
		fmt.Fprintf(&b, " data=%d bytes sha256:%x", len(r.Data), sha256.Sum256(r.Data))
	}
	if len(r.Times) > 0 {
		fmt.Fprintf(&b, " timestamps: %s", strings.Join(r.Times, "; "))
	}
	if r.Note != "" {
		fmt.Fprintf(&b, " (%s)", r.Note)
	}
	return b.String()
}

// Differ names what differs between two results (errno, value, data,
// timestamps), "" if nothing does; with data, where the bytes first differ.
func Differ(a, b Result) string {
	switch {
	case a.Errno != b.Errno:
		return "errno"
	case a.Value != b.Value:
		return "value"
	case !bytes.Equal(a.Data, b.Data):
		return "data"
	case strings.Join(a.Times, ";") != strings.Join(b.Times, ";"):
		return "timestamps"
	}
	return ""
}

// DataDiff describes where two byte strings first differ.
func DataDiff(a, b []byte) string {
	n := min(len(a), len(b))
	for i := 0; i < n; i++ {
		if a[i] != b[i] {
			return fmt.Sprintf("first difference at byte %d: %#02x vs %#02x (lengths %d, %d)", i, a[i], b[i], len(a), len(b))
		}
	}
	if len(a) != len(b) {
		return fmt.Sprintf("lengths %d and %d, equal for the first %d bytes", len(a), len(b), n)
	}
	return "equal"
}

func errnoName(e syscall.Errno) string {
	if name := unix.ErrnoName(e); name != "" {
		return name
	}
	return fmt.Sprintf("errno%d", int(e))
}

// statString renders the comparable part of a stat: type, permission and
// special bits, link count, owner and, but for directories (whose st_size
// POSIX leaves to the file system), the size. Inode, device, block size,
// block count and timestamps are left out: they legitimately differ.
func statString(st *unix.Stat_t) string {
	s := fmt.Sprintf("%s mode=%#o nlink=%d uid=%d gid=%d", typeName(st.Mode), st.Mode&0o7777, st.Nlink, st.Uid, st.Gid)
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		s += fmt.Sprintf(" size=%d", st.Size)
	}
	return s
}

func typeName(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFREG:
		return "file"
	case unix.S_IFDIR:
		return "dir"
	case unix.S_IFLNK:
		return "symlink"
	case unix.S_IFIFO:
		return "fifo"
	case unix.S_IFSOCK:
		return "socket"
	case unix.S_IFCHR:
		return "chardev"
	case unix.S_IFBLK:
		return "blockdev"
	}
	return fmt.Sprintf("type%#o", mode&unix.S_IFMT)
}
