package mesh

import (
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"testing"

	"github.com/meshfs/meshfs/persist"
)

func testMembers(n int) []Member {
	ms := make([]Member, n)
	for i := range ms {
		ms[i] = Member{Name: fmt.Sprintf("node%d", i+1), State: StateAlive}
	}
	return ms
}

func testID(i int) persist.BlockID {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(i))
	return persist.Sum(b[:])
}

func names(ms []Member) []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = m.Name
	}
	return out
}

func TestPlacementDeterministic(t *testing.T) {
	ms := testMembers(7)
	reversed := make([]Member, len(ms))
	for i, m := range ms {
		reversed[len(ms)-1-i] = m
	}
	for i := 0; i < 1000; i++ {
		a := names(Placement{}.Owners(testID(i), ms, 3))
		b := names(Placement{}.Owners(testID(i), reversed, 3))
		if fmt.Sprint(a) != fmt.Sprint(b) {
			t.Fatalf("block %d: owners depend on member order: %v vs %v", i, a, b)
		}
		if len(a) != 3 || a[0] == a[1] || a[1] == a[2] || a[0] == a[2] {
			t.Fatalf("block %d: want 3 distinct owners, got %v", i, a)
		}
	}
}

func TestPlacementSkipsDeadMembers(t *testing.T) {
	ms := testMembers(5)
	id := testID(42)
	order := Placement{}.Order(id, ms)
	// Kill the first owner: the others keep their rank and the fourth in
	// order steps in.
	for i := range ms {
		if ms[i].Name == order[0].Name {
			ms[i].State = StateDead
		}
	}
	got := names(Placement{}.Owners(id, ms, 3))
	want := names(order[1:4])
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("owners with first owner dead = %v, want %v", got, want)
	}
}

// TestPlacementMovement checks rendezvous hashing's promise over 100k ids:
// a node joining or leaving one of N moves about R/N of the block copies
// (1/N of the blocks gain or lose a copy), and only those.
func TestPlacementMovement(t *testing.T) {
	const ids, r = 100_000, 3
	for _, n := range []int{3, 5, 10} {
		t.Run(fmt.Sprintf("N=%d", n), func(t *testing.T) {
			before := testMembers(n)
			after := testMembers(n + 1) // node N+1 joins
			var changedJoin, changedLeave int
			left := before[1:] // node1 leaves
			for i := 0; i < ids; i++ {
				id := testID(i)
				b := Placement{}.Owners(id, before, r)
				a := Placement{}.Owners(id, after, r)
				l := Placement{}.Owners(id, left, r)
				if !sameSet(b, a) {
					changedJoin++
					// Only the new node may appear, replacing one owner.
					if diff := setDiff(a, b); len(diff) != 1 || diff[0] != after[n].Name {
						t.Fatalf("block %d: join moved copies beyond the new node: %v -> %v", i, names(b), names(a))
					}
				}
				if !sameSet(b, l) {
					changedLeave++
					if diff := setDiff(b, l); len(diff) != 1 || diff[0] != "node1" {
						t.Fatalf("block %d: leave moved copies beyond the leaving node: %v -> %v", i, names(b), names(l))
					}
				}
			}
			// A block changes owners iff the joining node ranks in its top R:
			// probability R/(N+1). Likewise a leave touches R/N of blocks.
			wantJoin := float64(r) / float64(n+1)
			wantLeave := float64(r) / float64(n)
			if n < r { // every block is on every node
				wantLeave = 0
			}
			gotJoin := float64(changedJoin) / ids
			gotLeave := float64(changedLeave) / ids
			t.Logf("N=%d join moved %.4f of blocks (ideal %.4f), leave %.4f (ideal %.4f)", n, gotJoin, wantJoin, gotLeave, wantLeave)
			if d := gotJoin - wantJoin; d > 0.01 || d < -0.01 {
				t.Errorf("join: moved %.4f of blocks, want %.4f ± 0.01", gotJoin, wantJoin)
			}
			if d := gotLeave - wantLeave; d > 0.01 || d < -0.01 {
				t.Errorf("leave: moved %.4f of blocks, want %.4f ± 0.01", gotLeave, wantLeave)
			}
		})
	}
}

func sameSet(a, b []Member) bool { return len(setDiff(a, b)) == 0 && len(a) == len(b) }

// setDiff returns the names in a that are not in b.
func setDiff(a, b []Member) []string {
	in := map[string]bool{}
	for _, m := range b {
		in[m.Name] = true
	}
	var out []string
	for _, m := range a {
		if !in[m.Name] {
			out = append(out, m.Name)
		}
	}
	return out
}

