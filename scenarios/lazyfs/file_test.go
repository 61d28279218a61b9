package lazyfs

import (
	"bytes"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
)

// TestFileStateMatchesARealFile checks the merged view and the write-back
// without FUSE: random writes, truncates, zeroing and syncs on a fileState
// and on a real file must read the same, a sync must leave the backing file
// equal to the real one, and a discard must leave it as the last sync did.
func TestFileStateMatchesARealFile(t *testing.T) {
	dir := t.TempDir()
	open := func(name string) *os.File {
		f, err := os.OpenFile(filepath.Join(dir, name), os.O_RDWR|os.O_CREATE, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return f
	}
	ref, backing := open("ref"), open("backing")
	var count counters
	s := newFileState(fileID{}, backing, true, &count)
	rng := rand.New(rand.NewPCG(3, 4))
	var synced []byte
	for step := range 2000 {
		switch op := rng.IntN(20); {
		case op < 12:
			off := int64(rng.IntN(40 << 10))
			data := make([]byte, 1+rng.IntN(3*pageSize))
			for i := range data {
				data[i] = byte(rng.Uint32())
			}
			if err := s.writeAt(data, off); err != nil {
				t.Fatal(err)
			}
			ref.WriteAt(data, off)
		case op < 16:
			size := int64(rng.IntN(48 << 10))
			if err := s.truncate(size); err != nil {
				t.Fatal(err)
			}
			ref.Truncate(size)
		case op < 17:
			off, n := int64(rng.IntN(40<<10)), int64(rng.IntN(2*pageSize))
			if err := s.zero(off, n); err != nil {
				t.Fatal(err)
			}
			if fi, _ := ref.Stat(); off < fi.Size() {
				ref.WriteAt(make([]byte, min(n, fi.Size()-off)), off)
			}
		case op < 19:
			if err := s.sync(rng.IntN(2) == 0); err != nil {
				t.Fatal(err)
			}
			synced = readAll(t, ref)
			if got := readAll(t, backing); !bytes.Equal(got, synced) {
				t.Fatalf("step %d: backing file after sync differs at %d (%d bytes, want %d)", step, firstDiff(got, synced), len(got), len(synced))
			}
			if count.dirty.Load() != 0 {
				t.Fatalf("step %d: %d dirty bytes after sync", step, count.dirty.Load())
			}
		default:
			s.discard()
			ref.Truncate(0)
			ref.WriteAt(synced, 0)
			if got := readAll(t, backing); !bytes.Equal(got, synced) {
				t.Fatalf("step %d: backing file after discard is not as last synced", step)
			}
		}
		want := readAll(t, ref)
		got := make([]byte, len(want)+pageSize)
		n, err := s.readAt(got, 0)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got[:n], want) {
			t.Fatalf("step %d: merged view differs at %d (%d bytes, want %d)", step, firstDiff(got[:n], want), n, len(want))
		}
	}
}

func readAll(t *testing.T, f *os.File) []byte {
	t.Helper()
	b, err := os.ReadFile(f.Name())
	if err != nil {
		t.Fatal(err)
	}
	return b
}
