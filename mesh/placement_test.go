package mesh

import (
	"encoding/binary"
	"fmt"
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

func BenchmarkPlacementOwners(b *testing.B) {
	ms := testMembers(100)
	for i := 0; b.Loop(); i++ {
		Placement{}.Owners(testID(i), ms, 3)
	}
}
