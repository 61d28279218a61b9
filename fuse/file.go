package fuse

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"syscall"
	"time"

	"github.com/meshfs/meshfs/mesh/meta"
	"github.com/meshfs/meshfs/persist"
)

// handle is one open file descriptor of a regular file (a FUSE file handle).
// All handles of one inode on a mount share one fileState.
type handle struct {
	st *fileState
}

// slotBuf is the content of one slot held in memory: the slot's bytes from
// offset 0 to len(data). cap(data) is what it costs the write buffer.
type slotBuf struct {
	data []byte
	// gen orders the buffers of a slot: a newer write to a slot whose
	// older buffer is still uploading makes a newer buffer, and only the
	// newest upload's BlockRef may be committed.
	gen uint64
	// mtime is the Unix ns of the last write into the buffer.
	mtime int64
	// inFlight is set while the buffer is being uploaded, failed when its
	// last upload failed, noSpace when it failed because too few nodes had
	// room; all guarded by fileState.mu.
	inFlight, failed, noSpace bool
}

// pendingRef is a block uploaded for a slot and not yet committed.
type pendingRef struct {
	ref   meta.BlockRef
	gen   uint64
	mtime int64 // of the last write into the uploaded buffer
}

// fileState is the write-back and read state of one open regular file on
// one mount, shared by all its open handles so they see each other's
// unflushed writes.
//
// A slot's current content is, in order of precedence: its dirty buffer,
// its newest uploading buffer, its uploaded-but-uncommitted block (pending),
// its committed block (refs), or nothing (a hole, reading as zeros).
type fileState struct {
	m   *FS
	ino meta.Ino

	// Guarded by m.filesMu.
	opens   int
	reclaim bool // unlinked to nlink 0 while open: reclaim at the last release

	// flushMu makes commits and truncations of the file happen one at a
	// time, so a truncation cannot slip between a flush and its commit.
	flushMu sync.Mutex

	mu        sync.Mutex
	uploaded  sync.Cond // broadcast whenever an upload ends
	size      int64     // max of the committed size and the end of local writes
	dirty     map[int64]*slotBuf
	uploading map[int64]*slotBuf // newest upload in flight per slot
	inflight  int                // uploads in flight, older ones included
	pending   map[int64]pendingRef
	refs      map[int64]meta.BlockRef // committed block map; nil until loaded
	attr      meta.Attr               // as last read from the metadata (lastAttr)
	refsGen   uint64                  // bumped when refs is invalidated, so a slow load cannot install a stale map
	gen       uint64                  // last slotBuf generation handed out
	seq       uint64                  // bumped by every local change of size or content
	lastWrite int64                   // Unix ns of the last write: the mtime the commit records
	readEnd   int64                   // end of the last read, to detect sequential reading
	dropped   bool                    // last handle released; late uploads record nothing
	// discardedGen is the last slotBuf generation a failed close threw
	// away: uploads of it or older ones that land later record nothing.
	discardedGen uint64
	// closeFailed is set when a close(2) fails and cleared when a flush
	// succeeds: data still here at the last release is then not committed.
	closeFailed bool
}

func newFileState(m *FS, ino meta.Ino) *fileState {
	st := &fileState{
		m:         m,
		ino:       ino,
		dirty:     make(map[int64]*slotBuf),
		uploading: make(map[int64]*slotBuf),
		pending:   make(map[int64]pendingRef),
	}
	st.uploaded.L = &st.mu
	return st
}

// acquireFile returns the inode's fileState, creating it, and counts one
// more open handle. Every call must be paired with releaseFile.
func (m *FS) acquireFile(ino meta.Ino) *fileState {
	m.filesMu.Lock()
	defer m.filesMu.Unlock()
	st := m.files[ino]
	if st == nil {
		st = newFileState(m, ino)
		m.files[ino] = st
	}
	st.opens++
	return st
}

