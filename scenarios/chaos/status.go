package chaos

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"time"

	"github.com/meshfs/meshfs/actors"
	"github.com/meshfs/meshfs/mesh"
	"github.com/meshfs/meshfs/persist"
)

// Status is the part of 'meshfs status --json' the scenarios read.
type Status struct {
	Replication int `json:"replication"`
	Members     []struct {
		Name   string `json:"name"`
		State  string `json:"state"`
		Blocks int64  `json:"blocks"`
		Bytes  int64  `json:"bytes"`
		Error  string `json:"error"`
	} `json:"members"`
	Blocks                int   `json:"blocks"`
	Copies                int64 `json:"copies"`
	UnderReplicatedBlocks int   `json:"under_replicated_blocks"`
	UnderReplicatedBytes  int64 `json:"under_replicated_bytes"`
	LostBlocks            int   `json:"lost_blocks"`
	Repair                struct {
		CopiedBytes int64 `json:"copied_bytes"`
		Waiting     int   `json:"waiting"`
	} `json:"repair"`
	Scrub struct {
		Corrupt  int64 `json:"corrupt"`
		ByPass   int64 `json:"found_by_pass"`
		Repaired int64 `json:"repaired"`
		Passes   int64 `json:"passes"`
	} `json:"scrub"`
	Metadata struct {
		Replicas int    `json:"replicas"`
		Leader   string `json:"leader"`
		Error    string `json:"error"`
	} `json:"metadata"`
}

// Healthy reports whether status shows every block at R live copies.
func (s Status) Healthy() bool {
	return s.UnderReplicatedBlocks == 0 && s.LostBlocks == 0 && s.Copies == int64(s.Replication*s.Blocks)
}

// State is the state status reports for the member named name ("" if
// it is not listed).
func (s Status) State(name string) string {
	for _, m := range s.Members {
		if m.Name == name {
			return m.State
		}
	}
	return ""
}

func (s Status) String() string {
	return fmt.Sprintf("blocks %d, copies %d (R=%d), under-replicated %d, lost %d, waiting %d", s.Blocks, s.Copies, s.Replication, s.UnderReplicatedBlocks, s.LostBlocks, s.Repair.Waiting)
}

// Status runs 'meshfs status --json' against the nodes whose process runs
// (their current addresses: up.json has the first ones only).
func (e *Env) Status(ctx context.Context) (Status, error) {
	var st Status
	args := []string{"status", "--json", "--secret-file", e.mesh.State.SecretFile}
	for _, i := range e.LiveNodes() {
		args = append(args, "--join", e.Node(i).HTTP)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.Meshfs, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return st, fmt.Errorf("meshfs status: %v: %s", err, strings.TrimSpace(stderr.String()))
	}
	if err := json.Unmarshal(stdout.Bytes(), &st); err != nil {
		return st, fmt.Errorf("meshfs status --json: %v", err)
	}
	return st, nil
}

// Inventory is who holds what, from the live members' own lists.
type Inventory struct {
	Members []mesh.Member
	Holders map[persist.BlockID][]string
	Sizes   map[persist.BlockID]int
}

// Union is the inventory of every copy held in inv or in o (o's members).
func (inv Inventory) Union(o Inventory) Inventory {
	u := Inventory{Members: o.Members, Holders: map[persist.BlockID][]string{}, Sizes: map[persist.BlockID]int{}}
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
	var err error
	for _, i := range e.LiveNodes() {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		ci, cerr := e.client.Cluster(cctx, e.Node(i).HTTP)
		cancel()
		if cerr != nil {
			err = cerr
			continue
		}
		inv.Members = ci.Members
		break
	}
	if inv.Members == nil {
		return inv, fmt.Errorf("no live node answered: %v", err)
	}
	for _, m := range inv.Members {
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

// NodeActors is the actors' state a node reports in its stats.
type NodeActors struct {
	Repair actors.RepairStats `json:"repair"`
	Scrub  actors.ScrubStats  `json:"scrub"`
}

// Actors returns node i's repair and scrub counters (since it started).
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
