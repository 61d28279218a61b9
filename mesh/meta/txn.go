package meta

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"syscall"
	"time"
)

// maxAttempts bounds how often an operation is retried after conflicting
// with concurrent changes.
const maxAttempts = 50

// errAgain, returned by an operation's body, asks run to commit what the body
// staged and then run the body again: for work too big for one batch, done as
// a series of valid intermediate states.
var errAgain = errors.New("commit and continue")

// entry is one key as an operation read it and, if write is set, what the
// operation's commit stores there.
type entry struct {
	key   string
	rev   uint64 // revision read; 0 = never written (or not read: a fresh key)
	found bool   // held a value when read
	write bool
	del   bool // the write is a delete
	val   []byte

	// Decoded values; the one that is set is what a write stores.
	inode *inodeRec
	dent  *direntRec
	chunk chunkRec
}

// tx is one attempt of one operation: it caches what the attempt read, so
// each key is read once and written at most once, with the revision it was
// read at as the commit's expectation.
type tx struct {
	s    *Store
	ctx  context.Context
	ents map[string]*entry
}

func (s *Store) newTx(ctx context.Context) *tx {
	return &tx{s: s, ctx: ctx, ents: make(map[string]*entry)}
}

// run executes body in fresh transactions until one commits, retrying (with
// jittered backoff, at most maxAttempts times) when the commit conflicts with
// a concurrent change. An error from body other than errAgain or
// errConflict ends the operation without a commit.
func (s *Store) run(ctx context.Context, body func(t *tx) error) error {
	conflicts := 0
	backoff := time.Millisecond
	for {
		t := s.newTx(ctx)
		err := body(t)
		again := errors.Is(err, errAgain)
		var errno syscall.Errno
		switch {
		case (err == nil && t.staged() == 0) || errors.As(err, &errno):
			// An answer without a commit (an error, a lookup, a rename
			// of a name onto itself) rests on keys read one after
			// another; it holds only if none of them changed meanwhile,
			// which no commit expectation checks for it. Without this,
			// two clients both saw their rename of one directory
			// succeed, and a rename failed with ENOENT while its
			// source existed throughout.
			if verr := t.validate(); verr != nil {
				err = verr
			}
		case err == nil || again:
			err = t.commit()
		}
		// A conflict may also come from body, when what it read does not
		// hang together (see Blocks).
		if errors.Is(err, errConflict) {
			conflicts++
			if conflicts >= maxAttempts {
				return fmt.Errorf("gave up after %d attempts that conflicted with concurrent changes: %w", conflicts, err)
			}
			// Full jitter: contenders spread out instead of colliding again.
			if err := sleep(ctx, time.Duration(rand64(int64(backoff)))); err != nil {
				return err
			}
			backoff = min(2*backoff, 64*time.Millisecond)
			continue
		}
		if err != nil || !again {
			return err
		}
	}
}

func (t *tx) load(key string) (*entry, error) {
	if e, ok := t.ents[key]; ok {
		return e, nil
	}
	v, err := t.s.get(t.ctx, key)
	if err != nil {
		return nil, err
	}
	e := &entry{key: key, rev: v.rev, found: v.found, val: v.val}
	t.ents[key] = e
	return e, nil
}

// inode reads an inode; e.inode is nil if it does not exist.
func (t *tx) inode(ino Ino) (*entry, error) {
	e, err := t.load(inodeKey(ino))
	if err != nil || !e.found || e.inode != nil {
		return e, err
	}
	e.inode = new(inodeRec)
	if err := json.Unmarshal(e.val, e.inode); err != nil {
		return nil, fmt.Errorf("decode %s: %w", e.key, err)
	}
	return e, nil
}

// needInode reads an inode that must exist (ENOENT).
func (t *tx) needInode(ino Ino) (*entry, error) {
	e, err := t.inode(ino)
	if err != nil {
		return nil, err
	}
	if e.inode == nil {
		return nil, syscall.ENOENT
	}
	return e, nil
}

