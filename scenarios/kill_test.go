package scenarios

import (
	"context"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/meshfs/meshfs/mesh"
	"github.com/meshfs/meshfs/mesh/blocknet"
	"github.com/meshfs/meshfs/persist"
	"github.com/meshfs/meshfs/scenarios/harness"
)

// meshClient talks to the mesh's nodes directly, with its secret.
func meshClient(t *testing.T, m *harness.Mesh) *blocknet.Client {
	t.Helper()
	raw, err := os.ReadFile(m.State.SecretFile)
	if err != nil {
		t.Fatal(err)
	}
	return blocknet.NewClient(mesh.Secret(trimSpace(raw)).BlockKey(), 30*time.Second)
}

func trimSpace(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == ' ' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return b
}

func listBlocks(t *testing.T, c *blocknet.Client, addr string) []persist.BlockID {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var ids []persist.BlockID
	if err := c.List(ctx, addr, func(id persist.BlockID, size int) error {
		ids = append(ids, id)
		return nil
	}); err != nil {
		t.Fatalf("list blocks of %s: %v", addr, err)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i].String() < ids[j].String() })
	return ids
}

func waitState(t *testing.T, c *blocknet.Client, addr, name string, want mesh.State, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for time.Since(start) < within {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		info, err := c.Cluster(ctx, addr)
		cancel()
		if err == nil {
			for _, m := range info.Members {
				if m.Name == name && m.State == want {
					return time.Since(start)
				}
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s not %s (as seen by %s) within %v", name, want, addr, within)
	return 0
}

// TestKillNodeAndRestart kills one of three nodes with SIGKILL: every file
// still reads identical; files written meanwhile too; and once the node is
// restarted it serves every block it held before, each verifying.
func TestKillNodeAndRestart(t *testing.T) {
	m := startMesh(t, 3)
	client := meshClient(t, m)
	sums := writeFiles(t, m.Mount(), m.State.BlockSize, 20<<20)
	const victim = 2 // node3; node1 is the metadata home until metadata is replicated
	held := listBlocks(t, client, m.State.Nodes[victim].HTTP)
	if len(held) == 0 {
		t.Fatalf("node3 holds no blocks before the kill")
	}
	if err := m.Kill(victim); err != nil {
		t.Fatal(err)
	}
	// Right away, before gossip has declared it dead: reads fail over.
	checkFiles(t, m.Mount(), sums)
	checkFiles(t, mountAgain(t, m), sums)
	took := waitState(t, client, m.State.Nodes[0].HTTP, "node3", mesh.StateDead, 30*time.Second)
	t.Logf("node3 declared dead %v after the reads", took)

	// A write with one node dead lands on the two that are alive.
	during := randomBytes(t, 3*m.State.BlockSize/2)
	if err := os.WriteFile(filepath.Join(m.Mount(), "during"), during, 0o644); err != nil {
		t.Fatalf("write while node3 is dead: %v", err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := m.Restart(ctx, victim); err != nil {
		t.Fatal(err)
	}
	waitState(t, client, m.State.Nodes[0].HTTP, "node3", mesh.StateAlive, 30*time.Second)
	after := listBlocks(t, client, m.State.Nodes[victim].HTTP)
	have := map[persist.BlockID]bool{}
	for _, id := range after {
		have[id] = true
	}
	for _, id := range held {
		if !have[id] {
			t.Fatalf("restarted node3 lost block %s", id)
		}
		gctx, gcancel := context.WithTimeout(context.Background(), 10*time.Second)
		if _, err := client.Get(gctx, m.State.Nodes[victim].HTTP, id); err != nil {
			t.Fatalf("restarted node3 does not serve block %s: %v", id, err)
		}
		gcancel()
	}
	t.Logf("restarted node3 serves all %d blocks it held", len(held))
	sums["during"] = sha256Sum(during)
	checkFiles(t, mountAgain(t, m), sums)
}
