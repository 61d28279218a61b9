package actors

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meshfs/meshfs/mesh"
	"github.com/meshfs/meshfs/persist"
)

const delay = 30 * time.Second

var now = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func aliveMembers(n int) []mesh.Member {
	ms := make([]mesh.Member, n)
	for i := range ms {
		ms[i] = mesh.Member{Name: fmt.Sprintf("n%d", i+1), State: mesh.StateAlive}
	}
	return ms
}

func blockID(i int) persist.BlockID {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(i))
	return persist.Sum(b[:])
}

// ranked returns the members' names in block id's placement order.
func ranked(id persist.BlockID, ms []mesh.Member) []string {
	var out []string
	for _, m := range (mesh.Placement{}).Order(id, ms) {
		out = append(out, m.Name)
	}
	return out
}

// down is a member's state in a test case, and how long ago it began.
type down struct {
	state mesh.State
	ago   time.Duration
}

// TestPlanBlock covers one block at a time. Members are named by their rank
// in the block's placement order (0 is the first owner), so each case reads
// the same whatever the hash; rank -1 is a node not in the membership.
func TestPlanBlock(t *testing.T) {
	dead := func(ago time.Duration) down { return down{mesh.StateDead, ago} }
	for _, tc := range []struct {
		name    string
		n, r    int
		down    map[int]down
		holders []int

		copies  []string // "from>to", by rank, in plan order
		live    int      // Live on every copy
		drops   []int
		lost    bool
		waiting int
		under   int
		wake    time.Duration // Plan.Wake - now, when waiting
	}{
		{name: "steady", n: 5, r: 3, holders: []int{0, 1, 2}},
		{name: "holder order does not matter", n: 5, r: 3, holders: []int{2, 0, 1, 0}},
		{
			name: "death past the delay: next in order gets a copy from the first live holder",
			n:    5, r: 3, down: map[int]down{0: dead(time.Hour)}, holders: []int{0, 1, 2},
			copies: []string{"1>3"}, live: 2, under: 1,
		},
		{
			name: "death within the delay, two copies left: waits",
			n:    5, r: 3, down: map[int]down{0: dead(10 * time.Second)}, holders: []int{0, 1, 2},
			waiting: 1, under: 1, wake: 20 * time.Second,
		},
		{
			name: "left within the delay waits like a death",
			n:    5, r: 3, down: map[int]down{1: {mesh.StateLeft, 5 * time.Second}}, holders: []int{0, 1, 2},
			waiting: 1, under: 1, wake: 25 * time.Second,
		},
		{
			name: "death with unknown Since does not wait",
			n:    5, r: 3, down: map[int]down{0: {mesh.StateDead, -1}}, holders: []int{0, 1, 2},
			copies: []string{"1>3"}, live: 2, under: 1,
		},
		{
			name: "two deaths within the delay, one copy left: copies at once",
			n:    5, r: 3, down: map[int]down{0: dead(time.Second), 1: dead(time.Second)}, holders: []int{0, 1, 2},
			copies: []string{"2>3", "2>4"}, live: 1, under: 1,
		},
		{
			name: "restarted within the delay, back with its copy: nothing to do",
			n:    5, r: 3, holders: []int{0, 1, 2},
		},
		{
			name: "suspect counts as live, holder and owner",
			n:    5, r: 3, down: map[int]down{0: {mesh.StateSuspect, time.Minute}}, holders: []int{0, 1, 2},
		},
		{
			name: "no drop while an owner is suspect",
			n:    5, r: 3, down: map[int]down{1: {mesh.StateSuspect, time.Second}}, holders: []int{0, 1, 2, 3},
		},
		{
			name: "suspect is a source",
			n:    5, r: 3, down: map[int]down{0: {mesh.StateSuspect, time.Minute}}, holders: []int{0, 4},
			copies: []string{"0>1", "0>2"}, live: 2, drops: nil, under: 1,
		},
		{
			name: "join: the new first owner gets a copy at once, no drop yet",
			n:    5, r: 3, holders: []int{1, 2, 3},
			copies: []string{"1>0"}, live: 3,
		},
		{
			name: "join done: the surplus copy is dropped",
			n:    5, r: 3, holders: []int{0, 1, 2, 3},
			drops: []int{3},
		},
		{
			name: "join and a restart at once: the join's copy does not wait",
			n:    5, r: 3, down: map[int]down{1: dead(time.Second)}, holders: []int{1, 2, 3},
			copies: []string{"2>0"}, live: 2, under: 1,
		},
		{
			name: "join and a restart: the restart's copy waits, the join's does not",
			n:    6, r: 3, down: map[int]down{1: dead(time.Second)}, holders: []int{1, 2, 5},
			copies: []string{"2>0"}, live: 2, waiting: 1, under: 1, wake: delay - time.Second,
		},
		{
			name: "surplus kept while an owner lacks the block",
			n:    5, r: 3, holders: []int{0, 1, 3},
			copies: []string{"0>2"}, live: 3,
		},
		{
			name: "source is the first live holder in order",
			n:    6, r: 3, holders: []int{5, 2, 4},
			copies: []string{"2>0", "2>1"}, live: 3,
		},
		{
			name: "lost: every holder dead",
			n:    5, r: 3, down: map[int]down{0: dead(time.Hour), 1: dead(time.Second)}, holders: []int{0, 1},
			lost: true, under: 1,
		},
		{
			name: "a holder that is not a member counts as gone",
			n:    5, r: 3, holders: []int{-1, 0, 1},
			copies: []string{"0>2"}, live: 2, under: 1,
		},
		{
			name: "fewer live members than R: all of them suffice",
			n:    2, r: 3, holders: []int{0, 1},
		},
		{
			name: "fewer live members than R, one copy: the other live member gets one",
			n:    3, r: 3, down: map[int]down{2: dead(time.Hour)}, holders: []int{1, 2},
			copies: []string{"1>0"}, live: 1, under: 1,
		},
		{
			name: "R=1 move to the new owner, then drop",
			n:    3, r: 1, holders: []int{2},
			copies: []string{"2>0"}, live: 1,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ms := aliveMembers(tc.n)
			id := blockID(7)
			rank := ranked(id, ms)
			name := func(r int) string {
				if r < 0 {
					return "gone"
				}
				return rank[r]
			}
			for r, d := range tc.down {
				for i := range ms {
					if ms[i].Name == rank[r] {
						ms[i].State = d.state
						if d.ago >= 0 {
							ms[i].Since = now.Add(-d.ago)
						}
					}
				}
			}
			b := BlockCopies{ID: id, Size: 100}
			for _, h := range tc.holders {
				b.Holders = append(b.Holders, name(h))
			}
			p := Planner{Replicas: tc.r, RepairDelay: delay}
			plan := p.Plan(now, ms, []BlockCopies{b})

			var copies []string
			for _, c := range plan.Copies {
				copies = append(copies, fmt.Sprintf("%d>%d", slices.Index(rank, c.From), slices.Index(rank, c.To)))
				if c.Live != tc.live || c.Block != id || c.Size != 100 {
					t.Errorf("copy %+v: want Live %d, Block and Size of the block", c, tc.live)
				}
			}
			if !slices.Equal(copies, tc.copies) {
				t.Errorf("copies = %v, want %v", copies, tc.copies)
			}
			var drops []int
			for _, d := range plan.Drops {
				drops = append(drops, slices.Index(rank, d.Node))
			}
			if !slices.Equal(drops, tc.drops) {
				t.Errorf("drops = %v, want %v", drops, tc.drops)
			}
			if got := len(plan.Lost) == 1 && plan.Lost[0] == id; got != tc.lost || len(plan.Lost) > 1 {
				t.Errorf("lost = %v, want lost %v", plan.Lost, tc.lost)
			}
			if plan.Waiting != tc.waiting {
				t.Errorf("waiting = %d, want %d", plan.Waiting, tc.waiting)
			}
			var wake time.Time
			if tc.waiting > 0 {
				wake = now.Add(tc.wake)
			}
			if !plan.Wake.Equal(wake) {
				t.Errorf("wake = %v, want %v", plan.Wake, wake)
			}
			if plan.UnderReplicated != tc.under || plan.UnderReplicatedBytes != int64(tc.under)*100 {
				t.Errorf("under-replicated = %d blocks, %d bytes; want %d, %d", plan.UnderReplicated, plan.UnderReplicatedBytes, tc.under, tc.under*100)
			}
			if err := checkPlan(p, now, ms, []BlockCopies{b}, plan); err != nil {
				t.Error(err)
			}
		})
	}
}

