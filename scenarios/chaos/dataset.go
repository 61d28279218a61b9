package chaos

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"time"

	"github.com/meshfs/meshfs/persist"
)

// File is a file whose content the scenario knows.
type File struct {
	Path string // relative to a mount point
	Size int64
	Sum  [32]byte
	// Blocks are the ids of its blocks: slot i of a file holds bytes
	// [i*BlockSize, (i+1)*BlockSize) and is stored as one block named by
	// the SHA-256 of those bytes.
	Blocks []persist.BlockID
}

// FileSet is the files a scenario knows. Safe for concurrent use; the
// zero value is empty.
type FileSet struct {
	mu    sync.Mutex
	files []File
}

// Add records f.
func (s *FileSet) Add(f File) {
	s.mu.Lock()
	s.files = append(s.files, f)
	s.mu.Unlock()
}

// All returns a copy of the list.
func (s *FileSet) All() []File {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]File(nil), s.files...)
}

// Len is the number of files and their bytes.
func (s *FileSet) Len() (files int, bytes int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, f := range s.files {
		bytes += f.Size
	}
	return len(s.files), bytes
}

// Pick returns a random file, or false when there is none.
func (s *FileSet) Pick(r *rand.Rand) (File, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.files) == 0 {
		return File{}, false
	}
	return s.files[r.IntN(len(s.files))], true
}

// Blocks returns every block id of the files, each once.
func (s *FileSet) Blocks() map[persist.BlockID]bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	ids := map[persist.BlockID]bool{}
	for _, f := range s.files {
		for _, id := range f.Blocks {
			ids[id] = true
		}
	}
	return ids
}

// content is the deterministic content of file number stream of a run
// with seed: n bytes of ChaCha8 output.
func content(seed, stream uint64, n int64) []byte {
	var key [32]byte
	binary.LittleEndian.PutUint64(key[0:], seed)
	binary.LittleEndian.PutUint64(key[8:], stream)
	key = sha256.Sum256(key[:])
	b := make([]byte, n)
	rand.NewChaCha8(key).Read(b)
	return b
}

// describe makes the File record of data stored at path.
func describe(path string, data []byte, blockSize int) File {
	f := File{Path: path, Size: int64(len(data)), Sum: sha256.Sum256(data)}
	for off := 0; off < len(data); off += blockSize {
		f.Blocks = append(f.Blocks, persist.Sum(data[off:min(off+blockSize, len(data))]))
	}
	return f
}

// DataSetSizes are the sizes of the seeded data set of about total bytes
// for a block size bs: first the edges (0, 1, bs-1, bs, bs+1, several
// blocks), then sizes drawn from tiny to several blocks until total is
// reached (the last file is cut to fit).
func DataSetSizes(seed uint64, total int64, bs int64) []int64 {
	r := rand.New(rand.NewPCG(seed, 0x64617461))
	sizes := []int64{0, 1, 4095, bs - 1, bs, bs + 1, 3*bs + 12345}
	var sum int64
	var out []int64
	for i := 0; i == 0 || sum < total; i++ {
		var n int64
		if i < len(sizes) {
			n = sizes[i]
		} else {
			switch r.IntN(6) {
			case 0:
				n = r.Int64N(4 << 10)
			case 1:
				n = r.Int64N(256 << 10)
			case 2:
				n = r.Int64N(bs) + 1
			case 3, 4:
				n = bs + r.Int64N(2*bs)
			default:
				n = 3*bs + r.Int64N(3*bs)
			}
		}
		n = min(n, max(total-sum, 0))
		out = append(out, n)
		sum += n
	}
	return out
}

// WriteDataSet writes the seeded data set of e.Size bytes through the
// mount, each file fsync'd, into data/d0 … data/d3, and records it in
// e.Files.
func (e *Env) WriteDataSet(ctx context.Context) error {
	t := time.Now()
	bs := e.BlockBytes()
	sizes := DataSetSizes(e.Seed, e.Size, int64(bs))
	var total int64
	for i, n := range sizes {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		rel := filepath.Join("data", fmt.Sprintf("d%d", i%4), fmt.Sprintf("f%04d", i))
		data := content(e.Seed, uint64(i), n)
		err := writeSynced(filepath.Join(e.Mount(), rel), data, func() { e.Files.Add(describe(rel, data, bs)) })
		if err != nil {
			return fmt.Errorf("write the data set: %w", err)
		}
		total += n
	}
	blocks := len(e.Files.Blocks())
	e.Logf("data set: %d files, %s in %d blocks, written in %.1fs", len(sizes), formatBytes(total), blocks, time.Since(t).Seconds())
	return nil
}
