package fuse

import (
	"context"
	"time"

	"github.com/meshfs/meshfs/persist"
)

// blockToucher is a Blocks that can refresh the put time of stored blocks
// (blocknet.Replicator).
type blockToucher interface {
	Touch(ctx context.Context, id persist.BlockID) error
}

// touchPending touches, every interval, each block uploaded for a write
// that is not committed yet. The nodes' collectors remove unreferenced
// blocks last put before their grace period; a file held open and written
// for longer than that would otherwise lose its uploaded blocks before the
// close that references them.
func (m *FS) touchPending(t blockToucher, every time.Duration) {
	defer m.bg.Done()
	ticker := time.NewTicker(every)
	defer ticker.Stop()
	for {
		select {
		case <-m.ctx.Done():
			return
		case <-ticker.C:
		}
		for _, id := range m.pendingBlocks() {
			ctx, cancel := context.WithTimeout(m.ctx, blockTimeout)
			err := t.Touch(ctx, id)
			cancel()
			if err != nil && m.ctx.Err() == nil {
				m.log.Warn("meshfs: touch of an uploaded, uncommitted block failed", "block", id, "err", err)
			}
		}
	}
}

// pendingBlocks lists the blocks uploaded for writes not yet committed.
func (m *FS) pendingBlocks() []persist.BlockID {
	m.filesMu.Lock()
	files := make([]*fileState, 0, len(m.files))
	for _, st := range m.files {
		files = append(files, st)
	}
	m.filesMu.Unlock()
	var ids []persist.BlockID
	for _, st := range files {
		st.mu.Lock()
		for _, p := range st.pending {
			ids = append(ids, p.ref.ID)
		}
		st.mu.Unlock()
	}
	return ids
}