// TestPlanJoinCopiesBeforeDrops follows a join through to its end: the new
// owner is copied to first, and the surplus copy goes only in the next round,
// once the new owner's copy shows in its inventory.
func TestPlanJoinCopiesBeforeDrops(t *testing.T) {
	before := aliveMembers(5)
	after := append(aliveMembers(5), mesh.Member{Name: "new", State: mesh.StateAlive})
	p := Planner{Replicas: 3, RepairDelay: delay}
	var blocks []BlockCopies
	for i := 0; len(blocks) < 20; i++ {
		id := blockID(i)
		if ranked(id, after)[0] == "new" {
			blocks = append(blocks, BlockCopies{ID: id, Size: 1, Holders: ranked(id, before)[:3]})
		}
	}
	plan := p.Plan(now, after, blocks)
	if len(plan.Copies) != len(blocks) || len(plan.Drops) != 0 || plan.Waiting != 0 || plan.UnderReplicated != 0 {
		t.Fatalf("round 1: %d copies, %d drops, %d waiting, %d under-replicated; want %d copies only",
			len(plan.Copies), len(plan.Drops), plan.Waiting, plan.UnderReplicated, len(blocks))
	}
	for _, c := range plan.Copies {
		if c.To != "new" {
			t.Errorf("round 1: copy to %s, want to new", c.To)
		}
	}
	blocks = apply(blocks, plan)
	plan = p.Plan(now, after, blocks)
	if len(plan.Copies) != 0 || len(plan.Drops) != len(blocks) {
		t.Fatalf("round 2: %d copies, %d drops; want %d drops only", len(plan.Copies), len(plan.Drops), len(blocks))
	}
	for i, d := range plan.Drops {
		b := blocks[slices.IndexFunc(blocks, func(b BlockCopies) bool { return b.ID == d.Block })]
		if want := ranked(b.ID, before)[2]; d.Node != want {
			t.Errorf("drop %d: %s, want the old third owner %s", i, d.Node, want)
		}
	}
	blocks = apply(blocks, plan)
	if plan = p.Plan(now, after, blocks); len(plan.Copies)+len(plan.Drops) != 0 {
		t.Fatalf("round 3: %d copies, %d drops; want none", len(plan.Copies), len(plan.Drops))
	}
}

