package actors

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/meshfs/meshfs/mesh"
	"github.com/meshfs/meshfs/persist"
	"golang.org/x/time/rate"
)

// LocalBlocks is this node's own block store as the repairer uses it.
// Get verifies the content (persist.ErrCorrupt otherwise).
type LocalBlocks interface {
	List(ctx context.Context, fn func(id persist.BlockID, size int) error) error
	Get(ctx context.Context, id persist.BlockID) ([]byte, error)
	Delete(ctx context.Context, id persist.BlockID) error
}

// PeerBlocks reaches other nodes' block stores by their block API address.
// Put returns once the peer holds the block on disk, verified.
type PeerBlocks interface {
	List(ctx context.Context, addr string, fn func(id persist.BlockID, size int) error) error
	Put(ctx context.Context, addr string, id persist.BlockID, data []byte) error
	Has(ctx context.Context, addr string, id persist.BlockID) (bool, error)
}

// Members is the gossip view: the members (dead ones included, with Since)
// and a channel that signals a change. Changes may be closed when gossip
// stops.
type Members interface {
	Members() []mesh.Member
	Changes() <-chan struct{}
}

// RepairConfig tunes the repair actor.
type RepairConfig struct {
	Self     string // this node's member name
	Replicas int
	// RepairDelay: a block that lost one copy of several to a node death
	// waits this long, so a quick restart does not cause a copy storm. A
	// block down to its last copy is copied at once. Default 30 s.
	RepairDelay time.Duration
	// Rate caps the bytes/s this node sends as repair copies; default 100 MiB/s.
	Rate float64
	// Concurrency bounds the copies in flight; default 4.
	Concurrency int
	// Interval is how often the mesh is re-planned without any event;
	// default 30 s. Membership changes re-plan at once.
	Interval time.Duration
	// Fetch, if set, gets a verified copy from another node; the source of
	// a copy uses it when its own copy cannot be read, so a bad copy on the
	// planned source does not stall the block's repair (every node plans
	// the same source, so no other node would step in).
	Fetch func(ctx context.Context, id persist.BlockID) ([]byte, error)
	// Suspect, if set, is told of a local copy that could not be read (the
	// scrubber's Check, which replaces it).
	Suspect func(id persist.BlockID)
	// Dropped, if set, is told of a rotten surplus copy the repairer
	// dropped (the scrubber's Dropped, which counts the rot): the owners
	// hold the block, so the copy needs no repair.
	Dropped func(id persist.BlockID)
	// Skip, if set, names blocks not to copy: garbage the collector found
	// unreferenced, which repair must not bring back.
	Skip func(id persist.BlockID) bool
}

// RepairStats is what the repair actor reports.
type RepairStats struct {
	Rounds               int64     `json:"rounds"`
	LastRound            time.Time `json:"last_round,omitzero"`
	Pending              int       `json:"pending"`          // copies this node is responsible for, not yet done
	PendingBytes         int64     `json:"pending_bytes"`    // their bytes
	Waiting              int       `json:"waiting"`          // copies deferred by the repair delay (mesh-wide view of this node's blocks)
	Copied               int64     `json:"copied"`           // copies sent, all rounds
	CopiedBytes          int64     `json:"copied_bytes"`     // their bytes
	Dropped              int64     `json:"dropped"`          // surplus copies deleted here
	Failed               int64     `json:"failed"`           // copies or drops that failed
	RateBytes            float64   `json:"rate_bytes"`       // bytes/s copied in the last round
	UnderReplicated      int       `json:"under_replicated"` // blocks held here with fewer than R live copies
	UnderReplicatedBytes int64     `json:"under_replicated_bytes"`
	Lost                 int       `json:"lost"`
}

// Repairer is the ownership and repair actor of one node: it learns which
// nodes hold the blocks this node holds, plans with Planner, sends the
// copies it is responsible for (most endangered first, throttled) and
// deletes its own surplus copies once every owner holds the block. Every
// round starts from the actual state of the stores, so it is idempotent and
// a node killed mid-repair simply resumes.
type Repairer struct {
	local   LocalBlocks
	peers   PeerBlocks
	members Members
	cfg     RepairConfig
	log     *slog.Logger
	limiter *rate.Limiter

	mu       sync.Mutex
	stats    RepairStats
	lastSeen map[string]map[persist.BlockID]bool // last inventory of each peer, kept while it is down
}

