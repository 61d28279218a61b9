package scenarios

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestCollectUnreferencedBlocks deletes one file and overwrites another:
// the blocks no file references any more are removed from every node after
// the grace period, and the surviving files read identical.
func TestCollectUnreferencedBlocks(t *testing.T) {
	m := startMesh(t, 3, "--", "--collect-grace", "3s", "--collect-interval", "1s")
	mnt := m.Mount()
	keep := randomBytes(t, 2*m.State.BlockSize+10)
	if err := os.WriteFile(filepath.Join(mnt, "keep"), keep, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(mnt, "gone"), randomBytes(t, 3*m.State.BlockSize), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(mnt, "over"), randomBytes(t, m.State.BlockSize), 0o644); err != nil {
		t.Fatal(err)
	}
	before := status(t, m)
	if before.Blocks != 3+3+1 {
		t.Fatalf("%d blocks before, want 7", before.Blocks)
	}
	if err := os.Remove(filepath.Join(mnt, "gone")); err != nil {
		t.Fatal(err)
	}
	newOver := randomBytes(t, m.State.BlockSize/2)
	if err := os.WriteFile(filepath.Join(mnt, "over"), newOver, 0o644); err != nil {
		t.Fatal(err)
	}
	// keep (3 blocks) and the new content of over (1 block) remain.
	start := time.Now()
	var st meshStatus
	for time.Since(start) < 60*time.Second {
		st = status(t, m)
		if st.Blocks == 4 && st.Copies == 12 {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	if st.Blocks != 4 || st.Copies != 12 {
		t.Fatalf("60s after delete and overwrite: %d blocks, %d copies; want 4 and 12", st.Blocks, st.Copies)
	}
	t.Logf("unreferenced blocks collected %.1fs after the delete (grace 3s)", time.Since(start).Seconds())
	other := mountAgain(t, m)
	if got, _ := os.ReadFile(filepath.Join(other, "keep")); !bytes.Equal(got, keep) {
		t.Fatal("keep differs after collection")
	}
	if got, _ := os.ReadFile(filepath.Join(other, "over")); !bytes.Equal(got, newOver) {
		t.Fatal("over differs after collection")
	}
}