// TestPlanOrdersMostEndangeredFirst: one live copy before two, then the
// block that lacks more owners, then joins (three live copies).
func TestPlanOrdersMostEndangeredFirst(t *testing.T) {
	ms := aliveMembers(7)
	ms[6].State, ms[6].Since = mesh.StateDead, now.Add(-time.Hour)
	live := ms[:6]
	block := func(i int, liveRanks []int, extra ...string) BlockCopies {
		id := blockID(i)
		r := ranked(id, live)
		b := BlockCopies{ID: id, Size: int64(i), Holders: extra}
		for _, k := range liveRanks {
			b.Holders = append(b.Holders, r[k])
		}
		return b
	}
	blocks := []BlockCopies{
		block(1, []int{1, 2, 3}),          // join: one copy, Live 3
		block(2, []int{0, 1}, "n7"),       // Live 2, lacks 1
		block(3, []int{3, 4}),             // Live 2, lacks 3
		block(4, []int{4}, "n7", "gone"),  // Live 1, lacks 3
		block(5, nil, "n7"),               // lost
		block(6, []int{0, 1, 2, 3}, "n7"), // drop
	}
	plan := Planner{Replicas: 3, RepairDelay: delay}.Plan(now, ms, blocks)
	var got []string
	for _, c := range plan.Copies {
		got = append(got, fmt.Sprintf("%d/%d", c.Size, c.Live))
	}
	want := []string{"4/1", "4/1", "4/1", "3/2", "3/2", "3/2", "2/2", "1/3"}
	if !slices.Equal(got, want) {
		t.Errorf("copies (block/live) = %v, want %v", got, want)
	}
	// A block's copies go to its owners in placement order.
	r := ranked(blockID(4), live)
	for i, c := range plan.Copies[:3] {
		if c.To != r[i] {
			t.Errorf("block 4 copy %d to %s, want %s", i, c.To, r[i])
		}
	}
	if len(plan.Lost) != 1 || plan.Lost[0] != blockID(5) {
		t.Errorf("lost = %v, want block 5", plan.Lost)
	}
	if len(plan.Drops) != 1 || plan.Drops[0].Block != blockID(6) {
		t.Errorf("drops = %v, want block 6's surplus", plan.Drops)
	}
	if plan.UnderReplicated != 4 || plan.UnderReplicatedBytes != 2+3+4+5 {
		t.Errorf("under-replicated = %d, %d bytes; want 4, 14", plan.UnderReplicated, plan.UnderReplicatedBytes)
	}
	if err := checkPlan(Planner{Replicas: 3, RepairDelay: delay}, now, ms, blocks, plan); err != nil {
		t.Error(err)
	}
}

