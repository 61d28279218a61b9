package meta

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/meshfs/meshfs/persist"
)

// The block map keeps one invariant that truncation and reclaim rely on: a
// file has no slot at or past ceil(Size/BlockSize), and the slot holding the
// end of the file has Len no longer than the file's bytes in it. So the
// chunks a file can have follow from its size (no listing needed), and bytes
// past the end of the file read as zeros after it grows again.

func ceilDiv(a, b uint64) uint64 { return (a + b - 1) / b }

// chunkListThreshold is how many chunk indices a block-map range may span
// before chunksIn lists the chunks that exist instead of reading each index:
// one read is a round trip to the stream leader, a listing a consumer's
// setup and teardown (a few milliseconds) plus the chunks it finds. A sparse
// file's size may span billions of indices with one chunk present.
const chunkListThreshold = 64

// indexedChunk is a block-map chunk that exists, with its index.
type indexedChunk struct {
	index int64
	entry *entry
}

// chunksIn returns the existing block-map chunks of ino with index in
// [lo, hi], in index order, as entries of t: their revisions become the
// commit's expectations like those of any key read. A listing may miss a
// chunk written after it, but every block-map change writes the inode too,
// so the inode's revision (read before, and checked by the commit or by
// Blocks) catches that.
func (t *tx) chunksIn(ino Ino, lo, hi int64) ([]indexedChunk, error) {
	if hi < lo {
		return nil, nil
	}
	indexes := make([]int64, 0, min(hi-lo+1, chunkListThreshold))
	if hi-lo < chunkListThreshold {
		for c := lo; c <= hi; c++ {
			indexes = append(indexes, c)
		}
	} else {
		prefix := chunkPrefix(ino)
		keys, err := t.s.scanFresh(t.ctx, prefix+">")
		if err != nil {
			return nil, fmt.Errorf("list block map of %d: %w", ino, err)
		}
		for key, v := range keys {
			c, err := strconv.ParseInt(strings.TrimPrefix(key, prefix), 10, 64)
			if err != nil {
				return nil, fmt.Errorf("block-map key %q: %w", key, err)
			}
			if c < lo || c > hi {
				continue
			}
			// What the listing read becomes what t.chunk finds, unless
			// the operation read the key already.
			if _, ok := t.ents[key]; !ok {
				t.ents[key] = &entry{key: key, rev: v.rev, found: true, val: v.val}
			}
			indexes = append(indexes, c)
		}
		slices.Sort(indexes)
	}
	var out []indexedChunk
	for _, c := range indexes {
		e, err := t.chunk(ino, c)
		if err != nil {
			return nil, err
		}
		if e.chunk != nil {
			out = append(out, indexedChunk{c, e})
		}
	}
	return out, nil
}

// slotCount is the number of slots a file of size bytes may use.
func (s *Store) slotCount(size uint64) int64 {
	return int64(ceilDiv(size, uint64(s.opts.BlockSize)))
}

// needFile reads an inode that must be a regular file (ENOENT, EISDIR, EINVAL).
func (t *tx) needFile(ino Ino) (*entry, error) {
	e, err := t.needInode(ino)
	if err != nil {
		return nil, err
	}
	switch {
	case e.inode.isDir():
		return nil, syscall.EISDIR
	case !e.inode.isReg():
		return nil, syscall.EINVAL
	}
	return e, nil
}