// openFile opens a handle on ino. The file's size is refreshed from the
// metadata unless this mount holds unflushed data for it, so a file opened
// after another mount's close sees that mount's writes.
//
// A handle opened for reading loads the block map at once. Another mount
// may unlink the file, or rename another over it (an editor's save), and
// reclaim the inode while it is open here: the blocks stay on the nodes for
// the collector's grace period, so with the map in hand the handle goes on
// reading the content it opened.
func (m *FS) openFile(ctx context.Context, ino meta.Ino, forRead bool) (*handle, error) {
	st := m.acquireFile(ino)
	seq := st.seqNow()
	mctx, cancel := metaCtx(ctx)
	attr, err := m.meta.GetAttr(mctx, ino)
	cancel()
	if err == nil {
		st.refresh(seq, attr)
		if forRead {
			err = st.loadRefs(ctx)
		}
	}
	if errors.Is(err, syscall.ENOENT) {
		// The kernel's cached name led to an inode another mount has
		// removed since. ESTALE makes the kernel look the name up again
		// and retry the open, which then finds what the name holds now.
		err = fmt.Errorf("%w (inode removed by another mount)", syscall.ESTALE)
	}
	if err != nil {
		m.releaseFile(st)
		return nil, fmt.Errorf("open inode %d: %w", ino, err)
	}
	st.mu.Lock()
	st.attr = attr
	st.mu.Unlock()
	return &handle{st: st}, nil
}

// openCreated opens a handle on a file this mount has just created, whose
// attributes are known without asking again.
func (m *FS) openCreated(attr meta.Attr) *handle {
	st := m.acquireFile(attr.Ino)
	st.mu.Lock()
	st.attr = attr
	if !st.hasLocalDataLocked() {
		st.size = int64(attr.Size)
		st.invalidateRefsLocked()
	}
	st.mu.Unlock()
	return &handle{st: st}
}

// fileFor returns the inode's fileState if a handle is open on this mount.
func (m *FS) fileFor(ino meta.Ino) *fileState {
	m.filesMu.Lock()
	defer m.filesMu.Unlock()
	return m.files[ino]
}

// releaseFile drops one handle's reference. At the last one, data written
// since the last close is committed (see flushAtRelease), what is left is
// dropped, and an inode unlinked while open is reclaimed.
func (m *FS) releaseFile(st *fileState) {
	m.filesMu.Lock()
	if st.opens > 1 {
		// Not the last: deciding and counting down under one lock, so
		// two releases racing cannot both take the other for the last.
		st.opens--
		m.filesMu.Unlock()
		return
	}
	m.filesMu.Unlock()
	// The commit happens before the state leaves m.files, so an open
	// racing this release either shares the state or reads the file from
	// the metadata after the commit.
	st.flushAtRelease()

	m.filesMu.Lock()
	st.opens--
	if st.opens > 0 {
		// Opened again meanwhile: the new handle keeps the state.
		m.filesMu.Unlock()
		return
	}
	if m.files[st.ino] == st {
		delete(m.files, st.ino)
	}
	reclaim := st.reclaim
	m.filesMu.Unlock()

	st.drop()
	if reclaim {
		m.reclaim(m.ctx, st.ino)
	}
}

// reclaim deletes an inode left with no link. On failure the name is gone
// all the same; the inode stays behind as garbage, which is logged.
func (m *FS) reclaim(ctx context.Context, ino meta.Ino) {
	mctx, cancel := metaCtx(ctx)
	defer cancel()
	if err := m.meta.Reclaim(mctx, ino); err != nil {
		m.log.Error("meshfs: reclaim of an inode with no link left failed", "ino", ino, "err", err)
	}
}

// unlinked is told the attributes of an inode that lost a name. An inode
// left with no link is reclaimed now, or at its last release on this mount
// if it is open here, so open handles keep reading it.
func (m *FS) unlinked(ctx context.Context, attr meta.Attr) {
	if attr.Ino == 0 || attr.Nlink != 0 {
		return // a dangling name (no inode), or links left
	}
	m.filesMu.Lock()
	if st := m.files[attr.Ino]; st != nil {
		st.reclaim = true
		m.filesMu.Unlock()
		return
	}
	if d := m.dirs[attr.Ino]; d != nil {
		d.reclaim = true
		m.filesMu.Unlock()
		return
	}
	m.filesMu.Unlock()
	m.reclaim(ctx, attr.Ino)
}

