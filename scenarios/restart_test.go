package scenarios

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshfs/meshfs/persist"
	"github.com/meshfs/meshfs/scenarios/harness"
	bolt "go.etcd.io/bbolt"
)

// TestUpRestartKeepsData stops a whole 'meshfs up' mesh and starts it again
// on the same directory: the same mesh comes back with its files.
func TestUpRestartKeepsData(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "mesh")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	m, err := harness.Up(ctx, meshfsBin, dir, 3, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	sums := writeFiles(t, m.Mount(), m.State.BlockSize, 9<<20)
	if err := m.Stop(); err != nil {
		t.Fatalf("stop first run: %v", err)
	}
	m, err = harness.Up(ctx, meshfsBin, dir, 3, t.Logf)
	if err != nil {
		t.Fatalf("second 'meshfs up' on the same dir: %v", err)
	}
	defer func() {
		if err := m.Stop(); err != nil {
			t.Errorf("stop second run: %v", err)
		}
	}()
	checkFiles(t, m.Mount(), sums)
}

// TestCorruptCopiesAreSkipped rots every block on one node's disk (a byte
// flipped in each value of its bbolt file, as a failing disk would) and
// kills another node, so the rotten node is the first owner of many
// blocks: every file still reads identical, from the good copies.
func TestCorruptCopiesAreSkipped(t *testing.T) {
	m := startMesh(t, 3)
	sums := writeFiles(t, m.Mount(), m.State.BlockSize, 30<<20)
	const rotten = 1 // node2
	if err := m.Kill(rotten); err != nil {
		t.Fatal(err)
	}
	n := rotBlocks(t, filepath.Join(m.State.Nodes[rotten].Data, "blocks.db"))
	t.Logf("flipped a byte in each of node2's %d blocks", n)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := m.Restart(ctx, rotten); err != nil {
		t.Fatal(err)
	}
	// Reads ask only members gossip holds alive: until node2 is back in
	// every view, a mount would read around it and never meet its copies.
	for wait := time.Now(); status(t, m).state("node2") != "alive"; time.Sleep(250 * time.Millisecond) {
		if time.Since(wait) > 30*time.Second {
			t.Fatal("node2 not seen alive 30s after its restart")
		}
	}
	if err := m.Kill(2); err != nil { // node3: only node1's copies are good now
		t.Fatal(err)
	}
	other := mountAgain(t, m)
	checkFiles(t, other, sums)
	// The reads must really have met the rotten copies and passed them by.
	log, err := os.ReadFile(other + ".mount.log")
	if err != nil {
		t.Fatal(err)
	}
	skipped := strings.Count(string(log), "skipping corrupt block copy")
	if skipped == 0 {
		t.Fatalf("no read met a corrupt copy on node2; the test did not test anything. mount log:\n%s", log)
	}
	t.Logf("reads skipped %d corrupt copies", skipped)
	// Read-repair: each reported copy is replaced at once by node2's scrubber.
	deadline := time.Now().Add(30 * time.Second)
	for {
		st := status(t, m)
		if st.Scrub.Repaired >= int64(skipped) {
			t.Logf("read-repair replaced %d corrupt copies (found %d)", st.Scrub.Repaired, st.Scrub.Corrupt)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("30s after %d corrupt copies were reported, %d repaired", skipped, st.Scrub.Repaired)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// rotBlocks flips one byte in the middle of every stored block.
func rotBlocks(t *testing.T, path string) int {
	return rotBlocksWhere(t, path, func(persist.BlockID) bool { return true })
}

// rotBlocksWhere flips one byte in the middle of the stored blocks that
// match, through bbolt, as a failing disk would have.
func rotBlocksWhere(t *testing.T, path string, match func(persist.BlockID) bool) int {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		t.Fatalf("open %s: %v", path, err)
	}
	defer db.Close()
	n := 0
	err = db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte("blocks"))
		type kv struct{ k, v []byte }
		var all []kv
		b.ForEach(func(k, v []byte) error {
			var id persist.BlockID
			copy(id[:], k)
			if len(v) > 0 && match(id) {
				all = append(all, kv{append([]byte{}, k...), append([]byte{}, v...)})
			}
			return nil
		})
		for _, e := range all {
			e.v[len(e.v)/2] ^= 0x01
			if err := b.Put(e.k, e.v); err != nil {
				return err
			}
			n++
		}
		return nil
	})
	if err != nil {
		t.Fatalf("rot blocks: %v", err)
	}
	if n == 0 {
		t.Fatal("no blocks to rot")
	}
	return n
}
