package posixdiff

import (
	"crypto/sha256"
	"fmt"
	"path"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Entry is one object of a tree as Snapshot saw it.
type Entry struct {
	Path string // relative to the root; "." for the root
	// Text is everything comparable about the object, as "key=value"
	// words: type, mode, link count, owner, size (not of directories),
	// symlink target, content hash, user.* and trusted.* xattrs with
	// value hashes, and
	// a directory's entries with their d_type. An error reading any of it
	// is recorded in its place, so it compares too.
	Text string
	Data []byte // a regular file's content, to say where two differ
}

// Snapshot walks the tree under root without following symlinks and
// returns its objects sorted by path. It reads every file in full.
func Snapshot(root string) []Entry {
	var out []Entry
	var walk func(rel string)
	walk = func(rel string) {
		e, children := snapshotOne(root, rel)
		out = append(out, e)
		for _, c := range children {
			walk(path.Join(rel, c))
		}
	}
	walk(".")
	return out
}

// snapshotOne describes one object and, for a directory, returns the names
// in it to walk (sorted, as listDir sorts).
func snapshotOne(root, rel string) (Entry, []string) {
	p := filepath.Join(root, rel)
	e := Entry{Path: rel}
	var words []string
	var st unix.Stat_t
	if err := retry(func() error { return unix.Lstat(p, &st) }); err != nil {
		e.Text = "lstat=" + errnoName(errnoOf(err))
		return e, nil
	}
	if rel == "." {
		// The root's own owner, mode and links belong to the run, not to
		// the sequence: each side's was made by the runner.
		words = append(words, "root")
	} else {
		words = append(words, strings.Fields(statString(&st))...)
	}
	var children []string
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		data, err := readPath(p)
		if err != nil {
			words = append(words, "content="+errnoName(errnoOf(err)))
		} else {
			e.Data = data
			sum := sha256.Sum256(data)
			words = append(words, fmt.Sprintf("sha256=%x", sum[:8]))
		}
	case unix.S_IFLNK:
		buf := make([]byte, 4096)
		var n int
		err := retry(func() (err error) { n, err = unix.Readlink(p, buf); return err })
		if err != nil {
			words = append(words, "target="+errnoName(errnoOf(err)))
		} else {
			words = append(words, fmt.Sprintf("target=%q", buf[:n]))
		}
	case unix.S_IFDIR:
		names, err := listDir(p)
		if err != nil {
			words = append(words, "entries="+errnoName(errnoOf(err)))
			break
		}
		words = append(words, "entries="+strings.Join(names, ","))
		for _, n := range names {
			children = append(children, n[:strings.LastIndexByte(n, '(')])
		}
	}
	words = append(words, xattrWords(p)...)
	e.Text = strings.Join(words, " ")
	return e, children
}

func readPath(p string) ([]byte, error) {
	var fd int
	err := retry(func() (err error) {
		fd, err = unix.Open(p, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		return err
	})
	if err != nil {
		return nil, err
	}
	data, err := readAll(fd)
	if cerr := unix.Close(fd); err == nil {
		err = cerr
	}
	return data, err
}

// xattrWords renders a path's user.* and trusted.* xattrs as
// "xattr:NAME=lenN:sha" words.
func xattrWords(p string) []string {
	names, err := userXattrs(p)
	if err != nil {
		return []string{"xattrs=" + errnoName(errnoOf(err))}
	}
	var words []string
	for _, name := range names {
		r := getxattrSized(func(dest []byte) (int, error) { return unix.Lgetxattr(p, name, dest) }, -1)
		if r.Errno != 0 {
			words = append(words, fmt.Sprintf("xattr:%s=%s", name, errnoName(r.Errno)))
			continue
		}
		sum := sha256.Sum256(r.Data)
		words = append(words, fmt.Sprintf("xattr:%s=len%d:%x", name, len(r.Data), sum[:8]))
	}
	return words
}

// TreeDiff is the first difference between two snapshots.
type TreeDiff struct {
	Path  string
	Field string // the first differing key ("size", "sha256", "xattr:user.a", …), or "missing"
	A, B  string // the two objects' Text ("" for a missing object)
	Data  string // for differing contents, where they first differ
}

// DiffSnapshots returns the first difference between a and b in path
// order, or nil if they are the same.
func DiffSnapshots(a, b []Entry) *TreeDiff {
	i, j := 0, 0
	for i < len(a) || j < len(b) {
		switch {
		case j >= len(b) || (i < len(a) && a[i].Path < b[j].Path):
			return &TreeDiff{Path: a[i].Path, Field: "missing", A: a[i].Text}
		case i >= len(a) || b[j].Path < a[i].Path:
			return &TreeDiff{Path: b[j].Path, Field: "missing", B: b[j].Text}
		}
		if a[i].Text != b[j].Text {
			d := &TreeDiff{Path: a[i].Path, Field: firstDifferentKey(a[i].Text, b[j].Text), A: a[i].Text, B: b[j].Text}
			if d.Field == "sha256" {
				d.Data = DataDiff(a[i].Data, b[j].Data)
			}
			return d
		}
		i, j = i+1, j+1
	}
	return nil
}

func firstDifferentKey(a, b string) string {
	wa, wb := strings.Fields(a), strings.Fields(b)
	for k := 0; k < max(len(wa), len(wb)); k++ {
		switch {
		case k >= len(wa):
			return key(wb[k])
		case k >= len(wb):
			return key(wa[k])
		case wa[k] != wb[k]:
			if key(wa[k]) != key(wb[k]) {
				return key(wa[k]) + "/" + key(wb[k])
			}
			return key(wa[k])
		}
	}
	return ""
}

func key(word string) string {
	if i := strings.IndexByte(word, '='); i >= 0 {
		return word[:i]
	}
	return word
}
