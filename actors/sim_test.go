package actors

import (
	"encoding/binary"
	"fmt"
	"math"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/meshfs/meshfs/mesh"
	"github.com/meshfs/meshfs/persist"
)

// The simulation runs the planner over a whole mesh in memory: one node
// dies, its blocks are repaired, then a new node joins and takes its share.
// It checks that each event moves about 1/N of the copies, that the plans
// keep the invariants (checkPlan) and converge, and reports how long the
// planning took.
//
// TestSim (100 nodes, 200,000 blocks) runs by default, race detector
// included. TestSimLarge (1,000 nodes, 10,000,000 blocks) takes about a
// minute on two cores and wants no race detector:
//
//	MESHFS_SIM=1 go test -run TestSimLarge -v -count=1 ./actors/

func TestSim(t *testing.T) { runSim(t, 100, 200_000) }

func TestSimLarge(t *testing.T) {
	if os.Getenv("MESHFS_SIM") == "" || testing.Short() {
		t.Skip("set MESHFS_SIM=1 (and leave out -race and -short) to simulate 1,000 nodes and 10M blocks")
	}
	runSim(t, 1000, 10_000_000)
}

const (
	simReplicas  = 3
	simSlots     = simReplicas + 1 // a join holds R+1 copies between its copy and its drop
	simNone      = math.MaxUint16
	simBlockSize = 4 << 20
)

// sim is a mesh in memory. Blocks are numbered and their ids derived from
// the number (simID), so a block costs only its holder slots: 8 bytes.
type sim struct {
	members []mesh.Member
	index   map[string]uint16       // member name → index
	holders [][simSlots]uint16      // node indexes, simNone in free slots
	at      map[persist.BlockID]int // block id → number, for the blocks being planned
}

// simID derives block i's id: 32 bytes of splitmix64 output, as uniform as
// a SHA-256 and far cheaper.
func simID(i int) persist.BlockID {
	var id persist.BlockID
	for k := 0; k < 4; k++ {
		z := uint64(i)*4 + uint64(k) + 1
		z *= 0x9e3779b97f4a7c15
		z = (z ^ z>>30) * 0xbf58476d1ce4e5b9
		z = (z ^ z>>27) * 0x94d049bb133111eb
		binary.BigEndian.PutUint64(id[8*k:], z^z>>31)
	}
	return id
}

func simName(i int) string { return fmt.Sprintf("node%04d", i+1) }

// newSim builds a converged mesh: every block on exactly its owners.
// Placing every block over every node is the costly part, so it is spread
// over the CPUs.
func newSim(nodes, blocks int) *sim {
	s := &sim{index: map[string]uint16{}, holders: make([][simSlots]uint16, blocks)}
	for i := 0; i < nodes; i++ {
		s.addNode()
	}
	tab := mesh.NewTable(s.members)
	var wg sync.WaitGroup
	workers := runtime.GOMAXPROCS(0)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			own := make([]int, 0, simReplicas)
			for i := w; i < blocks; i += workers {
				own = tab.AppendOwners(own[:0], simID(i), simReplicas)
				s.holders[i] = [simSlots]uint16{simNone, simNone, simNone, simNone}
				for k, o := range own {
					s.holders[i][k] = uint16(o)
				}
			}
		}()
	}
	wg.Wait()
	return s
}

func (s *sim) addNode() int {
	i := len(s.members)
	s.members = append(s.members, mesh.Member{Name: simName(i), State: mesh.StateAlive})
	s.index[simName(i)] = uint16(i)
	return i
}

// holding lists the blocks node d holds: what each node's inventory tells
// it, found here by a scan.
func (s *sim) holding(d int) []int {
	var out []int
	for i, hs := range s.holders {
		for _, h := range hs {
			if int(h) == d {
				out = append(out, i)
			}
		}
	}
	return out
}

// joinAffected lists the blocks whose owners a join of node j changes,
// testing each block against its current holders (its owners: the mesh is
// converged) rather than placing it again.
func (s *sim) joinAffected(p Planner, j int) []int {
	tab := mesh.NewTable(s.members)
	var out []int
	owners := make([]int, 0, simSlots)
	for i, hs := range s.holders {
		owners = owners[:0]
		for _, h := range hs {
			if h != simNone {
				owners = append(owners, int(h))
			}
		}
		if p.JoinAffects(tab, simID(i), owners, j) {
			out = append(out, i)
		}
	}
	return out
}

