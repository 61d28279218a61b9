package scenarios

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestStatusCountsLostBlocks: with one copy of each block, killing a node
// loses its blocks until it returns, and 'meshfs status' says how many:
// blocks whose every copy is on a dead node appear in no live inventory, so
// status counts them from the files' block maps.
func TestStatusCountsLostBlocks(t *testing.T) {
	m := startMesh(t, 3, "--replicas", "1", "--block-size", "65536")
	for i := range 30 {
		if err := os.WriteFile(filepath.Join(m.Mount(), fmt.Sprintf("f%d", i)), randomBytes(t, 65536), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	before := status(t, m)
	var held int64
	for _, mb := range before.Members {
		if mb.Name == "node3" {
			held = mb.Blocks
		}
	}
	if before.LostBlocks != 0 || before.Blocks != 30 || held == 0 {
		t.Fatalf("before the kill: %d blocks, %d lost, node3 holds %d; want 30, 0, some", before.Blocks, before.LostBlocks, held)
	}
	if err := m.Kill(2); err != nil {
		t.Fatal(err)
	}
	st := status(t, m)
	t.Logf("node3 held %d of 30 blocks; status after its SIGKILL: %d blocks on live nodes, %d lost", held, st.Blocks, st.LostBlocks)
	if st.LostBlocks != int(held) {
		t.Errorf("status after killing the only holder of %d blocks: %d lost", held, st.LostBlocks)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := m.Restart(ctx, 2); err != nil {
		t.Fatal(err)
	}
	eventuallyOK(t, "no block lost once node3 is back", func() error {
		if st := status(t, m); st.LostBlocks != 0 {
			return fmt.Errorf("%d lost", st.LostBlocks)
		}
		return nil
	})
}