// TestWeightGolden pins the weight function: every process of a cluster must
// compute the same weights, and a change would move almost every block.
func TestWeightGolden(t *testing.T) {
	for _, tc := range []struct {
		id   int
		name string
		want uint64
	}{
		{0, "node1", 0xcbe9e989a14bd554},
		{1, "node1", 0xaeadc3fdb55c313a},
		{0, "node2", 0x180af722cb94dd5e},
		{1, "node2", 0x4bf5ccf4e535172d},
		{0, "a", 0x187f5a03d9e491a0},
		{1, "a", 0xf052c8083c1e0aed},
		{0, "", 0xcf96baef8bfe7e46},
		{1, "", 0x2d67215c1289d2c3},
	} {
		tab := NewTable([]Member{{Name: tc.name, State: StateAlive}})
		if got := tab.Weight(testID(tc.id), 0); got != tc.want {
			t.Errorf("weight(testID(%d), %q) = %#x, want %#x", tc.id, tc.name, got, tc.want)
		}
	}
	// nameKey is standard FNV-1a, mixed: an implementation in another
	// language can reproduce it from the spec.
	for _, name := range []string{"", "a", "node1", "node-with-a-longer-name.example.org"} {
		h := fnv.New64a()
		h.Write([]byte(name))
		if got, want := nameKey(name), mix64(h.Sum64()); got != want {
			t.Errorf("nameKey(%q) = %#x, want mix64(fnv1a) = %#x", name, got, want)
		}
	}
}

// TestOwnersAgreeWithOrder checks the top-n selection of Owners and
// Table.AppendOwners against the full sort of Order, over random live sets,
// including duplicate names (equal weights, so the tie-break decides).
func TestOwnersAgreeWithOrder(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	states := []State{StateAlive, StateSuspect, StateDead, StateLeft}
	for c := 0; c < 2000; c++ {
		ms := testMembers(1 + rng.IntN(12))
		for i := range ms {
			ms[i].State = states[rng.IntN(len(states))]
			if rng.IntN(10) == 0 {
				ms[i].Name = ms[rng.IntN(len(ms))].Name
			}
		}
		id := testID(c)
		n := rng.IntN(len(ms) + 2)
		var want []string
		for _, m := range (Placement{}).Order(id, ms) {
			if m.Live() && len(want) < n {
				want = append(want, m.Name)
			}
		}
		if got := names(Placement{}.Owners(id, ms, n)); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("case %d: Owners(n=%d) = %v, want first live of Order %v", c, n, got, want)
		}
		tab := NewTable(ms)
		prefix := []int{-1}
		idx := tab.AppendOwners(prefix, id, n)
		if idx[0] != -1 {
			t.Fatalf("case %d: AppendOwners overwrote dst's prefix", c)
		}
		var got []string
		for _, i := range idx[1:] {
			got = append(got, tab.Name(i))
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("case %d: Table.AppendOwners(n=%d) = %v, want %v", c, n, got, want)
		}
		// Before agrees with Order for every pair, live or not.
		order := (Placement{}).Order(id, ms)
		pos := map[string]int{}
		for i, m := range order {
			if _, dup := pos[m.Name]; !dup {
				pos[m.Name] = i
			}
		}
		for i := range ms {
			for j := range ms {
				if ms[i].Name == ms[j].Name {
					continue
				}
				if got, want := tab.Before(id, i, j), pos[ms[i].Name] < pos[ms[j].Name]; got != want {
					t.Fatalf("case %d: Before(%s, %s) = %v, want %v", c, ms[i].Name, ms[j].Name, got, want)
				}
			}
		}
	}
}

// TestPlacementBalance checks that the fast weights spread blocks evenly:
// each member is first owner of 1/N of the blocks and holds R/N of them, and
// each ordered pair of (first, second) owners is equally likely, which is
// what makes a dead node's blocks re-replicate from all survivors at once.
func TestPlacementBalance(t *testing.T) {
	const ids, n, r = 100_000, 10, 3
	ms := testMembers(n)
	tab := NewTable(ms)
	first := make([]int, n)
	held := make([]int, n)
	pairs := map[[2]int]int{}
	var own []int
	for i := 0; i < ids; i++ {
		own = tab.AppendOwners(own[:0], testID(i), r)
		first[own[0]]++
		pairs[[2]int{own[0], own[1]}]++
		for _, o := range own {
			held[o]++
		}
	}
	within := func(what string, got int, want, tol float64) {
		if d := float64(got)/want - 1; d > tol || d < -tol {
			t.Errorf("%s: %d, want %.0f ± %.0f%%", what, got, want, tol*100)
		}
	}
	for i := range ms {
		within(ms[i].Name+" first owner", first[i], ids/n, 0.05)
		within(ms[i].Name+" holder", held[i], ids*r/n, 0.05)
	}
	if len(pairs) != n*(n-1) {
		t.Errorf("%d distinct (first, second) owner pairs, want %d", len(pairs), n*(n-1))
	}
	for p, c := range pairs {
		within(fmt.Sprintf("pair %v", p), c, ids/(n*(n-1)), 0.15)
	}
}