// spill starts uploading every dirty slot of every open file, to make room
// in a full write buffer. Without it, a writer waiting for room could wait
// forever for data that is uploaded only at a close that never comes.
func (m *FS) spill() {
	m.filesMu.Lock()
	defer m.filesMu.Unlock()
	for _, st := range m.files {
		st.mu.Lock()
		for slot := range st.dirty {
			st.startUploadLocked(slot)
		}
		st.mu.Unlock()
	}
}

func (st *fileState) seqNow() uint64 {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.seq
}

// refresh adopts the committed attributes read after seqNow returned seq,
// unless local changes since then (or unflushed data) make them stale.
func (st *fileState) refresh(seq uint64, attr meta.Attr) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.seq != seq || st.hasLocalDataLocked() {
		return
	}
	st.size = int64(attr.Size)
	st.invalidateRefsLocked()
}

// refreshSize adopts a committed size read (by a stat) after seqNow
// returned seq, so a file held open sees another mount's appends once the
// kernel asks for its attributes. The block map is reloaded only when the
// size changed: content changes of the same size show at the next open.
func (st *fileState) refreshSize(seq uint64, attr meta.Attr) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.attr = attr
	if st.seq != seq || st.hasLocalDataLocked() || st.size == int64(attr.Size) {
		return
	}
	st.size = int64(attr.Size)
	st.invalidateRefsLocked()
}

// lastAttr returns the attributes last read for the open file, marked
// unlinked: what fstat shows once another mount has removed the inode.
func (st *fileState) lastAttr() meta.Attr {
	st.mu.Lock()
	defer st.mu.Unlock()
	a := st.attr
	a.Nlink = 0
	if st.size > 0 {
		a.Size = uint64(st.size)
	}
	return a
}

func (st *fileState) hasLocalDataLocked() bool {
	return len(st.dirty) > 0 || len(st.pending) > 0 || st.inflight > 0
}

// localView returns what a stat should show while this mount holds data
// the metadata does not have yet (ok): the size, the time of the last write
// (the mtime and ctime its commit will record), and how many slots hold
// uncommitted data.
func (st *fileState) localView() (size, mtime int64, unflushed int, ok bool) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if !st.hasLocalDataLocked() {
		return st.size, st.lastWrite, 0, false
	}
	// Slots with uncommitted data: dirty, uploading or pending, each once.
	unflushed = len(st.dirty)
	for slot := range st.uploading {
		if _, ok := st.dirty[slot]; !ok {
			unflushed++
		}
	}
	for slot := range st.pending {
		_, d := st.dirty[slot]
		_, u := st.uploading[slot]
		if !d && !u {
			unflushed++
		}
	}
	return st.size, st.lastWrite, unflushed, true
}

func (st *fileState) invalidateRefsLocked() {
	st.refs = nil
	st.refsGen++
}

// discardAfterFailedClose forgets the data a failed close(2) could not
// store, when no other handle of this mount holds the file open. close
// reported the failure, so nothing of it may be committed later by the
// close of a handle opened in the meantime (the kernel's release of the
// failed handle may come after that open): the file keeps its previous
// content. The size falls back to the committed one.
//
// It also records the failure, so that the last release does not commit
// what is left (see flushAtRelease).
func (m *FS) discardAfterFailedClose(ctx context.Context, st *fileState) {
	// flushMu: a flush of another thread (fsync on the same descriptor)
	// must not commit part of what is discarded with a size covering all.
	st.flushMu.Lock()
	defer st.flushMu.Unlock()
	m.filesMu.Lock()
	last := st.opens == 1
	m.filesMu.Unlock()
	st.mu.Lock()
	st.closeFailed = true
	if !last {
		st.mu.Unlock()
		return // other handles may still retry their data with fsync
	}
	// Uploads still in flight of the discarded data must not record it
	// when they land.
	st.discardedGen = st.gen
	var freed int64
	for slot, b := range st.dirty {
		freed += int64(cap(b.data))
		delete(st.dirty, slot)
	}
	// Their uploads hold (and give back) their own room; forgetting them
	// here keeps reads and new writes from using their content.
	clear(st.uploading)
	clear(st.pending)
	st.seq++
	seq := st.seq
	st.invalidateRefsLocked()
	st.mu.Unlock()
	m.buf.release(freed)
	mctx, cancel := metaCtx(ctx)
	defer cancel()
	if attr, err := m.meta.GetAttr(mctx, st.ino); err == nil {
		st.refresh(seq, attr)
	}
}

