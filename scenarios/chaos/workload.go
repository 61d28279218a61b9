package chaos

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// WorkloadOptions shape the load that runs during a scenario's chaos.
type WorkloadOptions struct {
	// Readers read random known files and check their SHA-256; Writers
	// write new files, fsync them and record them once fsync returned.
	Readers, Writers int
	// ReadDir and WriteDir are the mounts they use ("": the mount of
	// 'meshfs up'). A scenario may kill the process behind WriteDir and
	// mount it again at the same place.
	ReadDir, WriteDir string
	// ReadRate and WriteRate cap the bytes/s of all readers, all writers
	// (0: 8 MiB/s and 2 MiB/s), so the load leaves the nodes some of a
	// small machine.
	ReadRate, WriteRate float64
	// MaxFileBlocks bounds the size of written files, in blocks (0: 3).
	MaxFileBlocks int
	// Quiet: failed writes are expected (the scenario kills the mount
	// they go through); they are counted but not logged one by one.
	Quiet bool
}

// Workload is the load running during the chaos.
type Workload struct {
	e      *Env
	opts   WorkloadOptions
	cancel context.CancelFunc
	wg     sync.WaitGroup
	start  time.Time

	reads, readBytes, readErrors, corrupt     atomic.Int64
	writes, writeBytes, writeErrors, maxReadN atomic.Int64
	logged, slowLogged                        atomic.Int64
	stopOnce                                  sync.Once
}

// StartWorkload starts readers and writers; stop them with Stop.
func (e *Env) StartWorkload(ctx context.Context, opts WorkloadOptions) *Workload {
	if opts.ReadDir == "" {
		opts.ReadDir = e.Mount()
	}
	if opts.WriteDir == "" {
		opts.WriteDir = e.Mount()
	}
	if opts.ReadRate == 0 {
		opts.ReadRate = 8 << 20
	}
	if opts.WriteRate == 0 {
		opts.WriteRate = 2 << 20
	}
	if opts.MaxFileBlocks == 0 {
		opts.MaxFileBlocks = 3
	}
	ctx, cancel := context.WithCancel(ctx)
	w := &Workload{e: e, opts: opts, cancel: cancel, start: time.Now()}
	for i := range opts.Readers {
		r := rand.New(rand.NewPCG(e.Seed, 0x72656164+uint64(i)))
		w.wg.Go(func() { w.read(ctx, r, opts.ReadRate/float64(opts.Readers)) })
	}
	for i := range opts.Writers {
		r := rand.New(rand.NewPCG(e.Seed, 0x77726974+uint64(i)))
		w.wg.Go(func() { w.write(ctx, i, r, opts.WriteRate/float64(opts.Writers)) })
	}
	e.Defer("stop the workload", func() error { w.Stop(); return nil })
	e.Logf("workload: %d readers (%s/s) on %s, %d writers (%s/s) on %s", opts.Readers, formatBytes(int64(opts.ReadRate)), opts.ReadDir, opts.Writers, formatBytes(int64(opts.WriteRate)), opts.WriteDir)
	return w
}

// Stop stops the load, waits for it (a read or write stuck on a hung
// mount is a failure after 60 s) and adds its counts to the result.
func (w *Workload) Stop() {
	w.stopOnce.Do(func() {
		w.cancel()
		done := make(chan struct{})
		go func() { w.wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(60 * time.Second):
			w.e.Fail("workload: a read or write was still stuck 60s after the workload was stopped")
		}
		e := w.e
		e.mu.Lock()
		e.result.ReadErrors += w.readErrors.Load()
		e.result.Corrupt += w.corrupt.Load()
		e.result.WriteErrors += w.writeErrors.Load()
		e.mu.Unlock()
		e.Note("reads", w.reads.Load())
		e.Note("writes", w.writes.Load())
		e.Note("max_read_s", fmt.Sprintf("%.1f", time.Duration(w.maxReadN.Load()).Seconds()))
		e.Logf("workload stopped after %.1fs: %d reads (%s), %d read errors, %d corrupt reads; %d files written (%s), %d write errors; slowest read %.1fs",
			time.Since(w.start).Seconds(), w.reads.Load(), formatBytes(w.readBytes.Load()), w.readErrors.Load(), w.corrupt.Load(),
			w.writes.Load(), formatBytes(w.writeBytes.Load()), w.writeErrors.Load(), time.Duration(w.maxReadN.Load()).Seconds())
	})
}

// Counts returns reads, read errors, corrupt reads, writes and write
// errors so far.
func (w *Workload) Counts() (reads, readErrors, corrupt, writes, writeErrors int64) {
	return w.reads.Load(), w.readErrors.Load(), w.corrupt.Load(), w.writes.Load(), w.writeErrors.Load()
}