// shrink truncates the regular file e to newSize (< its size): it drops the
// slots past the new end, clamps the slot holding it and sets the size. The
// caller commits e. A file whose dropped slots span more chunks than fit in
// one batch next to the inode is cut down to an intermediate chunk boundary
// (a state between the old and the new size); shrink then reports done false
// and the caller commits and calls again.
func (t *tx) shrink(e *entry, newSize uint64) (done bool, err error) {
	r := e.inode
	oldSlots := t.s.slotCount(r.Size)
	if oldSlots == 0 || newSize >= r.Size {
		r.Size = min(r.Size, newSize)
		return true, nil
	}
	bs := int64(t.s.opts.BlockSize)
	target := newSize
	newSlots := t.s.slotCount(target)
	chunks, err := t.chunksIn(r.Ino, chunkOf(max(newSlots-1, 0)), chunkOf(oldSlots-1))
	if err != nil {
		return false, err
	}
	room := t.s.maxBatch - 1 - t.staged()
	if room < 1 {
		return false, fmt.Errorf("truncate %d: no room in the batch", r.Ino)
	}
	done = true
	if len(chunks) > room {
		// Drop the highest chunks now; the file ends at the lowest of
		// them, where no slot of a chunk kept can reach.
		chunks = chunks[len(chunks)-room:]
		lo := chunks[0].index
		target = uint64(lo * slotsPerChunk * bs)
		newSlots = lo * slotsPerChunk
		done = false
	}
	for _, ic := range chunks {
		ce := ic.entry
		changed := false
		for slot, ref := range ce.chunk {
			switch {
			case slot >= newSlots:
				delete(ce.chunk, slot)
				r.Stored -= min(r.Stored, uint64(ref.Len))
				changed = true
			case slot == newSlots-1:
				if keep := int64(target) - slot*bs; int64(ref.Len) > keep {
					r.Stored -= min(r.Stored, uint64(ref.Len)-uint64(keep))
					ref.Len = uint32(keep)
					ce.chunk[slot] = ref
					changed = true
				}
			}
		}
		switch {
		case len(ce.chunk) == 0:
			t.remove(ce)
		case changed:
			t.put(ce)
		}
	}
	r.Size = target
	return done, nil
}

func (s *Store) setAttr(ctx context.Context, ino Ino, in SetAttrIn) (Attr, error) {
	unlock, err := s.locks.lock(ctx, ino)
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
		r := e.inode
		ts := now()
		if in.Size != nil {
			switch {
			case r.isDir():
				return syscall.EISDIR
			case !r.isReg():
				return syscall.EINVAL
			}
			if *in.Size < r.Size {
				done, err := t.shrink(e, *in.Size)
				if err != nil {
					return err
				}
				if !done {
					t.put(e)
					return errAgain
				}
			}
			// Growing leaves a hole: the slots past the old end are
			// absent, and the old last slot's Len already stops at it.
			r.Size = *in.Size
			if in.Mtime == nil {
				r.Mtime = ts // as truncate(2) does
			}
		}
		if in.Mode != nil {
			r.Mode = r.Mode&syscall.S_IFMT | *in.Mode&0o7777
		}
		if in.Uid != nil {
			r.Uid = *in.Uid
		}
		if in.Gid != nil {
			r.Gid = *in.Gid
		}
		if in.Atime != nil {
			r.Atime = *in.Atime
		}
		if in.Mtime != nil {
			r.Mtime = *in.Mtime
		}
		r.Ctime = ts
		t.put(e)
		out = r.attr()
		return nil
	})
	return out, err
}

func (s *Store) blocks(ctx context.Context, ino Ino, first, last int64) (map[int64]BlockRef, error) {
	first = max(first, 0)
	var out map[int64]BlockRef
	err := s.run(ctx, func(t *tx) error {
		out = make(map[int64]BlockRef)
		e, err := t.needFile(ino)
		if err != nil {
			return err
		}
		last := min(last, s.slotCount(e.inode.Size)-1)
		if last < first {
			return nil
		}
		chunks, err := t.chunksIn(ino, chunkOf(first), chunkOf(last))
		if err != nil {
			return err
		}
		for _, ic := range chunks {
			ce := ic.entry
			for slot, sr := range ce.chunk {
				if slot < first || slot > last {
					continue
				}
				ref, err := sr.ref()
				if err != nil {
					return fmt.Errorf("decode %s slot %d: %w", ce.key, slot, err)
				}
				out[slot] = ref
			}
		}
		// Every change of a file's block map writes its inode in the same
		// batch, and batches are applied in isolation: if the inode is
		// unchanged now, the chunks read belong to the size read.
		v, err := s.get(t.ctx, e.key)
		if err != nil {
			return err
		}
		if v.rev != e.rev {
			return errConflict
		}
		return nil
	})
	return out, err
}