// flushAtRelease commits data still held at the last release of the file.
// The kernel writes a shared writable mapping's dirty pages back when it is
// unmapped, as WRITE requests after the close's FLUSH and before RELEASE:
// without this they would be dropped. Nobody can be told of a failure any
// more, so it is logged. Data a failed close left behind is not retried:
// close reported the failure, and the file keeps its previous content.
func (st *fileState) flushAtRelease() {
	m := st.m
	st.mu.Lock()
	local, failed := st.hasLocalDataLocked(), st.closeFailed
	st.mu.Unlock()
	if !local {
		return
	}
	if failed {
		m.log.Warn("meshfs: dropping data written after a failed close", "ino", st.ino)
		return
	}
	// Not the request's context: the kernel does not wait for RELEASE,
	// and nothing should cancel the commit but its deadline.
	ctx, cancel := context.WithTimeout(context.Background(), releaseFlushTimeout)
	defer cancel()
	if err := st.flush(ctx); err != nil {
		m.log.Error("meshfs: commit of data written after the last close failed; it is lost",
			"ino", st.ino, "err", err)
	}
}

// drop forgets everything not committed and gives its buffer room back.
func (st *fileState) drop() {
	st.mu.Lock()
	st.dropped = true
	var freed int64
	for slot, b := range st.dirty {
		freed += int64(cap(b.data))
		delete(st.dirty, slot)
	}
	clear(st.pending)
	st.mu.Unlock()
	st.m.buf.release(freed)
}

// slotSource is where a slot's current content is.
type slotSource struct {
	buf      []byte        // in memory (read-only for the caller); nil if not
	ref      meta.BlockRef // else this block's first validLen bytes, if hasRef
	hasRef   bool
	validLen int
	needRefs bool // the committed block map must be loaded first
}

// sourceLocked finds slot's current content; a slot without any is a hole.
func (st *fileState) sourceLocked(slot int64) slotSource {
	bs := st.m.bs
	limit := min(max(st.size-slot*bs, 0), bs) // bytes of the slot inside the file
	if b := st.dirty[slot]; b != nil {
		return slotSource{buf: b.data[:min(int64(len(b.data)), limit)]}
	}
	if b := st.uploading[slot]; b != nil {
		return slotSource{buf: b.data[:min(int64(len(b.data)), limit)]}
	}
	var ref meta.BlockRef
	if p, ok := st.pending[slot]; ok {
		ref = p.ref
	} else if limit == 0 {
		return slotSource{} // past EOF
	} else if st.refs == nil {
		return slotSource{needRefs: true}
	} else {
		ref = st.refs[slot]
	}
	if ref.ID.IsZero() {
		return slotSource{}
	}
	return slotSource{ref: ref, hasRef: true, validLen: int(min(int64(ref.Len), limit))}
}

// loadRefs fetches the committed block map if it is not loaded.
func (st *fileState) loadRefs(ctx context.Context) error {
	st.mu.Lock()
	if st.refs != nil {
		st.mu.Unlock()
		return nil
	}
	gen, size := st.refsGen, st.size
	st.mu.Unlock()

	refs := map[int64]meta.BlockRef{}
	if size > 0 {
		mctx, cancel := metaCtx(ctx)
		r, err := st.m.meta.Blocks(mctx, st.ino, 0, (size-1)/st.m.bs)
		cancel()
		if err != nil {
			return fmt.Errorf("block map of inode %d: %w", st.ino, err)
		}
		if r != nil {
			refs = r
		}
	}
	st.mu.Lock()
	if st.refsGen == gen && st.refs == nil {
		st.refs = refs
	}
	st.mu.Unlock()
	return nil
}