// Placement benchmarks. The first three compare with the SHA-256 weights
// they replaced (same bodies, testID's own SHA-256 included, ~0.3µs).
func BenchmarkPlacementOwners(b *testing.B) {
	ms := testMembers(100)
	for i := 0; b.Loop(); i++ {
		Placement{}.Owners(testID(i), ms, 3)
	}
}

func BenchmarkPlacementOrder(b *testing.B) {
	ms := testMembers(100)
	for i := 0; b.Loop(); i++ {
		Placement{}.Order(testID(i), ms)
	}
}

func BenchmarkPlacementOwners1000(b *testing.B) {
	ms := testMembers(1000)
	for i := 0; b.Loop(); i++ {
		Placement{}.Owners(testID(i), ms, 3)
	}
}

// BenchmarkTableOwners1000 is the planner's hot path: a prepared table of
// 1,000 members, ids computed beforehand, no allocation.
func BenchmarkTableOwners1000(b *testing.B) {
	tab := NewTable(testMembers(1000))
	ids := make([]persist.BlockID, 1024)
	for i := range ids {
		ids[i] = testID(i)
	}
	dst := make([]int, 0, 3)
	for i := 0; b.Loop(); i++ {
		dst = tab.AppendOwners(dst[:0], ids[i%len(ids)], 3)
	}
}

// TestPlacementZones: owners are spread over zones as far as zones go, are
// the first n of Order within that rule, and with one zone are exactly the
// first n; OwnersFirst leads with them.
func TestPlacementZones(t *testing.T) {
	for _, tc := range []struct {
		name  string
		zones []string // member i's zone
		r     int
		want  int // distinct zones among each block's owners
	}{
		{"one zone", []string{"", "", "", "", ""}, 3, 1},
		{"two zones", []string{"a", "a", "a", "b", "b", "b"}, 3, 2},
		{"three zones", []string{"a", "a", "b", "b", "c", "c"}, 3, 3},
		{"three zones, R2", []string{"a", "a", "b", "b", "c", "c"}, 2, 2},
		{"uneven", []string{"a", "a", "a", "a", "a", "b"}, 3, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ms := testMembers(len(tc.zones))
			for i := range ms {
				ms[i].Zone = tc.zones[i]
			}
			counts := map[string]int{}
			for i := range 2000 {
				id := testID(i)
				owners := Placement{}.Owners(id, ms, tc.r)
				zones := map[string]bool{}
				for _, o := range owners {
					zones[o.Zone] = true
					counts[o.Name]++
				}
				if len(owners) != tc.r || len(zones) != tc.want {
					t.Fatalf("block %d: owners %v in %d zones, want %d owners in %d zones", i, names(owners), len(zones), tc.r, tc.want)
				}
				// The first owner is the first in Order, and the rest come
				// in Order's order.
				order := Placement{}.Order(id, ms)
				if owners[0].Name != order[0].Name {
					t.Fatalf("block %d: first owner %s, first in order %s", i, owners[0].Name, order[0].Name)
				}
				pos := func(name string) int {
					for j, m := range order {
						if m.Name == name {
							return j
						}
					}
					return -1
				}
				for j := 1; j < len(owners); j++ {
					if pos(owners[j-1].Name) > pos(owners[j].Name) {
						t.Fatalf("block %d: owners %v not in placement order", i, names(owners))
					}
				}
				if tc.want == 1 && fmt.Sprint(names(owners)) != fmt.Sprint(names(order[:tc.r])) {
					t.Fatalf("block %d: one zone, owners %v, want the first %d of %v", i, names(owners), tc.r, names(order))
				}
				first := Placement{}.OwnersFirst(id, ms, tc.r)
				if len(first) != len(ms) || fmt.Sprint(names(first[:tc.r])) != fmt.Sprint(names(owners)) {
					t.Fatalf("block %d: OwnersFirst %v, owners %v", i, names(first), names(owners))
				}
			}
			t.Logf("copies per member over 2000 blocks: %v", counts)
		})
	}
}