// NewRepairer returns a repair actor; run it with Run.
func NewRepairer(local LocalBlocks, peers PeerBlocks, members Members, cfg RepairConfig, log *slog.Logger) *Repairer {
	if cfg.RepairDelay <= 0 {
		cfg.RepairDelay = 30 * time.Second
	}
	if cfg.Rate <= 0 {
		cfg.Rate = 100 << 20
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 4
	}
	if cfg.Interval <= 0 {
		cfg.Interval = 30 * time.Second
	}
	return &Repairer{
		local: local, peers: peers, members: members, cfg: cfg, log: log,
		limiter:  rate.NewLimiter(rate.Limit(cfg.Rate), 64<<20),
		lastSeen: map[string]map[persist.BlockID]bool{},
	}
}

// Stats returns a snapshot of the counters.
func (r *Repairer) Stats() RepairStats {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.stats
}

// Run plans and repairs until ctx ends: at start, after every membership
// change, when a deferred copy falls due, and every Interval.
func (r *Repairer) Run(ctx context.Context) error {
	changes := r.members.Changes()
	backoff := time.Duration(0)
	for {
		before := r.Stats()
		plan, err := r.Round(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			r.log.Warn("repair round failed", "err", err)
		}
		after := r.Stats()
		progressed := after.Copied+after.Dropped > before.Copied+before.Dropped
		wait := r.cfg.Interval
		if !plan.Wake.IsZero() {
			wait = min(wait, max(time.Until(plan.Wake), 100*time.Millisecond))
		}
		switch {
		case err == nil && progressed && len(plan.Copies)+len(plan.Drops) > 0:
			// Work got done: look again at once until the mesh is quiet.
			wait, backoff = 0, 0
		case len(plan.Copies)+len(plan.Drops) > 0 || err != nil:
			// Work is due but none succeeded (a full disk, a node not yet
			// declared dead): every round lists every peer's inventory, so
			// back off rather than loop, up to the interval.
			backoff = min(max(2*backoff, time.Second), r.cfg.Interval)
			wait = min(wait, backoff)
		default:
			backoff = 0
		}
		timer := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			return nil
		case _, ok := <-changes:
			if !ok {
				changes = nil
			}
			// Let gossip settle a moment: a death often comes with others.
			select {
			case <-ctx.Done():
			case <-time.After(200 * time.Millisecond):
			}
		case <-timer.C:
		}
		timer.Stop()
	}
}

// Round gathers inventories, plans, and executes this node's part of the
// plan. It returns the plan, filtered to this node's actions.
func (r *Repairer) Round(ctx context.Context) (Plan, error) {
	start := time.Now()
	members := r.members.Members()
	blocks, err := r.inventory(ctx, members)
	if err != nil {
		return Plan{}, err
	}
	full := Planner{Replicas: r.cfg.Replicas, RepairDelay: r.cfg.RepairDelay}.Plan(time.Now(), members, blocks)
	mine := Plan{Wake: full.Wake, Waiting: full.Waiting, Lost: full.Lost,
		UnderReplicated: full.UnderReplicated, UnderReplicatedBytes: full.UnderReplicatedBytes}
	for _, c := range full.Copies {
		if c.From == r.cfg.Self && (r.cfg.Skip == nil || !r.cfg.Skip(c.Block)) {
			mine.Copies = append(mine.Copies, c)
		}
	}
	for _, d := range full.Drops {
		if d.Node == r.cfg.Self {
			mine.Drops = append(mine.Drops, d)
		}
	}
	var pendingBytes int64
	for _, c := range mine.Copies {
		pendingBytes += c.Size
	}
	r.mu.Lock()
	r.stats.Pending, r.stats.PendingBytes, r.stats.Waiting = len(mine.Copies), pendingBytes, full.Waiting
	r.stats.UnderReplicated, r.stats.UnderReplicatedBytes, r.stats.Lost = full.UnderReplicated, full.UnderReplicatedBytes, len(full.Lost)
	r.mu.Unlock()

	copied := r.copyAll(ctx, members, mine.Copies)
	r.dropAll(ctx, members, mine.Drops)

	r.mu.Lock()
	r.stats.Rounds++
	r.stats.LastRound = time.Now()
	if copied > 0 {
		r.stats.RateBytes = float64(copied) / time.Since(start).Seconds()
	}
	r.stats.Pending, r.stats.PendingBytes = 0, 0
	r.mu.Unlock()
	return mine, ctx.Err()
}

