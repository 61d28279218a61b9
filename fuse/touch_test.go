package fuse

import (
	"crypto/rand"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/meshfs/meshfs/persist"
)

// TestTouchPendingBlocks: a file held open, with slots already uploaded
// but not committed, has those blocks touched on the nodes every interval,
// so no collector takes them before the close that references them.
func TestTouchPendingBlocks(t *testing.T) {
	tm := newTestMeshBlockSize(t, 64<<10)
	_, dir := tm.mount(func(o *Options) { o.TouchInterval = 50 * time.Millisecond })
	data := make([]byte, 5*tm.blockSize/2)
	rand.Read(data)
	f, err := os.Create(filepath.Join(dir, "long-write"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(data); err != nil {
		t.Fatal(err)
	}
	first := persist.Sum(data[:tm.blockSize]) // uploaded once the writer moved past slot 0
	deadline := time.Now().Add(5 * time.Second)
	for tm.blocks.touches(first) < 2 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := tm.blocks.touches(first); n < 2 {
		t.Fatalf("the uploaded, uncommitted block of slot 0 was touched %d times in 5s (interval 50ms)", n)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	after := tm.blocks.touches(first)
	time.Sleep(300 * time.Millisecond)
	if n := tm.blocks.touches(first); n != after {
		t.Fatalf("a committed block is still touched (%d -> %d)", after, n)
	}
}
