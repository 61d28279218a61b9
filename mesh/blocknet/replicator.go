package blocknet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/meshfs/meshfs/mesh"
	"github.com/meshfs/meshfs/persist"
)

// maxReadAttempt bounds one node's turn in Read: a hung owner must not hold
// up the read for the whole client timeout when other copies exist.
const maxReadAttempt = 5 * time.Second

// Replicator stores and fetches blocks on the mesh.
type Replicator struct {
	c          *Client
	members    func() []mesh.Member
	r          int
	putTimeout time.Duration // per attempt: a 4 MiB put takes well under a second on a healthy node
}

// NewReplicator uses members() for the current membership at each call and
// keeps r copies of each block. An r below 1 is taken as 1.
func NewReplicator(c *Client, members func() []mesh.Member, r int) *Replicator {
	if r < 1 {
		// r usually comes from ClusterInfo; a node answering a zero value
		// must not make every write fail or panic.
		slog.Warn("replicator: replication factor below 1, using 1", "r", r)
		r = 1
	}
	return &Replicator{c: c, members: members, r: r, putTimeout: 15 * time.Second}
}

// majority is the least number of copies a write may settle for.
func (r *Replicator) majority() int { return r.r/2 + 1 }

// Write stores data (at most one block) on r distinct live nodes, trying the
// owners in placement order in parallel and moving down the order past nodes
// that fail or do not answer within the per-attempt deadline. It returns
// once r nodes hold the block. When every live node was tried, or ctx ended,
// a majority of r (r/2+1) copies is accepted (repair adds the rest); fewer
// fail with an error wrapping mesh.ErrNotEnoughNodes (or ctx's error).
func (r *Replicator) Write(ctx context.Context, data []byte) (persist.BlockID, error) {
	id := persist.Sum(data)
	var live []mesh.Member
	for _, m := range (mesh.Placement{}).OwnersFirst(id, r.members(), r.r) {
		if m.Live() {
			live = append(live, m)
		}
	}
	want := min(r.r, len(live))
	if len(live) < r.majority() {
		return persist.BlockID{}, fmt.Errorf("write block %s: %d live nodes, a block needs at least %d of its %d copies: %w",
			id, len(live), r.majority(), r.r, mesh.ErrNotEnoughNodes)
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type result struct {
		m   mesh.Member
		err error
	}
	// Buffered for every possible put, so no sender ever blocks; the loop
	// below still waits for each one it started.
	results := make(chan result, len(live))
	next := 0
	start := func() {
		m := live[next]
		next++
		go func() {
			// Each attempt has its own deadline: a node that hangs (stopped,
			// a stalled disk, not yet serving) is passed over like a dead
			// one instead of holding the whole write until its deadline.
			pctx, cancel := context.WithTimeout(ctx, r.putTimeout)
			defer cancel()
			results <- result{m, r.c.Put(pctx, m.HTTP, id, data)}
		}()
	}
	for next < want {
		start()
	}
	// At most want puts are in flight or done at any time (a new one starts
	// only when one fails), so reaching want successes means nothing is
	// left running.
	inflight, stored := want, 0
	var errs []error
	permanent := false
	for inflight > 0 {
		res := <-results
		inflight--
		if res.err == nil {
			stored++
			continue
		}
		errs = append(errs, fmt.Errorf("node %s: %w", res.m.Name, res.err))
		// The block size is cluster-wide: if one node says too large,
		// every node will.
		if errors.Is(res.err, persist.ErrTooLarge) {
			permanent = true
		}
		if permanent || ctx.Err() != nil || next >= len(live) {
			continue
		}
		start()
		inflight++
	}

	switch {
	case stored == want:
		return id, nil
	case stored >= r.majority() && !permanent:
		// Degraded: every live node in placement order was tried (or the
		// caller's deadline came) and a majority of copies is held. This
		// covers fewer live nodes than copies, and a node that died or
		// hangs but is not yet declared dead (it is down for this writer
		// all the same). Repair brings the block back to r copies.
		slog.Warn("block written with fewer copies than wanted",
			"block", id, "copies", stored, "r", r.r, "live", len(live), "errs", errors.Join(errs...))
		return id, nil
	case ctx.Err() != nil:
		return persist.BlockID{}, fmt.Errorf("write block %s: %d of %d copies stored: %w", id, stored, want, ctx.Err())
	case permanent:
		return persist.BlockID{}, fmt.Errorf("write block %s: %w", id, errors.Join(errs...))
	default:
		return persist.BlockID{}, fmt.Errorf("write block %s: %d of %d copies stored on %d live nodes: %w\n%w",
			id, stored, want, len(live), mesh.ErrNotEnoughNodes, errors.Join(errs...))
	}
}

// Read returns the block's content from the first node in placement order
// (then any other live node) that has a copy whose hash verifies. A corrupt
// copy or an unreachable node is skipped and logged.
//
// Members not currently live are asked last: gossip may be wrong, and when
// every live node failed a last try costs little.
func (r *Replicator) Read(ctx context.Context, id persist.BlockID) ([]byte, error) {
	order := (mesh.Placement{}).OwnersFirst(id, r.members(), r.r)
	if len(order) == 0 {
		return nil, fmt.Errorf("read block %s: no members known: %w", id, mesh.ErrNotEnoughNodes)
	}
	// Owners come first in placement order, then the rest: after a failover
	// a copy may sit on a non-owner.
	cands := make([]mesh.Member, 0, len(order))
	for _, m := range order {
		if m.Live() {
			cands = append(cands, m)
		}
	}
	for _, m := range order {
		if !m.Live() {
			cands = append(cands, m)
		}
	}
	attempt := min(r.c.timeout, maxReadAttempt)
	notFound := 0
	var errs []error
	for _, m := range cands {
		actx, cancel := context.WithTimeout(ctx, attempt)
		data, err := r.c.Get(actx, m.HTTP, id)
		cancel()
		if err == nil {
			return data, nil
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("read block %s: %w", id, ctx.Err())
		}
		switch {
		case errors.Is(err, persist.ErrNotFound):
			notFound++
		case errors.Is(err, persist.ErrCorrupt):
			slog.Warn("skipping corrupt block copy", "block", id, "node", m.Name, "addr", m.HTTP, "err", err)
			// Read-repair: tell the node, so it replaces its copy now
			// rather than at its next scrub pass.
			rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			if rerr := r.c.Report(rctx, m.HTTP, id); rerr != nil {
				slog.Warn("could not report corrupt copy", "block", id, "node", m.Name, "err", rerr)
			}
			cancel()
			errs = append(errs, fmt.Errorf("node %s: %w", m.Name, err))
		default:
			slog.Debug("block read attempt failed", "block", id, "node", m.Name, "addr", m.HTTP, "err", err)
			errs = append(errs, fmt.Errorf("node %s: %w", m.Name, err))
		}
	}
	if len(errs) == 0 {
		return nil, fmt.Errorf("read block %s: none of %d nodes has it: %w", id, notFound, persist.ErrNotFound)
	}
	// The not-found answers are counted, not joined: errors.Is(err,
	// ErrNotFound) must only hold when no node might still have the block.
	return nil, fmt.Errorf("read block %s: no good copy on %d nodes (%d said not found): %w",
		id, len(cands), notFound, errors.Join(errs...))
}

// Touch refreshes the last put time of every live copy of the block, so
// that no node collects it while a write that uploaded it has not committed
// yet. A node without a copy is skipped; it fails only if no copy was
// touched.
func (r *Replicator) Touch(ctx context.Context, id persist.BlockID) error {
	touched := 0
	var errs []error
	for _, m := range (mesh.Placement{}).OwnersFirst(id, r.members(), r.r) {
		if !m.Live() {
			continue
		}
		tctx, cancel := context.WithTimeout(ctx, r.putTimeout)
		err := r.c.Touch(tctx, m.HTTP, id)
		cancel()
		switch {
		case err == nil:
			touched++
		case !errors.Is(err, persist.ErrNotFound):
			errs = append(errs, err)
		}
	}
	if touched == 0 {
		return fmt.Errorf("touch block %s: no copy touched: %w", id, errors.Join(append(errs, persist.ErrNotFound)...))
	}
	return nil
}
