package scenarios

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/meshfs/meshfs/scenarios/harness"
)

// meshStatus is the part of 'meshfs status --json' these tests read.
type meshStatus struct {
	Members []struct {
		Name   string `json:"name"`
		State  string `json:"state"`
		Blocks int64  `json:"blocks"`
		Bytes  int64  `json:"bytes"`
	} `json:"members"`
	Replication           int   `json:"replication"`
	Blocks                int   `json:"blocks"`
	Copies                int64 `json:"copies"`
	UnderReplicatedBlocks int   `json:"under_replicated_blocks"`
	UnderReplicatedBytes  int64 `json:"under_replicated_bytes"`
	LostBlocks            int   `json:"lost_blocks"`
	Repair                struct {
		CopiedBytes int64 `json:"copied_bytes"`
	} `json:"repair"`
	Scrub struct {
		Corrupt  int64 `json:"corrupt"`
		ByPass   int64 `json:"found_by_pass"`
		ByWrite  int64 `json:"found_by_write"`
		ByDrop   int64 `json:"found_by_drop"`
		Repaired int64 `json:"repaired"`
	} `json:"scrub"`
	Metadata struct {
		Replicas   int    `json:"replicas"`
		Current    int    `json:"current"`
		Leader     string `json:"leader"`
		MetaLeader string `json:"meta_leader"`
		Servers    int    `json:"servers"`
		Witness    bool   `json:"witness"`
		Error      string `json:"error"`
	} `json:"metadata"`
}

func status(t *testing.T, m *harness.Mesh) meshStatus {
	t.Helper()
	code, out := runMeshfsStdout(t, 30*time.Second, "status", "--up", m.Dir, "--json")
	if code != 0 {
		t.Fatalf("meshfs status --json: exit %d: %s", code, out)
	}
	var st meshStatus
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status --json is not JSON: %v: %s", err, out)
	}
	return st
}

func (s meshStatus) state(name string) string {
	for _, m := range s.Members {
		if m.Name == name {
			return m.State
		}
	}
	return ""
}

// TestHealAfterKill kills one of five nodes: gossip declares it dead, and
// the survivors copy its blocks until every block has R copies again, while
// every file reads identical.
func TestHealAfterKill(t *testing.T) {
	m := startMesh(t, 5, "--", "--repair-delay", "1s", "--repair-interval", "2s")
	sums := writeFiles(t, m.Mount(), m.State.BlockSize, 40<<20)
	// A write whose copy to a late owner was hedged to another node
	// leaves a surplus copy, which repair drops within a few rounds: wait
	// for exactly 3 copies of every block, so the heal is measured from a
	// settled mesh.
	var before meshStatus
	for settle := time.Now(); ; time.Sleep(250 * time.Millisecond) {
		before = status(t, m)
		if before.UnderReplicatedBlocks == 0 && before.Copies == int64(before.Blocks*3) {
			break
		}
		if time.Since(settle) > 30*time.Second {
			t.Fatalf("before the kill, 30s after the writes: %+v; want every block at 3 copies", before)
		}
	}
	victim := 3 // node4
	start := time.Now()
	if err := m.Kill(victim); err != nil {
		t.Fatal(err)
	}
	var detected, healed time.Duration
	sawUnder := false
	for time.Since(start) < 90*time.Second {
		st := status(t, m)
		if detected == 0 && st.state("node4") == "dead" {
			detected = time.Since(start)
		}
		if st.UnderReplicatedBlocks > 0 {
			sawUnder = true
		}
		if st.LostBlocks > 0 {
			t.Fatalf("blocks lost after one kill: %+v", st)
		}
		if detected > 0 && st.UnderReplicatedBlocks == 0 && st.Copies == int64(st.Blocks*3) && st.Blocks == before.Blocks {
			healed = time.Since(start)
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	if healed == 0 {
		t.Fatalf("not healed 90s after the kill: %+v", status(t, m))
	}
	if !sawUnder {
		t.Logf("note: the mesh healed before status saw any under-replicated block")
	}
	t.Logf("node4 declared dead after %v; all %d blocks back at 3 copies %v after the kill", detected, before.Blocks, healed)
	checkFiles(t, m.Mount(), sums)
	checkFiles(t, mountAgain(t, m), sums)
}

// TestRebalanceOnJoin adds a fifth node to four: it receives its share of
// copies, surplus copies elsewhere are dropped, and no block is ever seen
// with fewer than 3 copies.
func TestRebalanceOnJoin(t *testing.T) {
	m := startMesh(t, 4, "--", "--repair-delay", "1s", "--repair-interval", "2s")
	sums := writeFiles(t, m.Mount(), m.State.BlockSize, 60<<20)
	before := status(t, m)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := m.AddNode(ctx, "node5"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	var settled time.Duration
	var last [2]int64
	var stableSince time.Time
	for time.Since(start) < 90*time.Second {
		st := status(t, m)
		if st.UnderReplicatedBlocks != 0 || st.LostBlocks != 0 {
			t.Fatalf("during rebalance: %d under-replicated, %d lost", st.UnderReplicatedBlocks, st.LostBlocks)
		}
		share := int64(0)
		for _, mem := range st.Members {
			if mem.Name == "node5" {
				share = mem.Blocks
			}
		}
		// Settled: node5 has copies, every block has 3, and nothing has
		// changed for longer than a repair interval (2 s).
		now := [2]int64{share, st.Copies}
		if now != last {
			last, stableSince = now, time.Now()
		}
		if share > 0 && st.Copies == int64(st.Blocks*3) && time.Since(stableSince) > 3*time.Second {
			settled = stableSince.Sub(start)
			t.Logf("node5 holds %d of %d blocks (ideal %.1f), settled %v after it joined", share, st.Blocks, float64(st.Blocks)*3/5, settled)
			if share < int64(st.Blocks)*3/5/2 {
				t.Fatalf("node5 holds %d of %d blocks: far below its share", share, st.Blocks)
			}
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	if settled == 0 {
		t.Fatalf("rebalance did not settle within 90s: %+v", status(t, m))
	}
	if st := status(t, m); st.Blocks != before.Blocks {
		t.Fatalf("blocks before %d, after %d", before.Blocks, st.Blocks)
	}
	checkFiles(t, mountAgain(t, m), sums)
}