// inventory lists this node's blocks and finds which peers hold each. A
// peer that is down (or does not answer) is counted by its last known
// inventory, so the planner knows what it held when it died.
func (r *Repairer) inventory(ctx context.Context, members []mesh.Member) ([]BlockCopies, error) {
	sizes := map[persist.BlockID]int64{}
	if err := r.local.List(ctx, func(id persist.BlockID, size int) error {
		sizes[id] = int64(size)
		return nil
	}); err != nil {
		return nil, fmt.Errorf("list own blocks: %w", err)
	}
	holders := make(map[persist.BlockID][]string, len(sizes))
	for id := range sizes {
		holders[id] = []string{r.cfg.Self}
	}
	for _, m := range members {
		if m.Name == r.cfg.Self {
			continue
		}
		var held map[persist.BlockID]bool
		if m.Live() {
			seen := map[persist.BlockID]bool{}
			lctx, cancel := context.WithTimeout(ctx, time.Minute)
			err := r.peers.List(lctx, m.HTTP, func(id persist.BlockID, size int) error {
				if _, ok := sizes[id]; ok {
					seen[id] = true
				}
				return nil
			})
			cancel()
			if err == nil {
				held = seen
				r.mu.Lock()
				r.lastSeen[m.Name] = seen
				r.mu.Unlock()
			} else {
				r.log.Debug("repair: peer inventory unavailable, using its last one", "node", m.Name, "err", err)
			}
		}
		if held == nil {
			r.mu.Lock()
			held = r.lastSeen[m.Name]
			r.mu.Unlock()
		}
		for id := range held {
			if _, ok := holders[id]; ok {
				holders[id] = append(holders[id], m.Name)
			}
		}
	}
	// A node that died within the repair delay cannot be listed, and its
	// last inventory may predate recent writes. Placement says what it
	// held: the blocks it owned while alive. Presuming it holds them lets
	// the planner wait for its restart instead of copying at once.
	asIfAlive := make([]mesh.Member, len(members))
	recent := map[string]bool{}
	for i, m := range members {
		asIfAlive[i] = m
		if !m.Live() && !m.Since.IsZero() && time.Since(m.Since) < r.cfg.RepairDelay {
			asIfAlive[i].State = mesh.StateAlive
			recent[m.Name] = true
		}
	}
	blocks := make([]BlockCopies, 0, len(sizes))
	for id, size := range sizes {
		h := holders[id]
		if len(recent) > 0 {
			for _, o := range (mesh.Placement{}).Owners(id, asIfAlive, r.cfg.Replicas) {
				if recent[o.Name] && !slices.Contains(h, o.Name) {
					h = append(h, o.Name)
				}
			}
		}
		blocks = append(blocks, BlockCopies{ID: id, Size: size, Holders: h})
	}
	return blocks, nil
}

// copyAll sends the copies in order (most endangered first), at most
// Concurrency at a time and at most Rate bytes/s. It returns the bytes sent.
func (r *Repairer) copyAll(ctx context.Context, members []mesh.Member, copies []Copy) int64 {
	addr := map[string]string{}
	for _, m := range members {
		addr[m.Name] = m.HTTP
	}
	var sent int64
	var mu sync.Mutex
	noRoom := map[string]int{} // refused copies per full node, under mu
	sem := make(chan struct{}, r.cfg.Concurrency)
	var wg sync.WaitGroup
	for _, c := range copies {
		if err := r.limiter.WaitN(ctx, int(min(max(c.Size, 1), 64<<20))); err != nil {
			break
		}
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		wg.Add(1)
		go func(c Copy) {
			defer wg.Done()
			defer func() { <-sem }()
			err := r.copyOne(ctx, addr[c.To], c)
			r.mu.Lock()
			defer r.mu.Unlock()
			if err != nil {
				r.stats.Failed++
				if errors.Is(err, syscall.ENOSPC) {
					// Logged once per round and node below: a full
					// node refuses every copy of every round.
					mu.Lock()
					noRoom[c.To]++
					mu.Unlock()
					return
				}
				r.log.Warn("repair: copy failed", "block", c.Block, "to", c.To, "err", err)
				return
			}
			r.stats.Copied++
			r.stats.CopiedBytes += c.Size
			mu.Lock()
			sent += c.Size
			mu.Unlock()
		}(c)
	}
	wg.Wait()
	for node, n := range noRoom {
		r.log.Warn("repair: node has no room for the copies it owns; the blocks keep their copies elsewhere", "node", node, "refused", n)
	}
	return sent
}

