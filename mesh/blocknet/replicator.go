package blocknet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/meshfs/meshfs/mesh"
	"github.com/meshfs/meshfs/persist"
)

// maxReadAttempt bounds one node's turn in Read: a hung owner must not hold
// up the read for the whole client timeout when other copies exist.
const maxReadAttempt = 5 * time.Second

// Replicator stores and fetches blocks on the mesh. It is safe for
// concurrent use, and routes around slow nodes: a node that is late is
// hedged (another node is asked as well) and then asked after the others
// for a while (see hedge.go).
type Replicator struct {
	c          *Client
	members    func() []mesh.Member
	r          int
	putTimeout time.Duration // per attempt: a 4 MiB put takes well under a second on a healthy node
	reads      *readLatency  // when a read is late
	slow       *slowNodes    // who is late or failing lately
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
	return &Replicator{
		c: c, members: members, r: r, putTimeout: 15 * time.Second,
		reads: &readLatency{}, slow: newSlowNodes(),
	}
}

// majority is the least number of copies a write may settle for.
func (r *Replicator) majority() int { return r.r/2 + 1 }

// Write stores data (at most one block) on r distinct live nodes, trying the
// owners in placement order in parallel (nodes that were slow lately after
// the others) and moving down the order past nodes that fail or do not
// answer within the per-attempt deadline. Once a majority of copies is
// stored, a copy still out after a hedge delay (see writeHedgeDelay) is
// given to the next node as well, so one slow node does not hold up the
// write; a copy on a non-owner is moved home by repair. It returns once r
// nodes hold the block, with every put it started ended. When every live
// node was tried, or ctx ended, a majority of r (r/2+1) copies is accepted
// (repair adds the rest); fewer fail with an error wrapping
// mesh.ErrNotEnoughNodes (or ctx's error).
func (r *Replicator) Write(ctx context.Context, data []byte) (persist.BlockID, error) {
	id := persist.Sum(data)
	var live []mesh.Member
	for _, m := range (mesh.Placement{}).OwnersFirst(id, r.members(), r.r) {
		if m.Live() {
			live = append(live, m)
		}
	}
	live = r.slow.order(live)
	want := min(r.r, len(live))
	if len(live) < r.majority() {
		return persist.BlockID{}, fmt.Errorf("write block %s: %d live nodes, a block needs at least %d of its %d copies: %w",
			id, len(live), r.majority(), r.r, mesh.ErrNotEnoughNodes)
	}

	// stopPuts ends the puts still out once r copies are stored. ctx is
	// left alone, so that ctx.Err() below means the caller's deadline.
	//
	// A put cut off this way leaves no partial block on its node (checked
	// in server.go and persist's Store.Put): the server reads the whole
	// body (Put always sends a Content-Length) into memory before it calls
	// the store, and answers 400 to a short one without storing; the store
	// then refuses a context already canceled, and checks the body's hash
	// against the id (ErrHashMismatch) before writing. So the node ends
	// with a whole, verified copy (one more than r, which repair drops once
	// every owner has one) or none.
	putCtx, stopPuts := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		stopPuts()
		wg.Wait()
	}()
	type result struct {
		i   int // index in live
		err error
	}
	// Buffered for every possible put, so no sender ever blocks, even
	// after the loop below stopped receiving.
	results := make(chan result, len(live))
	type try struct {
		start time.Time
		done  bool
	}
	tries := make([]try, 0, len(live)) // tries[i] is the put to live[i]
	start := func() {
		i := len(tries)
		m := live[i]
		tries = append(tries, try{start: time.Now()})
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Each attempt has its own deadline: a node that hangs (stopped,
			// a stalled disk, not yet serving) is passed over like a dead
			// one instead of holding the whole write until its deadline.
			pctx, cancel := context.WithTimeout(putCtx, r.putTimeout)
			defer cancel()
			results <- result{i, r.c.Put(pctx, m.HTTP, id, data)}
		}()
	}
	began := time.Now()
	for len(tries) < want {
		start()
	}
	inflight, stored := want, 0
	var errs []error
	permanent := false
	canStart := func() bool { return !permanent && ctx.Err() == nil && len(tries) < len(live) }
	// The hedge timer runs from the moment a majority is stored until r
	// copies are, or no node is left to try.
	var hedgeTimer *time.Timer
	var hedge <-chan time.Time
	var delay time.Duration
	for inflight > 0 && stored < want {
		select {
		case res := <-results:
			inflight--
			tries[res.i].done = true
			if res.err == nil {
				stored++
				if stored == r.majority() && stored < want && canStart() {
					delay = writeHedgeDelay(time.Since(began))
					hedgeTimer = time.NewTimer(delay)
					hedge = hedgeTimer.C
				}
				continue
			}
			m := live[res.i]
			errs = append(errs, fmt.Errorf("node %s: %w", m.Name, res.err))
			// The block size is cluster-wide: if one node says too large,
			// every node will.
			if errors.Is(res.err, persist.ErrTooLarge) {
				permanent = true
			}
			if ctx.Err() == nil && nodeFailed(res.err) {
				r.slow.penalise(m.Name, "put failed: "+res.err.Error())
			}
			if !canStart() {
				continue
			}
			start()
			inflight++
		case <-hedge:
			// Copies still wanted, less those the puts started within the
			// last delay (replacements for failed ones, earlier hedges) may
			// still bring in time.
			need := want - stored
			for _, t := range tries {
				if !t.done && time.Since(t.start) < delay {
					need--
				}
			}
			for ; need > 0 && canStart(); need-- {
				slog.Debug("block put is late: giving a copy to the next node",
					"block", id, "node", live[len(tries)].Name, "after", delay, "stored", stored, "want", want)
				start()
				inflight++
			}
			if canStart() {
				hedgeTimer.Reset(delay)
			} else {
				hedge = nil
			}
		}
	}
	if hedgeTimer != nil {
		hedgeTimer.Stop()
	}
	stopPuts()
	if stored >= want {
		// Whatever is still out was overtaken: r copies are stored.
		for i, t := range tries {
			if !t.done && time.Since(t.start) >= delay {
				r.slow.penalise(live[i].Name, "put overtaken by a hedge")
			}
		}
	}
	wg.Wait()

	switch {
	case stored >= want:
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

// Read returns the block's content from the first node that returns a copy
// whose hash verifies. It asks the nodes in placement order (owners first,
// then the other live nodes, those slow lately after the rest), moving on
// at once past a node that fails or has no copy. A node that has not
// answered within the hedge delay (a few times a healthy read, see
// readLatency) is not waited for: the next node is asked as well, up to
// maxReadsInFlight at once, and the first good copy wins. A corrupt copy
// is skipped, logged and reported to its node (read-repair). Every attempt
// has ended when Read returns.
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
	cands = r.slow.order(cands)
	for _, m := range order {
		if !m.Live() {
			cands = append(cands, m)
		}
	}
	attempt := min(r.c.timeout, maxReadAttempt)
	delay := r.reads.hedgeDelay()

	// stopGets ends the attempts still out when Read returns; the wait
	// makes sure none outlives it (nor its read-repair report).
	gctx, stopGets := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		stopGets()
		wg.Wait()
	}()
	type answer struct {
		i    int // index in cands
		data []byte
		err  error
		took time.Duration
	}
	// Buffered for every candidate, so no attempt blocks on sending after
	// Read stopped receiving.
	answers := make(chan answer, len(cands))
	type try struct {
		start time.Time
		done  bool
	}
	tries := make([]try, 0, len(cands)) // tries[i] is the attempt on cands[i]
	pending := 0
	ask := func() {
		i := len(tries)
		m := cands[i]
		tries = append(tries, try{start: time.Now()})
		pending++
		wg.Add(1)
		go func() {
			defer wg.Done()
			begin := time.Now()
			actx, cancel := context.WithTimeout(gctx, attempt)
			data, err := r.c.Get(actx, m.HTTP, id)
			cancel()
			answers <- answer{i, data, err, time.Since(begin)}
			if errors.Is(err, persist.ErrCorrupt) {
				// Read-repair: tell the node, so it replaces its copy now
				// rather than at its next scrub pass. Under ctx, not gctx:
				// a good copy found meanwhile must not cancel the report.
				rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
				if rerr := r.c.Report(rctx, m.HTTP, id); rerr != nil {
					slog.Warn("could not report corrupt copy", "block", id, "node", m.Name, "err", rerr)
				}
				cancel()
			}
		}()
	}
	ask()
	hedge := time.NewTimer(delay)
	defer hedge.Stop()
	notFound := 0
	var errs []error
	for pending > 0 {
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("read block %s: %w", id, ctx.Err())
		case <-hedge.C:
			if len(tries) == len(cands) || pending >= maxReadsInFlight {
				// An answer that frees a slot asks the next node.
				continue
			}
			if slog.Default().Enabled(ctx, slog.LevelDebug) {
				var late []string
				for i, t := range tries {
					if !t.done {
						late = append(late, cands[i].Name)
					}
				}
				slog.Debug("block read is late: asking the next node too",
					"block", id, "late", late, "node", cands[len(tries)].Name, "after", delay)
			}
			ask()
			hedge.Reset(delay)
		case a := <-answers:
			pending--
			tries[a.i].done = true
			m := cands[a.i]
			if a.err == nil {
				// The nodes asked before the winner and silent for a hedge
				// delay were overtaken. One asked after it, or asked at
				// once when another failed and silent for less, was
				// merely not needed.
				for i := range a.i {
					if !tries[i].done && time.Since(tries[i].start) >= delay {
						r.slow.penalise(cands[i].Name, "read overtaken by a hedge")
					}
				}
				r.reads.observe(a.took)
				return a.data, nil
			}
			if ctx.Err() != nil {
				return nil, fmt.Errorf("read block %s: %w", id, ctx.Err())
			}
			switch {
			case errors.Is(a.err, persist.ErrNotFound):
				notFound++
			case errors.Is(a.err, persist.ErrCorrupt):
				slog.Warn("skipping corrupt block copy", "block", id, "node", m.Name, "addr", m.HTTP, "err", a.err)
				errs = append(errs, fmt.Errorf("node %s: %w", m.Name, a.err))
			default:
				slog.Debug("block read attempt failed", "block", id, "node", m.Name, "addr", m.HTTP, "err", a.err)
				errs = append(errs, fmt.Errorf("node %s: %w", m.Name, a.err))
			}
			if nodeFailed(a.err) {
				r.slow.penalise(m.Name, "read failed: "+a.err.Error())
			}
			if len(tries) < len(cands) && pending < maxReadsInFlight {
				ask()
				hedge.Reset(delay)
			}
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