// TestPlanInvariants runs the planner on thousands of random meshes and
// holder sets and checks, besides checkPlan's rules on every plan, that the
// plan does not depend on the order of its inputs and that executing it
// converges: after two rounds of copies then drops, every block that is not
// lost is held by exactly its owners (plus surplus copies while an owner is
// suspect), and a third plan is empty.
func TestPlanInvariants(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 11))
	states := []mesh.State{mesh.StateAlive, mesh.StateAlive, mesh.StateAlive, mesh.StateAlive,
		mesh.StateSuspect, mesh.StateDead, mesh.StateDead, mesh.StateLeft}
	cases := 5000
	if testing.Short() {
		cases = 500
	}
	for c := 0; c < cases; c++ {
		ms := aliveMembers(1 + rng.IntN(10))
		zones := []string{""}
		if c%2 == 1 {
			zones = []string{"", "a", "b", "c"}[:1+rng.IntN(4)]
		}
		for i := range ms {
			ms[i].Zone = zones[rng.IntN(len(zones))]
			ms[i].State = states[rng.IntN(len(states))]
			if rng.IntN(8) > 0 {
				ms[i].Since = now.Add(-time.Duration(rng.Int64N(int64(2 * delay))))
			}
		}
		blocks := make([]BlockCopies, 1+rng.IntN(6))
		for i := range blocks {
			blocks[i] = BlockCopies{ID: blockID(c*10 + i), Size: 1 + rng.Int64N(1000)}
			for _, m := range ms {
				if rng.IntN(2) == 0 {
					blocks[i].Holders = append(blocks[i].Holders, m.Name)
				}
			}
			if rng.IntN(10) == 0 {
				blocks[i].Holders = append(blocks[i].Holders, "gone")
			}
			if rng.IntN(10) == 0 && len(blocks[i].Holders) > 0 {
				blocks[i].Holders = append(blocks[i].Holders, blocks[i].Holders[0])
			}
		}
		p := Planner{Replicas: 1 + rng.IntN(4), RepairDelay: delay}
		fail := func(format string, args ...any) {
			t.Helper()
			t.Fatalf("case %d (R=%d, members %v, blocks %v): %s", c, p.Replicas, ms, blocks, fmt.Sprintf(format, args...))
		}

		plan := p.Plan(now, ms, blocks)
		if err := checkPlan(p, now, ms, blocks, plan); err != nil {
			fail("%v", err)
		}
		shuffled := slices.Clone(ms)
		rng.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
		reordered := slices.Clone(blocks)
		rng.Shuffle(len(reordered), func(i, j int) { reordered[i], reordered[j] = reordered[j], reordered[i] })
		for i := range reordered {
			reordered[i].Holders = slices.Clone(reordered[i].Holders)
			slices.Reverse(reordered[i].Holders)
		}
		if again := p.Plan(now, shuffled, reordered); !reflect.DeepEqual(plan, again) {
			fail("plan depends on input order:\n%+v\n%+v", plan, again)
		}

		// Past every repair delay nothing waits, and two rounds converge.
		later := now.Add(2 * delay)
		state := blocks
		for round := 1; round <= 2; round++ {
			plan := p.Plan(later, ms, state)
			if err := checkPlan(p, later, ms, state, plan); err != nil {
				fail("round %d: %v", round, err)
			}
			if plan.Waiting != 0 {
				fail("round %d: %d copies wait past every delay", round, plan.Waiting)
			}
			state = apply(state, plan)
		}
		tab := mesh.NewTable(ms)
		r := min(p.Replicas, tab.Live())
		for _, b := range state {
			live := liveHolders(ms, b)
			if len(live) == 0 {
				continue
			}
			var owners []string
			for _, o := range tab.AppendOwners(nil, b.ID, r) {
				owners = append(owners, tab.Name(o))
			}
			slices.Sort(owners)
			// With a suspect owner, surplus copies stay: live ⊇ owners.
			surplus := slices.DeleteFunc(slices.Clone(live), func(h string) bool { return slices.Contains(owners, h) })
			if len(live)-len(surplus) != len(owners) || len(surplus) > 0 && !anySuspect(ms, owners) {
				fail("after two rounds block %s is on %v, want its owners %v", b.ID, live, owners)
			}
		}
		if plan := p.Plan(later, ms, state); len(plan.Copies)+len(plan.Drops) != 0 {
			fail("round 3 is not empty: %+v", plan)
		}
	}
}