func (r *Repairer) copyOne(ctx context.Context, to string, c Copy) error {
	if to == "" {
		return fmt.Errorf("copy block %s to %s: no address for that node", c.Block, c.To)
	}
	cctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	data, err := r.local.Get(cctx, c.Block)
	if err != nil {
		if r.cfg.Suspect != nil {
			r.cfg.Suspect(c.Block)
		}
		if r.cfg.Fetch == nil {
			return fmt.Errorf("read own copy of block %s: %w", c.Block, err)
		}
		r.log.Warn("repair: own copy unreadable; sending one from another node", "block", c.Block, "err", err)
		if data, err = r.cfg.Fetch(cctx, c.Block); err != nil {
			return fmt.Errorf("own copy of block %s unreadable, and no other: %w", c.Block, err)
		}
	}
	if err := r.peers.Put(cctx, to, c.Block, data); err != nil {
		return fmt.Errorf("copy block %s to %s: %w", c.Block, c.To, err)
	}
	r.log.Debug("repair: copied", "block", c.Block, "to", c.To, "live_before", c.Live)
	return nil
}

// dropAll deletes this node's surplus copies, each only after every owner
// of the block, asked right now, holds it.
func (r *Repairer) dropAll(ctx context.Context, members []mesh.Member, drops []Drop) {
	for _, d := range drops {
		if ctx.Err() != nil {
			return
		}
		owners := mesh.Placement{}.Owners(d.Block, members, r.cfg.Replicas)
		if err := r.confirmHeld(ctx, d.Block, owners); err != nil {
			r.log.Info("repair: keeping a surplus copy for now", "block", d.Block, "why", err)
			continue
		}
		// A rotten copy dropped unread would be rot nobody counted. The
		// read costs what the copy that made the surplus cost, and far
		// less than scrubbing the copy for as long as it stayed.
		if r.cfg.Dropped != nil {
			if _, err := r.local.Get(ctx, d.Block); errors.Is(err, persist.ErrCorrupt) {
				r.log.Warn("repair: the surplus copy being dropped is corrupt", "block", d.Block)
				r.cfg.Dropped(d.Block)
			}
		}
		if err := r.local.Delete(ctx, d.Block); err != nil {
			r.mu.Lock()
			r.stats.Failed++
			r.mu.Unlock()
			r.log.Warn("repair: drop surplus copy", "block", d.Block, "err", err)
			continue
		}
		r.mu.Lock()
		r.stats.Dropped++
		r.mu.Unlock()
	}
}

var errNotHeld = errors.New("an owner does not hold the block")

func (r *Repairer) confirmHeld(ctx context.Context, id persist.BlockID, owners []mesh.Member) error {
	if len(owners) < r.cfg.Replicas {
		return fmt.Errorf("only %d live owners of %d", len(owners), r.cfg.Replicas)
	}
	for _, o := range owners {
		if o.Name == r.cfg.Self {
			return fmt.Errorf("this node is an owner again")
		}
		if o.State != mesh.StateAlive {
			return fmt.Errorf("owner %s is %s", o.Name, o.State)
		}
		hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		ok, err := r.peers.Has(hctx, o.HTTP, id)
		cancel()
		if err != nil {
			return fmt.Errorf("ask owner %s: %w", o.Name, err)
		}
		if !ok {
			return fmt.Errorf("owner %s: %w", o.Name, errNotHeld)
		}
	}
	return nil
}