func (s *Store) commitWrite(ctx context.Context, ino Ino, slots map[int64]BlockRef, minSize uint64, mtime int64) (Attr, error) {
	byChunk := make(map[int64][]int64)
	for slot, ref := range slots {
		if slot < 0 {
			return Attr{}, fmt.Errorf("slot %d: %w", slot, syscall.EINVAL)
		}
		if ref.Len > uint32(s.opts.BlockSize) {
			return Attr{}, fmt.Errorf("slot %d: length %d past the block size %d: %w", slot, ref.Len, s.opts.BlockSize, syscall.EINVAL)
		}
		byChunk[chunkOf(slot)] = append(byChunk[chunkOf(slot)], slot)
	}
	if len(byChunk)+1 > s.maxBatch {
		return Attr{}, fmt.Errorf("%d block-map chunks in one commit, at most %d: %w", len(byChunk), s.maxBatch-1, syscall.EFBIG)
	}
	bs := int64(s.opts.BlockSize)
	unlock, err := s.locks.lock(ctx, ino)
	if err != nil {
		return Attr{}, err
	}
	defer unlock()
	var out Attr
	err = s.run(ctx, func(t *tx) error {
		e, err := t.needFile(ino)
		if err != nil {
			return err
		}
		r := e.inode
		size := max(r.Size, minSize)
		nSlots := s.slotCount(size)
		for c, list := range byChunk {
			ce, err := t.chunk(ino, c)
			if err != nil {
				return err
			}
			if ce.chunk == nil {
				ce.chunk = make(chunkRec, len(list))
			}
			for _, slot := range list {
				ref := slots[slot]
				if old, ok := ce.chunk[slot]; ok {
					r.Stored -= min(r.Stored, uint64(old.Len))
				}
				if ref.ID.IsZero() {
					delete(ce.chunk, slot)
					continue
				}
				if slot >= nSlots {
					return fmt.Errorf("slot %d lies past the file size %d: %w", slot, size, syscall.EINVAL)
				}
				// Bytes of the block past the end of the file must not
				// reappear if the file grows later.
				ref.Len = uint32(min(int64(ref.Len), int64(size)-slot*bs))
				ce.chunk[slot] = toSlotRec(ref)
				r.Stored += uint64(ref.Len)
			}
			if len(ce.chunk) == 0 {
				t.remove(ce)
			} else {
				t.put(ce)
			}
		}
		r.Size = size
		// ctime never goes back: an unlink, chmod or rename may have
		// set a later one since the data was written.
		r.Mtime, r.Ctime = mtime, max(r.Ctime, mtime)
		t.put(e)
		out = r.attr()
		return nil
	})
	return out, err
}

func (s *Store) reclaim(ctx context.Context, ino Ino) error {
	unlock, err := s.locks.lock(ctx, ino)
	if err != nil {
		return err
	}
	defer unlock()
	return s.run(ctx, func(t *tx) error {
		e, err := t.inode(ino)
		if err != nil || e.inode == nil || e.inode.Nlink > 0 {
			return err
		}
		if e.inode.isReg() {
			// The block map goes first, the inode last, so that a crash
			// half-way leaves an inode that a later Reclaim finishes,
			// never chunks that nothing points at. No name points at an
			// inode with no links, so the steps in between are invisible.
			done, err := t.shrink(e, 0)
			if err != nil {
				return err
			}
			if !done {
				t.put(e)
				return errAgain
			}
		}
		t.remove(e)
		return nil
	})
}

// referencedBlocks reads every block-map chunk (the b.<ino>.<chunk> keys) and
// calls fn for each slot's block. fn's error comes back as is, the store's
// own wrapped.
func (s *Store) referencedBlocks(ctx context.Context, fn func(id persist.BlockID) error) error {
	const filter = "b.>"
	var bad, fnErr error
	err := s.scan(ctx, filter, func(key string, val []byte, _ uint64) bool {
		var c chunkRec
		if err := json.Unmarshal(val, &c); err != nil {
			bad = fmt.Errorf("decode %s: %w", key, err)
			return false
		}
		for slot, sr := range c {
			ref, err := sr.ref()
			if err != nil {
				bad = fmt.Errorf("decode %s slot %d: %w", key, slot, err)
				return false
			}
			if err := fn(ref.ID); err != nil {
				fnErr = err
				return false
			}
		}
		return true
	})
	switch {
	case fnErr != nil:
		return fnErr
	case err == nil:
		err = bad
	}
	if err != nil {
		return fmt.Errorf("referenced blocks: %w", err)
	}
	return nil
}