// blockContent returns the slot's bytes held by ref's block: its first
// ref.Len bytes.
//
// Like a metadata call (metaCtx), it ignores the request's cancellation:
// the kernel interrupts a request on any signal, and failing the read or
// write for it would surface as EIO.
func (st *fileState) blockContent(ctx context.Context, ref meta.BlockRef) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), blockTimeout)
	defer cancel()
	data, err := st.m.readBlock(ctx, ref.ID)
	if err != nil {
		return nil, fmt.Errorf("read block %s of inode %d: %w", ref.ID, st.ino, err)
	}
	if len(data) < int(ref.Len) {
		return nil, fmt.Errorf("block %s of inode %d has %d bytes, the block map says %d: %w",
			ref.ID, st.ino, len(data), ref.Len, syscall.EIO)
	}
	return data[:ref.Len], nil
}

// write puts data at off into the file's dirty buffers.
func (st *fileState) write(ctx context.Context, data []byte, off int64) error {
	bs := st.m.bs
	for len(data) > 0 {
		slot, so := off/bs, int(off%bs)
		n := min(len(data), int(bs)-so)
		if err := st.writeSlot(ctx, slot, so, data[:n]); err != nil {
			return err
		}
		data, off = data[n:], off+int64(n)
	}
	return nil
}

// writeSlot writes p at offset so of one slot.
func (st *fileState) writeSlot(ctx context.Context, slot int64, so int, p []byte) error {
	m := st.m
	end := so + len(p)
	var fetched []byte // the old block, once read
	var fetchedID persist.BlockID
	for {
		st.mu.Lock()
		if st.dropped {
			st.mu.Unlock()
			return fmt.Errorf("write to inode %d after its last release: %w", st.ino, syscall.EBADF)
		}
		sb := st.dirty[slot]
		// base is the content a new dirty buffer starts from.
		var base []byte
		if sb == nil {
			src := st.sourceLocked(slot)
			switch {
			case src.needRefs:
				st.mu.Unlock()
				if err := st.loadRefs(ctx); err != nil {
					return err
				}
				continue
			case src.buf != nil:
				base = src.buf
			case !src.hasRef, so == 0 && len(p) >= src.validLen:
				// A hole, or the write replaces all of the slot's
				// content: nothing of the old block survives.
			case fetched != nil && fetchedID == src.ref.ID:
				base = fetched[:src.validLen]
			default:
				st.mu.Unlock()
				data, err := st.blockContent(ctx, src.ref)
				if err != nil {
					return err
				}
				fetched, fetchedID = data, src.ref.ID
				continue
			}
		}

		curLen, oldCap := len(base), 0
		if sb != nil {
			curLen, oldCap = len(sb.data), cap(sb.data)
		}
		newLen := max(curLen, end)
		newCap := oldCap
		if sb == nil || newLen > oldCap {
			newCap = growCap(oldCap, newLen, int(m.bs))
		}
		if need := int64(newCap - oldCap); !m.buf.tryAcquire(need) {
			failures := m.uploadFail.Load()
			st.mu.Unlock()
			m.spill()
			stop := func() bool { return m.uploadFail.Load() != failures }
			if !m.buf.waitRoom(need, stop) {
				return fmt.Errorf("write to inode %d: write buffer full and uploads failing or unmounting: %w", st.ino, syscall.EIO)
			}
			continue
		}

		switch {
		case sb == nil:
			buf := make([]byte, newLen, newCap)
			copy(buf, base)
			st.gen++
			sb = &slotBuf{data: buf, gen: st.gen}
			st.dirty[slot] = sb
		case newLen > cap(sb.data):
			buf := make([]byte, newLen, newCap)
			copy(buf, sb.data)
			sb.data = buf
		case newLen > len(sb.data):
			// The bytes past len may hold data cut off by a truncation.
			old := len(sb.data)
			sb.data = sb.data[:newLen]
			clear(sb.data[old:])
		}
		copy(sb.data[so:], p)
		st.size = max(st.size, slot*m.bs+int64(end))
		st.lastWrite = time.Now().UnixNano()
		sb.mtime = st.lastWrite
		st.seq++
		// A sequential writer has moved past a full slot: upload it now
		// rather than at close, so uploads overlap with writing.
		if prev := st.dirty[slot-1]; slot > 0 && prev != nil && int64(len(prev.data)) == m.bs {
			st.startUploadLocked(slot - 1)
		}
		st.mu.Unlock()
		return nil
	}
}