// inputs turns the given blocks into the planner's input.
func (s *sim) inputs(blocks []int) []BlockCopies {
	out := make([]BlockCopies, len(blocks))
	s.at = make(map[persist.BlockID]int, len(blocks))
	for k, i := range blocks {
		b := BlockCopies{ID: simID(i), Size: simBlockSize}
		for _, h := range s.holders[i] {
			if h != simNone {
				b.Holders = append(b.Holders, s.members[h].Name)
			}
		}
		out[k] = b
		s.at[b.ID] = i
	}
	return out
}

// apply executes a plan over the blocks last given to inputs, as if every
// copy and drop succeeded.
func (s *sim) apply(t *testing.T, plan Plan) {
	for _, c := range plan.Copies {
		s.put(t, s.at[c.Block], int(s.index[c.To]))
	}
	for _, d := range plan.Drops {
		s.remove(s.at[d.Block], int(s.index[d.Node]))
	}
}

func (s *sim) put(t *testing.T, i, node int) {
	for k, h := range s.holders[i] {
		if h == simNone {
			s.holders[i][k] = uint16(node)
			return
		}
	}
	t.Fatalf("block %d: more than %d holders", i, simSlots)
}

func (s *sim) remove(i, node int) {
	for k, h := range s.holders[i] {
		if int(h) == node {
			s.holders[i][k] = simNone
		}
	}
}

// checkSample checks every stride-th block against a fresh placement over
// the current membership: the blocks no event touched must still be on
// exactly their owners.
func (s *sim) checkSample(t *testing.T, stride int) {
	tab := mesh.NewTable(s.members)
	var own []int
	for i := 0; i < len(s.holders); i += stride {
		own = tab.AppendOwners(own[:0], simID(i), simReplicas)
		var have []int
		for _, h := range s.holders[i] {
			if h != simNone && tab.IsLive(int(h)) {
				have = append(have, int(h))
			}
		}
		if len(have) != len(own) {
			t.Fatalf("block %d held by %v, want its owners %v", i, have, own)
		}
		for _, o := range own {
			found := false
			for _, h := range have {
				found = found || h == o
			}
			if !found {
				t.Fatalf("block %d held by %v, want its owners %v", i, have, own)
			}
		}
	}
}

