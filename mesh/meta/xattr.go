package meta

import (
	"context"
	"fmt"
	"sort"
	"syscall"
	"unicode/utf8"
)

const (
	maxXattrName  = 255       // XATTR_NAME_MAX
	maxXattrValue = 64 << 10  // XATTR_SIZE_MAX
	maxXattrTotal = 256 << 10 // all values of one inode: its record must stay well inside a message
)

// checkXattrName refuses names that the record cannot hold faithfully: JSON
// object keys are UTF-8.
func checkXattrName(name string) error {
	switch {
	case name == "", len(name) > maxXattrName:
		return syscall.ERANGE
	case !utf8.ValidString(name):
		return syscall.EINVAL
	}
	return nil
}

func (s *Store) getXattr(ctx context.Context, ino Ino, name string) ([]byte, error) {
	t := s.newTx(ctx)
	e, err := t.needInode(ino)
	if err != nil {
		return nil, err
	}
	v, ok := e.inode.Xattrs[name]
	if !ok {
		return nil, syscall.ENODATA
	}
	if v == nil {
		v = []byte{}
	}
	return v, nil
}

func (s *Store) listXattr(ctx context.Context, ino Ino) ([]string, error) {
	t := s.newTx(ctx)
	e, err := t.needInode(ino)
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(e.inode.Xattrs))
	for n := range e.inode.Xattrs {
		names = append(names, n)
	}
	sort.Strings(names)
	return names, nil
}

func (s *Store) setXattr(ctx context.Context, ino Ino, name string, value []byte, flags uint32) error {
	if flags&^(xattrCreate|xattrReplace) != 0 {
		return syscall.EINVAL
	}
	if err := checkXattrName(name); err != nil {
		return err
	}
	if len(value) > maxXattrValue {
		return syscall.E2BIG
	}
	unlock, err := s.locks.lock(ctx, ino)
	if err != nil {
		return err
	}
	defer unlock()
	return s.run(ctx, func(t *tx) error {
		e, err := t.needInode(ino)
		if err != nil {
			return err
		}
		r := e.inode
		old, exists := r.Xattrs[name]
		switch {
		case exists && flags&xattrCreate != 0:
			return syscall.EEXIST
		case !exists && flags&xattrReplace != 0:
			return syscall.ENODATA
		}
		total := len(value) - len(old)
		for n, v := range r.Xattrs {
			total += len(n) + len(v)
		}
		if !exists {
			total += len(name)
		}
		if total > maxXattrTotal {
			return fmt.Errorf("extended attributes of %d would take %d bytes: %w", ino, total, syscall.ENOSPC)
		}
		if r.Xattrs == nil {
			r.Xattrs = make(map[string][]byte)
		}
		r.Xattrs[name] = append([]byte{}, value...)
		r.Ctime = now()
		t.put(e)
		return nil
	})
}

func (s *Store) removeXattr(ctx context.Context, ino Ino, name string) error {
	if err := checkXattrName(name); err != nil {
		return err
	}
	unlock, err := s.locks.lock(ctx, ino)
	if err != nil {
		return err
	}
	defer unlock()
	return s.run(ctx, func(t *tx) error {
		e, err := t.needInode(ino)
		if err != nil {
			return err
		}
		if _, ok := e.inode.Xattrs[name]; !ok {
			return syscall.ENODATA
		}
		delete(e.inode.Xattrs, name)
		e.inode.Ctime = now()
		t.put(e)
		return nil
	})
}
