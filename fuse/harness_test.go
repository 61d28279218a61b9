package fuse

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/meshfs/meshfs/mesh"
	"github.com/meshfs/meshfs/mesh/meta"
	"github.com/meshfs/meshfs/mesh/natsd"
	"github.com/meshfs/meshfs/persist"
)

// slot is the block size the tests run with: small, so tests cross slot
// boundaries cheaply.
const slot = 64 << 10

// fakeBlocks is an in-memory mesh. Setting fail makes every Write fail as
// the real mesh does with too few live nodes.
type fakeBlocks struct {
	t          *testing.T
	blockSize  int
	mu         sync.Mutex
	blocks     map[persist.BlockID][]byte
	fail       atomic.Bool
	full       atomic.Bool  // every Write fails for want of space
	writeDelay atomic.Int64 // ns each Write takes
	reads      atomic.Int64
	writes     atomic.Int64
	touched    map[persist.BlockID]int // by Touch, under mu
}

// Touch records that the block's put time was refreshed.
func (b *fakeBlocks) Touch(ctx context.Context, id persist.BlockID) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.blocks[id]; !ok {
		return persist.ErrNotFound
	}
	if b.touched == nil {
		b.touched = map[persist.BlockID]int{}
	}
	b.touched[id]++
	return nil
}

func (b *fakeBlocks) touches(id persist.BlockID) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.touched[id]
}

var _ Blocks = (*fakeBlocks)(nil)

func newFakeBlocks(t *testing.T, blockSize int) *fakeBlocks {
	return &fakeBlocks{t: t, blockSize: blockSize, blocks: map[persist.BlockID][]byte{}}
}

func (b *fakeBlocks) Write(ctx context.Context, data []byte) (persist.BlockID, error) {
	if d := time.Duration(b.writeDelay.Load()); d > 0 {
		select {
		case <-time.After(d):
		case <-ctx.Done():
			return persist.BlockID{}, ctx.Err()
		}
	}
	if b.fail.Load() {
		return persist.BlockID{}, fmt.Errorf("fake mesh: write refused: %w", mesh.ErrNotEnoughNodes)
	}
	if b.full.Load() {
		return persist.BlockID{}, fmt.Errorf("fake mesh: 0 copies stored: %w\n%w", mesh.ErrNotEnoughNodes,
			fmt.Errorf("node's disk full: %w", syscall.ENOSPC))
	}
	if len(data) > b.blockSize {
		b.t.Errorf("block of %d bytes written, block size is %d", len(data), b.blockSize)
	}
	b.writes.Add(1)
	id := persist.Sum(data)
	b.mu.Lock()
	b.blocks[id] = bytes.Clone(data)
	b.mu.Unlock()
	return id, nil
}

func (b *fakeBlocks) Read(ctx context.Context, id persist.BlockID) ([]byte, error) {
	b.reads.Add(1)
	b.mu.Lock()
	defer b.mu.Unlock()
	data, ok := b.blocks[id]
	if !ok {
		return nil, fmt.Errorf("fake mesh: block %s: %w", id, persist.ErrNotFound)
	}
	return data, nil
}

// testMesh is one file system's backing: a metadata bucket (in a real
// embedded NATS server with JetStream) and a fake block mesh. Every mount
// gets its own meta.Store on the shared bucket, as separate clients would.
type testMesh struct {
	t         *testing.T
	blockSize int
	blocks    *fakeBlocks
	newMeta   func() Metadata
	meta      Metadata   // a store of its own, for the tests to inspect metadata
	nc        *nats.Conn // the stores' connection, for tests that write the bucket in bulk
}

func newTestMesh(t *testing.T) *testMesh {
	t.Helper()
	return newTestMeshBlockSize(t, slot)
}

func newTestMeshBlockSize(t *testing.T, blockSize int) *testMesh {
	t.Helper()
	tm := &testMesh{t: t, blockSize: blockSize, blocks: newFakeBlocks(t, blockSize)}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const secret = "fuse-test-secret"
	srv, err := natsd.Start(natsd.Config{Name: "fuse-test", Dir: t.TempDir(), Port: 0, Secret: secret})
	if err != nil {
		t.Fatalf("start nats: %v", err)
	}
	t.Cleanup(srv.Shutdown)
	nc, err := natsd.Connect(ctx, []string{srv.ClientURL()}, secret, "fuse-test", nil)
	if err != nil {
		t.Fatalf("connect to nats: %v", err)
	}
	t.Cleanup(nc.Close)
	tm.nc = nc
	tm.newMeta = func() Metadata {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		st, err := meta.Open(ctx, nc, meta.Options{BlockSize: blockSize})
		if err != nil {
			t.Fatalf("open meta store: %v", err)
		}
		t.Cleanup(func() { st.Close() })
		return st
	}
	tm.meta = tm.newMeta()
	return tm
}

// mount mounts the file system at a new directory, unmounted at cleanup.
func (tm *testMesh) mount(opts ...func(*Options)) (*FS, string) {
	t := tm.t
	t.Helper()
	dir := filepath.Join(t.TempDir(), "mnt")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	o := Options{
		Meta:      tm.newMeta(),
		Blocks:    tm.blocks,
		BlockSize: tm.blockSize,
		Logger:    slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn})),
	}
	for _, f := range opts {
		f(&o)
	}
	fsys, err := Mount(dir, o)
	if err != nil {
		t.Fatalf("mount: %v", err)
	}
	t.Cleanup(func() {
		if err := fsys.Unmount(); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
		if n := fsys.buf.inUse(); n != 0 {
			t.Errorf("write buffer holds %d bytes after unmount", n)
		}
	})
	return fsys, dir
}

// testWriter sends log lines to the test's log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}

func randBytes(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		v := r.Uint64()
		for j := range 8 {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	for i := n - n%8; i < n; i++ {
		b[i] = byte(r.Uint32())
	}
	return b
}

func mustWrite(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatalf("write %s: %v", path, err)
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	return data
}

// sameContent fails the test unless got equals want, reporting hashes and
// the first difference rather than megabytes.
func sameContent(t *testing.T, what string, got, want []byte) {
	t.Helper()
	if sha256.Sum256(got) == sha256.Sum256(want) {
		return
	}
	i := 0
	for i < len(got) && i < len(want) && got[i] == want[i] {
		i++
	}
	t.Errorf("%s: got %d bytes (sha256 %x), want %d bytes (sha256 %x); first difference at offset %d",
		what, len(got), sha256.Sum256(got), len(want), sha256.Sum256(want), i)
}