// growCap returns the capacity for a buffer that must hold need bytes:
// doubling, so appending small writes costs amortised O(1), capped at the
// block size. Once a quarter of the block is needed, it is the whole block:
// a large sequential write (the kernel sends up to 1 MiB at a time) would
// otherwise reallocate and copy the buffer twice more before it is full.
func growCap(oldCap, need, bs int) int {
	if need >= bs/4 {
		return bs
	}
	c := max(oldCap, 4096)
	for c < need {
		c *= 2
	}
	return min(c, bs)
}

// startUploadLocked moves a dirty slot to uploading and uploads it in the
// background.
func (st *fileState) startUploadLocked(slot int64) {
	sb := st.dirty[slot]
	if sb == nil {
		return
	}
	delete(st.dirty, slot)
	st.uploading[slot] = sb
	sb.inFlight, sb.failed, sb.noSpace = true, false, false
	st.inflight++
	st.m.bg.Add(1)
	go st.upload(slot, sb)
}

// upload stores one slot buffer on the mesh and records its BlockRef as
// pending. A failed upload puts the buffer back to dirty (unless newer data
// replaced it), so a later flush retries it.
func (st *fileState) upload(slot int64, sb *slotBuf) {
	m := st.m
	defer m.bg.Done()
	id, err := m.putBlock(sb.data)

	st.mu.Lock()
	defer st.mu.Unlock()
	defer st.uploaded.Broadcast()
	st.inflight--
	sb.inFlight = false
	if st.uploading[slot] == sb {
		delete(st.uploading, slot)
	}
	discarded := sb.gen <= st.discardedGen
	if err != nil {
		sb.failed = true
		sb.noSpace = errors.Is(err, syscall.ENOSPC)
		m.uploadFail.Add(1)
		m.buf.wake()
		if m.ctx.Err() == nil {
			m.log.Error("meshfs: block upload failed", "ino", st.ino, "slot", slot, "bytes", len(sb.data), "err", err)
		}
		_, newerDirty := st.dirty[slot]
		_, newerUpload := st.uploading[slot]
		p, committedLater := st.pending[slot]
		if !st.dropped && !discarded && !newerDirty && !newerUpload && (!committedLater || p.gen < sb.gen) {
			st.dirty[slot] = sb // still holds its room in the write buffer
			return
		}
		m.buf.release(int64(cap(sb.data)))
		return
	}
	m.buf.release(int64(cap(sb.data)))
	if st.dropped || discarded {
		return
	}
	if p, ok := st.pending[slot]; !ok || p.gen < sb.gen {
		st.pending[slot] = pendingRef{ref: meta.BlockRef{ID: id, Len: uint32(len(sb.data))}, gen: sb.gen, mtime: sb.mtime}
	}
	if int64(len(sb.data)) < m.bs {
		// A partial block is likely the tail of a file that is
		// appended to: the next write there reads it back.
		m.cache.put(id, sb.data)
	}
}