func anySuspect(ms []mesh.Member, names []string) bool {
	for _, m := range ms {
		if m.State == mesh.StateSuspect && slices.Contains(names, m.Name) {
			return true
		}
	}
	return false
}

// apply executes a plan as if every copy and drop succeeded.
func apply(blocks []BlockCopies, plan Plan) []BlockCopies {
	out := make([]BlockCopies, len(blocks))
	at := map[persist.BlockID]int{}
	for i, b := range blocks {
		out[i] = b
		out[i].Holders = slices.Clone(b.Holders)
		at[b.ID] = i
	}
	for _, c := range plan.Copies {
		b := &out[at[c.Block]]
		b.Holders = append(b.Holders, c.To)
	}
	for _, d := range plan.Drops {
		b := &out[at[d.Block]]
		b.Holders = slices.DeleteFunc(b.Holders, func(h string) bool { return h == d.Node })
	}
	return out
}

// liveHolders returns the sorted distinct names of b's holders that are
// live members.
func liveHolders(ms []mesh.Member, b BlockCopies) []string {
	var out []string
	for _, h := range b.Holders {
		for _, m := range ms {
			if m.Name == h && m.Live() && !slices.Contains(out, h) {
				out = append(out, h)
			}
		}
	}
	slices.Sort(out)
	return out
}

// slowOwners picks r owners from a placement order the way Placement
// documents it: live members only, one per zone while zones last, then the
// rest in order; returned in placement order.
func slowOwners(order []mesh.Member, r int) []string {
	var live []mesh.Member
	for _, m := range order {
		if m.Live() {
			live = append(live, m)
		}
	}
	picked := make([]bool, len(live))
	zones := map[string]bool{}
	n := 0
	for i, m := range live {
		if n < r && !zones[m.Zone] {
			zones[m.Zone], picked[i] = true, true
			n++
		}
	}
	for i := range live {
		if n < r && !picked[i] {
			picked[i] = true
			n++
		}
	}
	var out []string
	for i, m := range live {
		if picked[i] {
			out = append(out, m.Name)
		}
	}
	return out
}

// checkPlan checks a plan against the planner's rules, recomputed the slow
// way from Placement.Order. The safety invariant is among them: applying
// the plan's drops alone leaves no block with fewer than min(R, live
// members) live copies if it had that many, nor below what it had.
func checkPlan(p Planner, now time.Time, ms []mesh.Member, blocks []BlockCopies, plan Plan) error {
	nlive := 0
	for _, m := range ms {
		if m.Live() {
			nlive++
		}
	}
	r := min(max(p.Replicas, 1), nlive)
	copies := map[persist.BlockID][]Copy{}
	for i, c := range plan.Copies {
		copies[c.Block] = append(copies[c.Block], c)
		if i > 0 && c.Live < plan.Copies[i-1].Live {
			return fmt.Errorf("copy %d (%d live) after one with %d live", i, c.Live, plan.Copies[i-1].Live)
		}
	}
	drops := map[persist.BlockID][]string{}
	for _, d := range plan.Drops {
		drops[d.Block] = append(drops[d.Block], d.Node)
	}
	var under, waiting int
	var underBytes int64
	for _, b := range blocks {
		order := (mesh.Placement{}).Order(b.ID, ms)
		owners := slowOwners(order, r)
		source := ""
		for _, m := range order {
			if m.Live() && source == "" && slices.Contains(b.Holders, m.Name) {
				source = m.Name
			}
		}
		live := liveHolders(ms, b)
		if len(live) < r {
			under++
			underBytes += b.Size
		}
		if lost := slices.Contains(plan.Lost, b.ID); lost != (len(live) == 0) {
			return fmt.Errorf("block %s with live holders %v: lost = %v", b.ID, live, lost)
		}
		var missing []string
		for _, o := range owners {
			if !slices.Contains(live, o) {
				missing = append(missing, o)
			}
		}
		var restarting, suspectOwner bool
		for _, m := range ms {
			if m.State == mesh.StateSuspect && slices.Contains(owners, m.Name) {
				suspectOwner = true
			}
			if !m.Live() && slices.Contains(b.Holders, m.Name) && !m.Since.IsZero() && now.Sub(m.Since) < p.RepairDelay {
				restarting = true
			}
		}
		var to []string
		for _, c := range copies[b.ID] {
			if c.From != source || c.Live != len(live) || c.Size != b.Size {
				return fmt.Errorf("block %s: copy %+v, want from %s with %d live", b.ID, c, source, len(live))
			}
			if !slices.Contains(missing, c.To) || slices.Contains(to, c.To) {
				return fmt.Errorf("block %s: copy to %s, which is not a missing owner %v (or twice)", b.ID, c.To, missing)
			}
			to = append(to, c.To)
		}
		if len(to) < len(missing) {
			if len(live) == 0 {
				continue // lost: nothing to copy from
			}
			if len(live) < 2 || !restarting {
				return fmt.Errorf("block %s: %d of missing owners %v wait, with %d live copies and restarting %v",
					b.ID, len(missing)-len(to), missing, len(live), restarting)
			}
			waiting += len(missing) - len(to)
		}
		left := len(live)
		for _, d := range drops[b.ID] {
			if !slices.Contains(live, d) || slices.Contains(owners, d) {
				return fmt.Errorf("block %s: drop on %s, not a surplus live holder (live %v, owners %v)", b.ID, d, live, owners)
			}
			if len(missing) > 0 || suspectOwner {
				return fmt.Errorf("block %s: drop on %s while owners %v lack it or one is suspect", b.ID, d, missing)
			}
			left--
		}
		if left < min(len(live), r) {
			return fmt.Errorf("block %s: drops leave %d live copies of %d, below min(R, live) = %d", b.ID, left, len(live), r)
		}
	}
	if waiting != plan.Waiting || (waiting > 0) == plan.Wake.IsZero() {
		return fmt.Errorf("waiting = %d, wake %v; want %d", plan.Waiting, plan.Wake, waiting)
	}
	if under != plan.UnderReplicated || underBytes != plan.UnderReplicatedBytes {
		return fmt.Errorf("under-replicated = %d (%d bytes), want %d (%d)", plan.UnderReplicated, plan.UnderReplicatedBytes, under, underBytes)
	}
	if n := len(plan.Lost); n > 0 && !slices.IsSortedFunc(plan.Lost, func(a, b persist.BlockID) int { return strings.Compare(a.String(), b.String()) }) {
		return fmt.Errorf("lost not sorted: %v", plan.Lost)
	}
	return nil
}