// report logs one of the first few errors of the workload.
func (w *Workload) report(format string, args ...any) {
	if n := w.logged.Add(1); n <= 8 {
		w.e.Logf("workload: "+format, args...)
	} else if n == 9 {
		w.e.Logf("workload: more errors follow; not logged")
	}
}

func (w *Workload) read(ctx context.Context, r *rand.Rand, rate float64) {
	for ctx.Err() == nil {
		f, ok := w.e.Files.Pick(r)
		if !ok {
			Sleep(ctx, 100*time.Millisecond)
			continue
		}
		t := time.Now()
		n, sum, err := readSum(filepath.Join(w.opts.ReadDir, f.Path))
		took := time.Since(t)
		for {
			m := w.maxReadN.Load()
			if int64(took) <= m || w.maxReadN.CompareAndSwap(m, int64(took)) {
				break
			}
		}
		w.reads.Add(1)
		w.readBytes.Add(n)
		if took > 2*time.Second && w.slowLogged.Add(1) <= 8 {
			w.e.Logf("workload: slow read: %s took %.1fs (started at %.1fs)", f.Path, took.Seconds(), t.Sub(w.e.start).Seconds())
		}
		switch {
		case err != nil:
			w.readErrors.Add(1)
			w.report("read error after %.1fs: %v", took.Seconds(), err)
			Sleep(ctx, 100*time.Millisecond)
		case sum != f.Sum || n != f.Size:
			w.corrupt.Add(1)
			w.report("CORRUPT: %s read %d bytes with sha256 %x, want %d bytes with %x", f.Path, n, sum[:8], f.Size, f.Sum[:8])
		}
		pace(ctx, t, n, rate)
	}
}

func (w *Workload) write(ctx context.Context, id int, r *rand.Rand, rate float64) {
	bs := int64(w.e.BlockBytes())
	for k := 0; ctx.Err() == nil; k++ {
		var size int64
		switch r.IntN(4) {
		case 0:
			size = r.Int64N(64 << 10)
		case 1:
			size = r.Int64N(bs) + 1
		default:
			size = bs + r.Int64N(bs*int64(w.opts.MaxFileBlocks-1)+1)
		}
		rel := filepath.Join("load", fmt.Sprintf("w%d", id), fmt.Sprintf("f%05d", k))
		data := content(w.e.Seed, 1<<40|uint64(id)<<24|uint64(k), size)
		t := time.Now()
		err := writeSynced(filepath.Join(w.opts.WriteDir, rel), data, func() {
			w.e.Files.Add(describe(rel, data, int(bs)))
			w.writes.Add(1)
			w.writeBytes.Add(size)
		})
		if err != nil {
			if ctx.Err() != nil && errors.Is(err, context.Canceled) {
				return
			}
			w.writeErrors.Add(1)
			if !w.opts.Quiet {
				w.report("write error after %.1fs: %v", time.Since(t).Seconds(), err)
			}
			Sleep(ctx, 250*time.Millisecond)
			continue
		}
		pace(ctx, t, size, rate)
	}
}

// writeSynced writes data to a new file at path and fsyncs it; synced is
// called once fsync returned success, before close.
func writeSynced(path string, data []byte, synced func()) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	// A mount point whose mount was killed and detached is a plain local
	// directory until the mesh is mounted there again: a file written
	// there would be hidden by the new mount, and is not the mesh's.
	var fs unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &fs); err != nil || fs.Type != unix.FUSE_SUPER_MAGIC {
		f.Close()
		os.Remove(path)
		return fmt.Errorf("%s: not on a FUSE mount (statfs type %#x, %v)", path, fs.Type, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("fsync %s: %w", path, err)
	}
	synced()
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %s after fsync: %w", path, err)
	}
	return nil
}

// readSum reads the file at path, after asking the kernel to drop its
// cached pages so that the bytes come from the mount, and hashes it.
func readSum(path string) (int64, [32]byte, error) {
	var sum [32]byte
	f, err := os.Open(path)
	if err != nil {
		return 0, sum, err
	}
	defer f.Close()
	unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
	h := sha256.New()
	n, err := io.CopyBuffer(h, f, make([]byte, 1<<20))
	if err != nil {
		return n, sum, fmt.Errorf("read %s: %w", path, err)
	}
	copy(sum[:], h.Sum(nil))
	return n, sum, nil
}

// pace sleeps so that n bytes since t go at no more than rate bytes/s.
func pace(ctx context.Context, t time.Time, n int64, rate float64) {
	want := time.Duration(float64(n) / rate * float64(time.Second))
	Sleep(ctx, max(want-time.Since(t), 5*time.Millisecond))
}
