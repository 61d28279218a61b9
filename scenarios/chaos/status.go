package chaos

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"github.com/meshfs/meshfs/actors"
	"github.com/meshfs/meshfs/mesh"
	"github.com/meshfs/meshfs/persist"
	"github.com/meshfs/meshfs/scenarios/harness"
)

// Status is the part of 'meshfs status --json' the scenarios read. (The
// tests in scenarios/ read their own copy, meshStatus: cmd/meshfs, which
// writes it, is a main package.)
type Status struct {
	Replication           int   `json:"replication"`
	Blocks                int   `json:"blocks"`
	Copies                int64 `json:"copies"`
	UnderReplicatedBlocks int   `json:"under_replicated_blocks"`
	LostBlocks            int   `json:"lost_blocks"`
	Repair                struct {
		Waiting int `json:"waiting"`
	} `json:"repair"`
	Scrub struct {
		Corrupt  int64 `json:"corrupt"`
		ByPass   int64 `json:"found_by_pass"`
		ByWrite  int64 `json:"found_by_write"`
		ByDrop   int64 `json:"found_by_drop"`
		Repaired int64 `json:"repaired"`
	} `json:"scrub"`
	Metadata harness.Metadata `json:"metadata"`
}

// Healthy reports whether status shows every block at R live copies.
func (s Status) Healthy() bool {
	return s.UnderReplicatedBlocks == 0 && s.LostBlocks == 0 && s.Copies == int64(s.Replication*s.Blocks)
}

func (s Status) String() string {
	return fmt.Sprintf("blocks %d, copies %d (R=%d), under-replicated %d, lost %d, waiting %d", s.Blocks, s.Copies, s.Replication, s.UnderReplicatedBlocks, s.LostBlocks, s.Repair.Waiting)
}

// Status runs 'meshfs status --json' against the nodes whose process runs
// (their current addresses: up.json has the first ones only).
func (e *Env) Status(ctx context.Context) (Status, error) {
	var addrs []string
	for _, i := range e.LiveNodes() {
		addrs = append(addrs, e.Node(i).HTTP)
	}
	var st Status
	err := harness.Status(ctx, e.Meshfs, e.mesh.State.SecretFile, addrs, &st)
	return st, err
}

// waitStatus polls 'meshfs status' until ok holds, for at most within.
func waitStatus(ctx context.Context, e *Env, within time.Duration, ok func(Status) bool) bool {
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if st, err := e.Status(ctx); err == nil && ok(st) {
			return true
		}
		if !Sleep(ctx, 500*time.Millisecond) {
			return false
		}
	}
	return false
}

// waitMetadata waits, for at most a minute, until 'meshfs status' shows
// the metadata ready for the run's nodes (harness.Metadata.Ready).
func (e *Env) waitMetadata(ctx context.Context) error {
	t := time.Now()
	var last Status
	ok := waitStatus(ctx, e, time.Minute, func(s Status) bool {
		last = s
		return s.Metadata.Ready(e.Nodes)
	})
	if !ok {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("the metadata is not ready a minute after the mesh was up: %+v", last.Metadata)
	}
	e.Logf("metadata at %d replicas, leader %s, %.1fs after the mesh was up", last.Metadata.Replicas, last.Metadata.Leader, time.Since(t).Seconds())
	return nil
}

// Inventory is who holds what, from the live members' own lists.
type Inventory struct {
	Holders map[persist.BlockID][]string
	Sizes   map[persist.BlockID]int
}

// Union is the inventory of every copy held in inv or in o.
func (inv Inventory) Union(o Inventory) Inventory {
	u := Inventory{Holders: map[persist.BlockID][]string{}, Sizes: map[persist.BlockID]int{}}
	for _, src := range []Inventory{inv, o} {
		for id, hs := range src.Holders {
			for _, h := range hs {
				if !slices.Contains(u.Holders[id], h) {
					u.Holders[id] = append(u.Holders[id], h)
				}
			}
			u.Sizes[id] = src.Sizes[id]
		}
	}
	return u
}

// Added returns the bytes of the copies of want's blocks that inv holds
// and before did not: copies made between the two inventories.
func (inv Inventory) Added(before Inventory, want map[persist.BlockID]bool) (copies int, bytes int64) {
	for id := range want {
		for _, h := range inv.Holders[id] {
			if !slices.Contains(before.Holders[id], h) {
				copies++
				bytes += int64(inv.Sizes[id])
			}
		}
	}
	return copies, bytes
}

// Copies counts the copies of the known files' blocks: how many blocks,
// how many have fewer than r live copies, and how many have none.
func (inv Inventory) Copies(want map[persist.BlockID]bool, r int) (blocks, under, lost int) {
	for id := range want {
		n := len(inv.Holders[id])
		if n < r {
			under++
		}
		if n == 0 {
			lost++
		}
	}
	return len(want), under, lost
}

// Inventory asks a live node for the members and every live member for
// the blocks it holds.
func (e *Env) Inventory(ctx context.Context) (Inventory, error) {
	inv := Inventory{Holders: map[persist.BlockID][]string{}, Sizes: map[persist.BlockID]int{}}
	var members []mesh.Member
	var err error
	for _, i := range e.LiveNodes() {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		ci, cerr := e.client.Cluster(cctx, e.Node(i).HTTP)
		cancel()
		if cerr != nil {
			err = cerr
			continue
		}
		members = ci.Members
		break
	}
	if members == nil {
		return inv, fmt.Errorf("no live node answered: %v", err)
	}
	for _, m := range members {
		if !m.Live() {
			continue
		}
		lctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		err := e.client.List(lctx, m.HTTP, func(id persist.BlockID, size int) error {
			inv.Holders[id] = append(inv.Holders[id], m.Name)
			inv.Sizes[id] = size
			return nil
		})
		cancel()
		if err != nil {
			// A member not yet declared dead: its copies do not count.
			for id, hs := range inv.Holders {
				if n := len(hs); n > 0 && hs[n-1] == m.Name {
					inv.Holders[id] = hs[:n-1]
				}
			}
		}
	}
	return inv, nil
}

// NodeActors is the actors' state a node reports in its stats (the part
// the scenarios read).
type NodeActors struct {
	Repair actors.RepairStats `json:"repair"`
}

// Actors returns node i's repair counters (since it started).
func (e *Env) Actors(ctx context.Context, i int) (NodeActors, error) {
	var na NodeActors
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	st, err := e.client.Stats(ctx, e.Node(i).HTTP)
	if err != nil {
		return na, err
	}
	if err := json.Unmarshal(st.Actors, &na); err != nil {
		return na, fmt.Errorf("stats of %s: %w", e.Node(i).Name, err)
	}
	return na, nil
}