func runSim(t *testing.T, nodes, blocks int) {
	start := time.Now()
	s := newSim(nodes, blocks)
	t.Logf("sim nodes=%d blocks=%d setup_s=%.1f", nodes, blocks, time.Since(start).Seconds())
	p := Planner{Replicas: simReplicas, RepairDelay: 30 * time.Second}
	copiesTotal := float64(simReplicas * blocks)
	near := func(event string, got, want float64) {
		t.Helper()
		if d := got/want - 1; d > 0.1 || d < -0.1 {
			t.Errorf("%s: fraction %.6f, want %.6f ± 10%%", event, got, want)
		}
	}
	// plan times finding the affected blocks (from the holder index, or
	// JoinAffects), building the planner's input and planning.
	plan := func(at time.Time, find func() []int) ([]int, []BlockCopies, Plan, time.Duration) {
		start := time.Now()
		affected := find()
		in := s.inputs(affected)
		pl := p.Plan(at, s.members, in)
		return affected, in, pl, time.Since(start)
	}
	check := func(event string, at time.Time, in []BlockCopies, pl Plan) {
		t.Helper()
		if err := checkPlan(p, at, s.members, in, pl); err != nil {
			t.Fatalf("%s: %v", event, err)
		}
	}

	// (a) A node dies. Within the repair delay its blocks wait (they have
	// two copies left); past it, each gets one copy.
	d := nodes / 3
	diedAt := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	s.members[d].State, s.members[d].Since = mesh.StateDead, diedAt
	holding := func() []int { return s.holding(d) }

	now := diedAt.Add(10 * time.Second)
	affected, in, pl, took := plan(now, holding)
	t.Logf("sim nodes=%d blocks=%d event=restart affected=%d copies=%d waiting=%d plan_s=%.3f",
		nodes, blocks, len(affected), len(pl.Copies), pl.Waiting, took.Seconds())
	if len(pl.Copies) != 0 || pl.Waiting != len(affected) || pl.UnderReplicated != len(affected) {
		t.Errorf("restart: %d copies, %d waiting, %d under-replicated; want 0, %d, %d",
			len(pl.Copies), pl.Waiting, pl.UnderReplicated, len(affected), len(affected))
	}
	check("restart", now, in, pl)

	now = diedAt.Add(time.Minute)
	affected, in, pl, took = plan(now, holding)
	frac := float64(len(pl.Copies)) / copiesTotal
	t.Logf("sim nodes=%d blocks=%d event=death affected=%d affected_frac=%.6f copies=%d fraction=%.6f ideal=%.6f under_bytes=%d plan_s=%.3f",
		nodes, blocks, len(affected), float64(len(affected))/float64(blocks), len(pl.Copies), frac, 1/float64(nodes),
		pl.UnderReplicatedBytes, took.Seconds())
	near("death copies", frac, 1/float64(nodes))
	near("death affected", float64(len(affected))/float64(blocks), simReplicas/float64(nodes))
	if len(pl.Copies) != len(affected) || len(pl.Drops) != 0 || pl.Waiting != 0 || len(pl.Lost) != 0 {
		t.Errorf("death: %d copies, %d drops, %d waiting, %d lost; want %d copies only",
			len(pl.Copies), len(pl.Drops), pl.Waiting, len(pl.Lost), len(affected))
	}
	check("death", now, in, pl)
	s.apply(t, pl)
	if pl = p.Plan(now, s.members, s.inputs(affected)); len(pl.Copies)+len(pl.Drops)+pl.UnderReplicated != 0 {
		t.Fatalf("death, after repair: %d copies, %d drops, %d under-replicated; want none",
			len(pl.Copies), len(pl.Drops), pl.UnderReplicated)
	}
	for _, i := range affected { // the dead node is gone for good
		s.remove(i, d)
	}

	// (b) A node joins. It should end up with 1/N of the copies: first
	// copies to it, then, once it holds them, drops of the surplus.
	j := s.addNode()
	live := nodes // one died, one joined
	affected, in, pl, took = plan(now, func() []int { return s.joinAffected(p, j) })
	frac = float64(len(pl.Copies)) / copiesTotal
	check("join", now, in, pl)
	for _, c := range pl.Copies {
		if c.To != simName(j) {
			t.Fatalf("join: copy to %s, want to the new node %s", c.To, simName(j))
		}
	}
	if len(pl.Copies) != len(affected) || len(pl.Drops) != 0 || pl.Waiting != 0 {
		t.Errorf("join: %d copies, %d drops, %d waiting; want %d copies and no drop before they are held",
			len(pl.Copies), len(pl.Drops), pl.Waiting, len(affected))
	}
	s.apply(t, pl)
	startDrops := time.Now()
	dropIn := s.inputs(affected)
	drops := p.Plan(now, s.members, dropIn)
	tookDrops := time.Since(startDrops)
	t.Logf("sim nodes=%d blocks=%d event=join affected=%d affected_frac=%.6f copies=%d fraction=%.6f ideal=%.6f drops=%d plan_s=%.3f drop_plan_s=%.3f",
		nodes, blocks, len(affected), float64(len(affected))/float64(blocks), len(pl.Copies), frac, 1/float64(live),
		len(drops.Drops), took.Seconds(), tookDrops.Seconds())
	near("join copies", frac, 1/float64(live))
	if len(drops.Copies) != 0 || len(drops.Drops) != len(affected) {
		t.Errorf("join, second round: %d copies, %d drops; want %d drops only", len(drops.Copies), len(drops.Drops), len(affected))
	}
	// (c) The invariant: the drops leave every block with R live copies.
	check("join drops", now, dropIn, drops)
	s.apply(t, drops)
	if pl = p.Plan(now, s.members, s.inputs(affected)); len(pl.Copies)+len(pl.Drops)+pl.UnderReplicated != 0 {
		t.Fatalf("join, third round: %d copies, %d drops, %d under-replicated; want none",
			len(pl.Copies), len(pl.Drops), pl.UnderReplicated)
	}
	// And the blocks no event touched are where a fresh placement puts them.
	s.checkSample(t, max(1, blocks/200_000))
}