// needDir reads an inode that must be a directory (ENOENT, ENOTDIR).
func (t *tx) needDir(ino Ino) (*entry, error) {
	e, err := t.needInode(ino)
	if err != nil {
		return nil, err
	}
	if !e.inode.isDir() {
		return nil, syscall.ENOTDIR
	}
	if e.inode.Nlink == 0 {
		// Removed, and kept only for the handles still open on it: as
		// on Linux, nothing can be made in or moved into a dead
		// directory.
		return nil, syscall.ENOENT
	}
	return e, nil
}

// dirent reads a directory entry; e.dent is nil if it does not exist.
func (t *tx) dirent(parent Ino, name string) (*entry, error) {
	e, err := t.load(direntKey(parent, name))
	if err != nil || !e.found || e.dent != nil {
		return e, err
	}
	e.dent = new(direntRec)
	if err := json.Unmarshal(e.val, e.dent); err != nil {
		return nil, fmt.Errorf("decode %s: %w", e.key, err)
	}
	return e, nil
}

// chunk reads a block-map chunk; e.chunk is nil if it does not exist.
func (t *tx) chunk(ino Ino, c int64) (*entry, error) {
	e, err := t.load(chunkKey(ino, c))
	if err != nil || !e.found || e.chunk != nil {
		return e, err
	}
	if err := json.Unmarshal(e.val, &e.chunk); err != nil {
		return nil, fmt.Errorf("decode %s: %w", e.key, err)
	}
	return e, nil
}

// fresh stages a key that the operation knows was never written (a new
// inode: inode numbers are never reused), expecting revision 0.
func (t *tx) fresh(key string) *entry {
	e := &entry{key: key, write: true}
	t.ents[key] = e
	return e
}

// put stages e's decoded value. Putting an entry unchanged still guards it:
// the commit fails if the key changed since it was read.
func (t *tx) put(e *entry) { e.write, e.del = true, false }

// remove stages the deletion of e, if it exists.
func (t *tx) remove(e *entry) {
	e.inode, e.dent, e.chunk, e.val = nil, nil, nil, nil
	e.write, e.del = e.found, true
}

// commit writes every staged entry in one batch, inodes first: a reader that
// re-reads an inode after reading its other keys then notices any batch it
// overlapped (see Blocks).
func (t *tx) commit() error {
	var ops []op
	for _, e := range t.ents {
		if !e.write {
			continue
		}
		o := op{key: e.key, rev: e.rev, del: e.del}
		if !e.del {
			var v any
			switch {
			case e.inode != nil:
				v = e.inode
			case e.dent != nil:
				v = e.dent
			case e.chunk != nil:
				v = e.chunk
			}
			if v != nil {
				b, err := json.Marshal(v)
				if err != nil {
					return fmt.Errorf("encode %s: %w", e.key, err)
				}
				o.val = b
			} else {
				o.val = e.val
			}
		}
		ops = append(ops, o)
	}
	sort.Slice(ops, func(i, j int) bool {
		ri, rj := keyRank(ops[i].key), keyRank(ops[j].key)
		if ri != rj {
			return ri < rj
		}
		return ops[i].key < ops[j].key
	})
	return t.s.commit(t.ctx, ops)
}

func keyRank(key string) int {
	switch {
	case strings.HasPrefix(key, "i."):
		return 0
	case strings.HasPrefix(key, "d."):
		return 1
	case strings.HasPrefix(key, "b."):
		return 2
	}
	return 3
}

// staged counts the entries the commit will write.
func (t *tx) staged() int {
	n := 0
	for _, e := range t.ents {
		if e.write {
			n++
		}
	}
	return n
}

// validate re-reads every key the attempt read and fails with errConflict if
// any of them changed: then the reads were not all true at one moment.
func (t *tx) validate() error {
	for _, e := range t.ents {
		if e.write && e.rev == 0 && !e.found {
			continue // staged fresh, never read
		}
		v, err := t.s.get(t.ctx, e.key)
		if err != nil {
			return err
		}
		if v.rev != e.rev {
			return fmt.Errorf("%w: %s changed while the operation read", errConflict, e.key)
		}
	}
	return nil
}