// putBlock uploads one block, at most Uploads at a time per mount.
func (m *FS) putBlock(data []byte) (persist.BlockID, error) {
	select {
	case m.uploadSem <- struct{}{}:
	case <-m.ctx.Done():
		return persist.BlockID{}, fmt.Errorf("upload block: %w", m.ctx.Err())
	}
	defer func() { <-m.uploadSem }()
	ctx, cancel := context.WithTimeout(m.ctx, blockTimeout)
	defer cancel()
	id, err := m.blocks.Write(ctx, data)
	if err != nil {
		return id, fmt.Errorf("upload block of %d bytes: %w", len(data), err)
	}
	return id, nil
}

// flush uploads all dirty data and commits it with one CommitWrite.
func (st *fileState) flush(ctx context.Context) error {
	st.flushMu.Lock()
	defer st.flushMu.Unlock()
	return st.flushLocked(ctx)
}

// flushLocked is flush with flushMu held. If any upload fails, nothing is
// committed, so the file keeps its previous content; the data stays dirty
// for a later flush to retry.
//
// It commits the file as it is when the flush starts: that moment's size
// and every slot's data up to that moment. Writes arriving while it waits
// for the uploads are left to a later flush (or committed early where they
// share an uploaded block with older data), and their size is not
// committed: their slots may still be dirty at the commit, so a size read
// after the wait would cover bytes the commit does not hold, reading as
// zeros from the metadata (after a crash of this mount, or on another).
func (st *fileState) flushLocked(ctx context.Context) error {
	bs := st.m.bs
	st.mu.Lock()
	for slot := range st.dirty {
		st.startUploadLocked(slot)
	}
	size, mtime := st.size, st.lastWrite
	// The newest upload of each slot holds all of the slot's data so far
	// (a newer buffer starts from the older one's content).
	var waitFor []*slotBuf
	for _, sb := range st.uploading {
		waitFor = append(waitFor, sb)
	}
	if len(waitFor) == 0 && len(st.pending) == 0 {
		st.closeFailed = false
		st.mu.Unlock()
		return nil
	}
	// All of them, even after one failed: so that none of this flush's
	// uploads lands after it reported the failure (see
	// discardAfterFailedClose).
	for anyInFlight(waitFor) {
		st.uploaded.Wait()
	}
	if n, noSpace := countFailed(waitFor); n > 0 {
		st.mu.Unlock()
		errno := syscall.EIO
		if noSpace {
			errno = syscall.ENOSPC // the mesh is full, as far as this data goes
		}
		return fmt.Errorf("flush inode %d: %d block upload(s) failed: %w", st.ino, n, errno)
	}
	if hook := st.m.beforeCommit.Load(); hook != nil {
		st.mu.Unlock()
		(*hook)(st.ino)
		st.mu.Lock()
	}
	// Every slot's data up to size is now pending, committed, or a hole.
	slots := make(map[int64]meta.BlockRef, len(st.pending))
	done := make(map[int64]uint64, len(st.pending)) // slot -> gen committed whole
	for slot, p := range st.pending {
		keep := size - slot*bs // bytes of the slot within the committed size
		if keep <= 0 {
			continue // written after the flush started, past its size
		}
		ref := p.ref
		if int64(ref.Len) > keep {
			// A later write extended the slot: commit the part the
			// size covers, and keep the block pending for the rest.
			ref.Len = uint32(keep)
		} else {
			done[slot] = p.gen
		}
		slots[slot] = ref
		mtime = max(mtime, p.mtime)
	}
	st.mu.Unlock()

	mctx, cancel := metaCtx(ctx)
	_, err := st.m.meta.CommitWrite(mctx, st.ino, slots, uint64(size), mtime)
	cancel()
	if err != nil {
		return fmt.Errorf("commit write of inode %d (%d slots, size %d): %w", st.ino, len(slots), size, err)
	}

	st.mu.Lock()
	for slot, g := range done {
		if p, ok := st.pending[slot]; ok && p.gen == g {
			delete(st.pending, slot)
		}
	}
	st.invalidateRefsLocked()
	st.seq++
	st.closeFailed = false
	st.mu.Unlock()
	return nil
}

