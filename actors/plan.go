package actors

import (
	"bytes"
	"cmp"
	"slices"
	"strings"
	"time"

	"github.com/meshfs/meshfs/mesh"
	"github.com/meshfs/meshfs/persist"
)

// BlockCopies is what the mesh knows of one block: its size and the nodes
// that hold a verified copy, as their inventories report.
type BlockCopies struct {
	ID   persist.BlockID
	Size int64
	// Holders names the nodes holding a verified copy, in any order.
	// Duplicates are ignored; a name that is not a member counts as a node
	// that is gone.
	Holders []string
}

// Copy asks node From to send its copy of Block to node To.
type Copy struct {
	Block    persist.BlockID
	Size     int64
	From, To string
	// Live is how many live copies the block had when planned: the lower,
	// the more urgent.
	Live int
}

// Drop proposes that Node delete its copy of Block.
//
// It is a proposal made from a snapshot: right before deleting, the
// executor must check again, against the owners' current inventories (or a
// fresh plan), that every owner of the block still holds a verified copy. A
// drop is never urgent; skipping one only costs space until the next plan.
type Drop struct {
	Block persist.BlockID
	Node  string
}

// Plan is what the mesh should do next for a set of blocks. Each node runs
// the same plan over the same inputs and executes only its own part: the
// Copies whose From is itself and the Drops whose Node is itself, so every
// action has exactly one node responsible for it.
type Plan struct {
	// Copies are ordered most endangered first: fewer live copies first,
	// then more owners lacking the block, then by block id; a block's
	// copies go to its owners in placement order.
	Copies []Copy
	// Drops are ordered by block id, then node.
	Drops []Drop
	// Lost lists, by id, the blocks with no live copy anywhere. Nothing
	// can be planned for them until a holder comes back.
	Lost []persist.BlockID
	// Waiting counts the copies deferred by the repair delay, and Wake is
	// the earliest moment one may become due (zero if none): plan again
	// then, or at the next membership change, whichever comes first.
	Waiting int
	Wake    time.Time
	// UnderReplicated counts the blocks with fewer live copies than
	// min(Replicas, live members), lost ones included, and
	// UnderReplicatedBytes their sizes.
	UnderReplicated      int
	UnderReplicatedBytes int64
}

// Planner decides who should hold which block. It is a pure function of
// its inputs: no I/O, no goroutines, no clock (time is passed in), so the
// same inputs give the same Plan on every node, and it is tested with a
// simulated mesh of any size. The ownership and repair actors wrap it in a
// loop that gathers inventories, plans, executes their own part, and plans
// again when membership changes, an action completes, or Plan.Wake passes.
type Planner struct {
	// Replicas is R, the number of copies each block should have. Values
	// below 1 count as 1.
	Replicas int
	// RepairDelay is how long a block that still has two or more live
	// copies waits after a holder dies or leaves before it is copied
	// elsewhere, so that a restarting node does not cause a copy storm.
	RepairDelay time.Duration
}

// Plan works out, for each of blocks, the copies and drops that bring it to
// its owners: the first min(Replicas, live members) live members in
// placement order. Members alive or suspect are live. members may list
// dead and left members: their Since (when the state began, by the caller's
// clock, the same clock as now) drives the repair delay. Each block should
// appear once in blocks; neither slice is modified.
//
// The rules, per block:
//   - With no live holder, the block is Lost.
//   - Each owner lacking the block gets a Copy from the block's first live
//     holder in placement order.
//   - A copy is deferred (counted in Waiting) when the block has two or more
//     live copies and the copy would be needless if every holder that died
//     or left less than RepairDelay ago came back: that is, its target is
//     an owner only because a restarting holder is away. With one live copy
//     left nothing waits; a copy due to a join (a new owner) never waits.
//   - Live holders that are not owners are dropped, but only once every
//     owner holds the block and none of them is suspect, so a drop never
//     takes a block below min(Replicas, live members) live copies, and a
//     surplus copy outlives the owner copy that replaces it.
//
// Plan costs O(len(members)·Replicas) per block; see JoinAffects to find
// the few blocks a join touches without placing them all.
func (p Planner) Plan(now time.Time, members []mesh.Member, blocks []BlockCopies) Plan {
	pl := planning{
		now:     now,
		delay:   p.RepairDelay,
		members: members,
		t:       mesh.NewTable(members),
		byName:  make(map[string]int, len(members)),
	}
	for i, m := range members {
		// Names are unique in a membership listing; if one appears
		// twice, say mid-restart, the live entry is the one that answers.
		if j, dup := pl.byName[m.Name]; dup && pl.t.IsLive(j) {
			continue
		}
		pl.byName[m.Name] = i
	}
	pl.replicas = max(p.Replicas, 1)
	pl.r = min(pl.replicas, pl.t.Live())
	for i := range blocks {
		pl.block(&blocks[i])
	}
	return pl.finish()
}

