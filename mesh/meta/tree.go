package meta

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"syscall"
	"time"
)

// maxDepth bounds the walk from a directory up to the root.
const maxDepth = 4096

func now() int64 { return time.Now().UnixNano() }

func (s *Store) getAttr(ctx context.Context, ino Ino) (Attr, error) {
	t := s.newTx(ctx)
	e, err := t.needInode(ino)
	if err != nil {
		return Attr{}, err
	}
	return e.inode.attr(), nil
}

func (s *Store) lookup(ctx context.Context, parent Ino, name string) (Attr, error) {
	if err := checkName(name); err != nil {
		return Attr{}, err
	}
	var out Attr
	// Through run: the name and its inode are read one after the other,
	// and the answer is checked to have held at one moment (see run).
	err := s.run(ctx, func(t *tx) error {
		d, err := t.dirent(parent, name)
		if err != nil {
			return err
		}
		if d.dent == nil {
			// Tell a missing name from a missing or non-directory parent.
			if _, err := t.needDir(parent); err != nil {
				return err
			}
			return syscall.ENOENT
		}
		e, err := t.needInode(d.dent.Ino)
		if err != nil {
			return err
		}
		out = e.inode.attr()
		return nil
	})
	if err != nil {
		return Attr{}, err
	}
	return out, nil
}