// anyInFlight reports whether one of bufs is being uploaded; the caller
// holds fileState.mu.
func anyInFlight(bufs []*slotBuf) bool {
	for _, sb := range bufs {
		if sb.inFlight {
			return true
		}
	}
	return false
}

// countFailed counts the buffers whose last upload failed and says whether
// one failed for want of space; the caller holds fileState.mu.
func countFailed(bufs []*slotBuf) (n int, noSpace bool) {
	for _, sb := range bufs {
		if sb.failed {
			n++
			noSpace = noSpace || sb.noSpace
		}
	}
	return n, noSpace
}

// truncateLocked applies a size change the metadata has made to the local
// state: data past the new size is forgotten. flushMu must be held.
func (st *fileState) truncateLocked(size int64) {
	bs := st.m.bs
	st.mu.Lock()
	// Uploads still in flight (of writes racing the truncation) must land
	// first, so that none records data past the new size afterwards.
	for st.inflight > 0 {
		st.uploaded.Wait()
	}
	cut := (size + bs - 1) / bs // slots from cut on are gone
	var freed int64
	for slot, b := range st.dirty {
		if slot >= cut {
			freed += int64(cap(b.data))
			delete(st.dirty, slot)
		}
	}
	for slot := range st.pending {
		if slot >= cut {
			delete(st.pending, slot)
		}
	}
	if rem := int(size % bs); rem != 0 {
		last := size / bs
		if b := st.dirty[last]; b != nil && len(b.data) > rem {
			b.data = b.data[:rem]
		}
		if p, ok := st.pending[last]; ok && int(p.ref.Len) > rem {
			p.ref.Len = uint32(rem)
			st.pending[last] = p
		}
	}
	st.size = size
	st.invalidateRefsLocked()
	st.seq++
	st.mu.Unlock()
	st.m.buf.release(freed)
}

// read fills dest with the file's bytes from off and returns how many there
// are (fewer at the end of the file).
func (st *fileState) read(ctx context.Context, dest []byte, off int64) (int, error) {
	bs := st.m.bs
	st.mu.Lock()
	size := st.size
	sequential := off == st.readEnd
	st.mu.Unlock()
	if off >= size || len(dest) == 0 {
		return 0, nil
	}
	end := min(off+int64(len(dest)), size)
	for pos := off; pos < end; {
		slot := pos / bs
		so := int(pos % bs)
		pieceEnd := min(end, (slot+1)*bs)
		out := dest[pos-off : pieceEnd-off]

		st.mu.Lock()
		src := st.sourceLocked(slot)
		switch {
		case src.needRefs:
			st.mu.Unlock()
			if err := st.loadRefs(ctx); err != nil {
				return 0, err
			}
			continue
		case src.buf != nil:
			copyAt(out, src.buf, so)
			st.mu.Unlock()
		case !src.hasRef:
			st.mu.Unlock()
			clear(out)
		default:
			st.mu.Unlock()
			data, err := st.blockContent(ctx, src.ref)
			if err != nil {
				return 0, err
			}
			copyAt(out, data[:src.validLen], so)
		}
		pos = pieceEnd
	}

	// Read-ahead: a sequential reader will want the next slots' blocks
	// soon; fetch several of them in parallel while the kernel consumes
	// this one, so that the latency of one fetch (a disk read on the node,
	// the transfer, two hash checks) is hidden behind the others.
	var next [readAheadSlots]persist.BlockID
	st.mu.Lock()
	st.readEnd = end
	if sequential {
		first := (end-1)/bs + 1
		for i := range next {
			if src := st.sourceLocked(first + int64(i)); src.hasRef {
				next[i] = src.ref.ID
			}
		}
	}
	st.mu.Unlock()
	for _, id := range next {
		if !id.IsZero() {
			st.m.prefetch(id)
		}
	}
	return int(end - off), nil
}

// copyAt fills out with src's bytes from off, and zeros past src's end.
func copyAt(out, src []byte, off int) {
	n := 0
	if off < len(src) {
		n = copy(out, src[off:])
	}
	clear(out[n:])
}
