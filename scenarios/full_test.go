package scenarios

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// TestMeshFull: three nodes that may each hold 12 MiB of blocks (--capacity)
// with 4 MiB blocks and three copies hold three blocks. statfs shows that
// room and how it fills; a file that does not fit fails with ENOSPC at
// close, not EIO, and what was stored before is unharmed.
func TestMeshFull(t *testing.T) {
	const capacity = 12 << 20
	m := startMesh(t, 3, "--", "--capacity", "12582912")
	mnt := m.Mount()
	statfs := func() (total, free uint64) {
		t.Helper()
		var fs syscall.Statfs_t
		if err := syscall.Statfs(mnt, &fs); err != nil {
			t.Fatalf("statfs: %v", err)
		}
		return fs.Blocks * uint64(fs.Bsize), fs.Bavail * uint64(fs.Bsize)
	}
	total, free := statfs()
	t.Logf("statfs of an empty mesh: total %d, free %d", total, free)
	// Three nodes of 12 MiB each, every block on three of them.
	if total != capacity || free != capacity {
		t.Errorf("statfs of an empty mesh: total %d, free %d; want both %d", total, free, capacity)
	}

	first := randomBytes(t, 8<<20)
	path := filepath.Join(mnt, "first")
	if err := os.WriteFile(path, first, 0o644); err != nil {
		t.Fatalf("write 8 MiB into 12 MiB of room: %v", err)
	}
	// statfs answers from a view at most 3 s old.
	eventuallyOK(t, "statfs to show the 8 MiB stored", func() error {
		if _, free = statfs(); free != capacity-8<<20 {
			return fmt.Errorf("free %d, want %d", free, capacity-8<<20)
		}
		return nil
	})

	second := randomBytes(t, 8<<20)
	f, err := os.Create(filepath.Join(mnt, "second"))
	if err != nil {
		t.Fatal(err)
	}
	_, werr := f.Write(second)
	cerr := f.Close()
	t.Logf("8 MiB more into 4 MiB of room: write %v, close %v", werr, cerr)
	for _, mb := range status(t, m).Members {
		t.Logf("member %+v", mb)
	}
	if !errors.Is(werr, syscall.ENOSPC) && !errors.Is(cerr, syscall.ENOSPC) {
		t.Errorf("writing past the mesh's room: write %v, close %v; want ENOSPC", werr, cerr)
	}
	if errors.Is(werr, syscall.EIO) || errors.Is(cerr, syscall.EIO) {
		t.Errorf("a full mesh reported EIO (write %v, close %v): nothing is broken", werr, cerr)
	}
	if want := sha256.Sum256(first); fileSum(t, path) != want || fileSum(t, filepath.Join(mountAgain(t, m), "first")) != want {
		t.Error("the file stored before the mesh filled up changed")
	}
}