func BenchmarkPlan(b *testing.B) {
	ms := aliveMembers(1000)
	ms[0].State, ms[0].Since = mesh.StateDead, now.Add(-time.Hour)
	tab := mesh.NewTable(aliveMembers(1000))
	blocks := make([]BlockCopies, 1000)
	for i := range blocks {
		id := blockID(i)
		b := BlockCopies{ID: id, Size: 4 << 20}
		for _, o := range tab.AppendOwners(nil, id, 3) {
			b.Holders = append(b.Holders, tab.Name(o))
		}
		blocks[i] = b
	}
	p := Planner{Replicas: 3, RepairDelay: delay}
	for b.Loop() {
		p.Plan(now, ms, blocks)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(blocks)), "ns/block")
}

// TestJoinAffectsExactly: JoinAffects says true exactly for the blocks whose
// owners a join changes, with and without zones (where a newcomer in a new
// zone displaces owners that rank before it).
func TestJoinAffectsExactly(t *testing.T) {
	for _, tc := range []struct {
		name         string
		zones        []string
		newcomerZone string
	}{
		{"no zones", []string{"", "", "", "", ""}, ""},
		{"two zones, joins a third", []string{"a", "a", "a", "b", "b"}, "c"},
		{"two zones, joins one", []string{"a", "a", "a", "b", "b"}, "b"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := Planner{Replicas: 3}
			before := aliveMembers(len(tc.zones))
			for i := range before {
				before[i].Zone = tc.zones[i]
			}
			after := append(slices.Clone(before), mesh.Member{Name: "new", State: mesh.StateAlive, Zone: tc.newcomerZone})
			tb, ta := mesh.NewTable(before), mesh.NewTable(after)
			affected := 0
			for i := range 3000 {
				id := blockID(i)
				owners := tb.AppendOwners(nil, id, 3) // indexes agree: after extends before
				changed := fmt.Sprint(owners) != fmt.Sprint(ta.AppendOwners(nil, id, 3))
				if got := p.JoinAffects(ta, id, owners, len(before)); got != changed {
					t.Fatalf("block %d: JoinAffects %v, owners changed %v", i, got, changed)
				}
				if changed {
					affected++
				}
			}
			t.Logf("a join changed the owners of %d of 3000 blocks", affected)
			if affected == 0 {
				t.Error("no block's owners changed: the test proves nothing")
			}
		})
	}
}