// JoinAffects reports whether member joined of t, new to the mesh, becomes
// one of block id's owners. owners are the block's owners before the join,
// as indexes into t (at most Replicas of them; fewer when fewer members
// were live). Rendezvous hashing ranks every pair of members on its own, so
// the join changes the block's owners exactly when the newcomer ranks
// before one of them, or when there were fewer than Replicas: len(owners)+1
// weights instead of a ranking of every member. A join touches about
// Replicas/N of the blocks; only those need a Plan.
//
// A death or departure needs no such test: the blocks it touches are those
// the node held or owned, which the caller's holder index already lists.
func (p Planner) JoinAffects(t *mesh.Table, id persist.BlockID, owners []int, joined int) bool {
	if len(owners) < max(p.Replicas, 1) {
		return true
	}
	if t.Zoned() {
		// Zones rank members as a set, not pair by pair: a newcomer in
		// a zone the owners lack may displace one that ranks before it.
		after := t.AppendOwners(nil, id, max(p.Replicas, 1))
		return slices.ContainsFunc(after, func(o int) bool { return !slices.Contains(owners, o) })
	}
	for _, o := range owners {
		if t.Before(id, joined, o) {
			return true
		}
	}
	return false
}

// planning is one run of Plan: its inputs, its output so far, and scratch
// slices reused from block to block.
type planning struct {
	now      time.Time
	delay    time.Duration
	members  []mesh.Member
	t        *mesh.Table
	byName   map[string]int
	replicas int // R
	r        int // min(R, live members): how many copies a block can have

	copies []pendingCopy
	plan   Plan

	owners, live, recent, stay, cands []int
}

// pendingCopy carries a copy's sort key until Plan returns.
type pendingCopy struct {
	Copy
	missing int // owners lacking the block
}

func (pl *planning) block(b *BlockCopies) {
	t, id := pl.t, b.ID
	pl.owners = t.AppendOwners(pl.owners[:0], id, pl.r)
	pl.live, pl.recent = pl.live[:0], pl.recent[:0]
	for _, h := range b.Holders {
		i, ok := pl.byName[h]
		switch {
		case !ok:
			// Not a member: gone long enough to be forgotten.
		case t.IsLive(i):
			if !slices.Contains(pl.live, i) {
				pl.live = append(pl.live, i)
			}
		case pl.restarting(i):
			if !slices.Contains(pl.recent, i) {
				pl.recent = append(pl.recent, i)
			}
		}
	}
	if len(pl.live) < pl.r {
		pl.plan.UnderReplicated++
		pl.plan.UnderReplicatedBytes += b.Size
	}
	if len(pl.live) == 0 {
		pl.plan.Lost = append(pl.plan.Lost, id)
		return
	}

	missing := 0
	for _, o := range pl.owners {
		if !slices.Contains(pl.live, o) {
			missing++
		}
	}
	if missing == 0 {
		for _, o := range pl.owners {
			if pl.members[o].State == mesh.StateSuspect {
				// A suspect may be dead already: its copy does not
				// yet vouch for deleting another.
				return
			}
		}
		for _, h := range pl.live {
			if !slices.Contains(pl.owners, h) {
				pl.plan.Drops = append(pl.plan.Drops, Drop{Block: id, Node: t.Name(h)})
			}
		}
		return
	}

	// The source is the first live holder in placement order: one node,
	// which every node computes alike.
	src := pl.live[0]
	for _, h := range pl.live[1:] {
		if t.Before(id, h, src) {
			src = h
		}
	}
	// stay: the owners the block would have if every restarting holder
	// came back. A missing owner outside it is wanted only because one of
	// them is away, and may wait while two copies remain.
	deferring := len(pl.live) >= 2 && len(pl.recent) > 0
	if deferring {
		// Owners are chosen from these alone: adding members to a
		// mesh can only displace owners, never promote others.
		pl.cands = append(append(pl.cands[:0], pl.owners...), pl.recent...)
		pl.stay = t.AppendOwnersAmong(pl.stay[:0], id, pl.cands, pl.replicas)
	}
	waited := false
	for _, o := range pl.owners {
		if slices.Contains(pl.live, o) {
			continue
		}
		if deferring && !slices.Contains(pl.stay, o) {
			pl.plan.Waiting++
			waited = true
			continue
		}
		pl.copies = append(pl.copies, pendingCopy{
			Copy:    Copy{Block: id, Size: b.Size, From: t.Name(src), To: t.Name(o), Live: len(pl.live)},
			missing: missing,
		})
	}
	if waited {
		for _, i := range pl.recent {
			due := pl.members[i].Since.Add(pl.delay)
			if pl.plan.Wake.IsZero() || due.Before(pl.plan.Wake) {
				pl.plan.Wake = due
			}
		}
	}
}

// restarting reports whether member i, not live, died or left less than
// the repair delay ago. A zero Since means the time is unknown: long ago.
func (pl *planning) restarting(i int) bool {
	since := pl.members[i].Since
	return !since.IsZero() && pl.now.Sub(since) < pl.delay
}

func (pl *planning) finish() Plan {
	// Stable: a block's copies stay in placement order of their targets.
	slices.SortStableFunc(pl.copies, func(a, b pendingCopy) int {
		return cmp.Or(
			cmp.Compare(a.Live, b.Live),
			cmp.Compare(b.missing, a.missing),
			bytes.Compare(a.Block[:], b.Block[:]),
		)
	})
	if len(pl.copies) > 0 {
		pl.plan.Copies = make([]Copy, len(pl.copies))
		for i, c := range pl.copies {
			pl.plan.Copies[i] = c.Copy
		}
	}
	slices.SortFunc(pl.plan.Drops, func(a, b Drop) int {
		return cmp.Or(bytes.Compare(a.Block[:], b.Block[:]), strings.Compare(a.Node, b.Node))
	})
	slices.SortFunc(pl.plan.Lost, func(a, b persist.BlockID) int { return bytes.Compare(a[:], b[:]) })
	return pl.plan
}