func (s *Store) readDir(ctx context.Context, parent Ino) ([]DirEntry, error) {
	t := s.newTx(ctx)
	// Not needDir: a removed directory kept for its open handles lists
	// as empty.
	e, err := t.needInode(parent)
	if err != nil {
		return nil, err
	}
	if !e.inode.isDir() {
		return nil, syscall.ENOTDIR
	}
	prefix := direntPrefix(parent)
	keys, err := s.scanFresh(ctx, prefix+">")
	if err != nil {
		return nil, err
	}
	out := make([]DirEntry, 0, len(keys))
	for key, v := range keys {
		name, err := direntName(prefix, key)
		if err != nil {
			return nil, err
		}
		var d direntRec
		if err := json.Unmarshal(v.val, &d); err != nil {
			return nil, fmt.Errorf("decode %s: %w", key, err)
		}
		out = append(out, DirEntry{Name: name, Ino: d.Ino, Mode: d.Mode})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// dirEmpty reports whether directory ino has no entries, as of a moment
// after the call (see scanFresh: a lagging replica's answer would let rmdir
// remove a directory that just got an entry). Callers must have read the
// directory's inode before, and write it (or delete it) in their commit:
// every change to a directory's entries also writes its inode, so that
// expectation keeps the answer true until the commit.
func (s *Store) dirEmpty(ctx context.Context, ino Ino) (bool, error) {
	keys, err := s.scanFresh(ctx, direntPrefix(ino)+">")
	if err != nil {
		return false, err
	}
	return len(keys) == 0, nil
}

// touchDir records a change of a directory's entries.
func touchDir(t *tx, e *entry, ts int64) {
	e.inode.Mtime, e.inode.Ctime = ts, ts
	t.put(e)
}

// mknod makes a new inode (rec, without Ino) named name in parent.
func (s *Store) mknod(ctx context.Context, parent Ino, name string, rec inodeRec) (Attr, error) {
	if err := checkName(name); err != nil {
		return Attr{}, err
	}
	ino, err := s.newIno(ctx)
	if err != nil {
		return Attr{}, err
	}
	unlock, err := s.locks.lock(ctx, parent)
	if err != nil {
		return Attr{}, err
	}
	defer unlock()
	rec.Ino = ino
	if rec.isDir() {
		rec.Parent = parent
	}
	var out Attr
	err = s.run(ctx, func(t *tx) error {
		p, err := t.needDir(parent)
		if err != nil {
			return err
		}
		d, err := t.dirent(parent, name)
		if err != nil {
			return err
		}
		if d.dent != nil {
			return syscall.EEXIST
		}
		ts := now()
		r := rec
		r.Atime, r.Mtime, r.Ctime = ts, ts, ts
		if p.inode.Mode&syscall.S_ISGID != 0 {
			// A setgid directory passes its group on, and its setgid
			// bit to new directories, as local file systems do. (The
			// kernel already took S_ISGID off a file's mode where the
			// creator is not in that group.)
			r.Gid = p.inode.Gid
			if r.isDir() {
				r.Mode |= syscall.S_ISGID
			}
		}
		t.fresh(inodeKey(ino)).inode = &r
		d.dent = &direntRec{Ino: ino, Mode: r.Mode & syscall.S_IFMT}
		t.put(d)
		if r.isDir() {
			p.inode.Nlink++ // the new directory's ".."
		}
		touchDir(t, p, ts)
		out = r.attr()
		return nil
	})
	return out, err
}

func (s *Store) link(ctx context.Context, ino, newParent Ino, newName string) (Attr, error) {
	if err := checkName(newName); err != nil {
		return Attr{}, err
	}
	unlock, err := s.locks.lock(ctx, ino, newParent)
	if err != nil {
		return Attr{}, err
	}
	defer unlock()
	var out Attr
	err = s.run(ctx, func(t *tx) error {
		e, err := t.needInode(ino)
		if err != nil {
			return err
		}
		if e.inode.isDir() {
			return syscall.EPERM
		}
		if e.inode.Nlink == 0 {
			return syscall.ENOENT // unlinked; only open handles keep it
		}
		p, err := t.needDir(newParent)
		if err != nil {
			return err
		}
		d, err := t.dirent(newParent, newName)
		if err != nil {
			return err
		}
		if d.dent != nil {
			return syscall.EEXIST
		}
		ts := now()
		e.inode.Nlink++
		e.inode.Ctime = ts
		t.put(e)
		d.dent = &direntRec{Ino: ino, Mode: e.inode.Mode & syscall.S_IFMT}
		t.put(d)
		touchDir(t, p, ts)
		out = e.inode.attr()
		return nil
	})
	return out, err
}

// dropLink lowers a non-directory's link count after one of its names went.
func dropLink(t *tx, e *entry, ts int64) {
	if e.inode.Nlink > 0 {
		e.inode.Nlink--
	}
	e.inode.Ctime = ts
	t.put(e)
}

// dropSubdir lowers a directory's link count after a subdirectory left it.
func dropSubdir(e *entry) {
	if e.inode.Nlink > 2 {
		e.inode.Nlink--
	}
}

func (s *Store) unlink(ctx context.Context, parent Ino, name string) (Attr, error) {
	if err := checkName(name); err != nil {
		return Attr{}, err
	}
	unlock, err := s.locks.lock(ctx, parent)
	if err != nil {
		return Attr{}, err
	}
	defer unlock()
	var out Attr
	err = s.run(ctx, func(t *tx) error {
		p, err := t.needDir(parent)
		if err != nil {
			return err
		}
		d, err := t.dirent(parent, name)
		if err != nil {
			return err
		}
		if d.dent == nil {
			return syscall.ENOENT
		}
		if d.dent.Mode&syscall.S_IFMT == syscall.S_IFDIR {
			return syscall.EISDIR
		}
		e, err := t.inode(d.dent.Ino)
		if err != nil {
			return err
		}
		if e.inode != nil && e.inode.isDir() {
			return syscall.EISDIR
		}
		ts := now()
		out = Attr{Ino: d.dent.Ino}
		t.remove(d)
		touchDir(t, p, ts)
		if e.inode != nil { // else the name was dangling: removing it heals that
			dropLink(t, e, ts)
			out = e.inode.attr()
		}
		return nil
	})
	return out, err
}

func (s *Store) rmdir(ctx context.Context, parent Ino, name string) (Attr, error) {
	if err := checkName(name); err != nil {
		return Attr{}, err
	}
	unlock, err := s.locks.lock(ctx, parent)
	if err != nil {
		return Attr{}, err
	}
	defer unlock()
	var out Attr
	err = s.run(ctx, func(t *tx) error {
		out = Attr{}
		p, err := t.needDir(parent)
		if err != nil {
			return err
		}
		d, err := t.dirent(parent, name)
		if err != nil {
			return err
		}
		if d.dent == nil {
			return syscall.ENOENT
		}
		e, err := t.inode(d.dent.Ino)
		if err != nil {
			return err
		}
		isDir := d.dent.Mode&syscall.S_IFMT == syscall.S_IFDIR
		if e.inode != nil {
			isDir = e.inode.isDir()
		}
		if !isDir {
			return syscall.ENOTDIR
		}
		if e.inode != nil {
			empty, err := s.dirEmpty(t.ctx, d.dent.Ino)
			if err != nil {
				return err
			}
			if !empty {
				return syscall.ENOTEMPTY
			}
		}
		ts := now()
		t.remove(d)
		dropSubdir(p)
		touchDir(t, p, ts)
		if e.inode != nil { // else the name was dangling: removing it heals that
			unlinkDir(t, e, ts)
			out = e.inode.attr()
		}
		return nil
	})
	return out, err
}

// unlinkDir takes an empty directory's last link away and keeps its inode,
// at nlink 0, for the handles still open on it: they can fstat it, list it
// (empty) and use its xattrs until the last one closes, and the caller
// then Reclaims it, as an unlinked file's.
func unlinkDir(t *tx, e *entry, ts int64) {
	e.inode.Nlink = 0
	e.inode.Ctime = max(e.inode.Ctime, ts)
	t.put(e)
}

func (s *Store) rename(ctx context.Context, oldParent Ino, oldName string, newParent Ino, newName string, flags uint32) (replaced Attr, ok bool, err error) {
	if flags&^renameNoReplace != 0 {
		return Attr{}, false, syscall.EINVAL // RENAME_EXCHANGE, RENAME_WHITEOUT: not supported
	}
	if err := checkName(oldName); err != nil {
		return Attr{}, false, err
	}
	if err := checkName(newName); err != nil {
		return Attr{}, false, err
	}
	unlock, err := s.locks.lock(ctx, oldParent, newParent)
	if err != nil {
		return Attr{}, false, err
	}
	defer unlock()
	err = s.run(ctx, func(t *tx) error {
		replaced, ok = Attr{}, false
		oldP, err := t.needDir(oldParent)
		if err != nil {
			return err
		}
		newP, err := t.needDir(newParent)
		if err != nil {
			return err
		}
		sd, err := t.dirent(oldParent, oldName)
		if err != nil {
			return err
		}
		if sd.dent == nil {
			return syscall.ENOENT
		}
		srcIno := sd.dent.Ino
		se, err := t.needInode(srcIno)
		if err != nil {
			return err
		}
		srcDir := se.inode.isDir()
		dd, err := t.dirent(newParent, newName)
		if err != nil {
			return err
		}
		var de *entry // the inode replaced, if any
		if dd.dent != nil {
			// As Linux: NOREPLACE fails on any existing target, even the
			// source's own inode.
			if flags&renameNoReplace != 0 {
				return syscall.EEXIST
			}
			if dd.dent.Ino == srcIno {
				return nil // both names are the same file: nothing to do
			}
			if de, err = t.inode(dd.dent.Ino); err != nil {
				return err
			}
			dstDir := dd.dent.Mode&syscall.S_IFMT == syscall.S_IFDIR
			if de.inode != nil {
				dstDir = de.inode.isDir()
			}
			switch {
			case srcDir && !dstDir:
				return syscall.ENOTDIR
			case !srcDir && dstDir:
				return syscall.EISDIR
			case dstDir && dd.dent.Ino == oldParent:
				// The target is the directory the source is in: not
				// empty. (Said before any emptiness check, whose answer
				// could not be trusted here: the source's parent and
				// the replaced directory would be one entry.)
				return syscall.ENOTEMPTY
			case dstDir && de.inode != nil:
				empty, err := s.dirEmpty(t.ctx, dd.dent.Ino)
				if err != nil {
					return err
				}
				if !empty {
					return syscall.ENOTEMPTY
				}
			}
		}
		if srcDir && newParent != oldParent {
			if err := t.guardNotUnder(newParent, srcIno); err != nil {
				return err
			}
		}

		ts := now()
		t.remove(sd)
		if dd.dent != nil && de != nil && de.inode != nil {
			if de.inode.isDir() {
				// An empty directory is unlinked as by Rmdir.
				dropSubdir(newP)
				unlinkDir(t, de, ts)
				replaced = de.inode.attr()
			} else {
				dropLink(t, de, ts)
				replaced = de.inode.attr()
			}
			ok = true
		}
		dd.dent = &direntRec{Ino: srcIno, Mode: se.inode.Mode & syscall.S_IFMT}
		t.put(dd)
		se.inode.Ctime = ts
		if srcDir && newParent != oldParent {
			se.inode.Parent = newParent
			dropSubdir(oldP)
			newP.inode.Nlink++
		}
		t.put(se)
		touchDir(t, oldP, ts)
		touchDir(t, newP, ts)
		return nil
	})
	if err != nil {
		return Attr{}, false, err
	}
	return replaced, ok, nil
}

// guardNotUnder fails with EINVAL if dir is ino or lies below it. It walks up
// the parent pointers and stages every directory on the way unchanged, so
// that a concurrent move of any of them (which could make the answer wrong
// and build a cycle) conflicts with this commit.
func (t *tx) guardNotUnder(dir, ino Ino) error {
	cur := dir
	for depth := 0; ; depth++ {
		if cur == ino {
			return syscall.EINVAL
		}
		if cur == RootIno {
			return nil // the root never moves: no need to guard it
		}
		if depth >= maxDepth {
			return fmt.Errorf("directory %d: no root within %d levels: %w", dir, maxDepth, syscall.ELOOP)
		}
		e, err := t.needDir(cur)
		if err != nil {
			return err
		}
		t.put(e)
		if e.inode.Parent == 0 || e.inode.Parent == cur {
			return fmt.Errorf("directory %d has no parent pointer: %w", cur, syscall.EIO)
		}
		cur = e.inode.Parent
	}
}

// maxSymlinkLen is PATH_MAX: the longest target a symlink may hold.
const maxSymlinkLen = 4096

func errSymlinkTarget(target string) error {
	if target == "" {
		return syscall.ENOENT // as symlink(2) with an empty target
	}
	return syscall.ENAMETOOLONG
}
