package chaos

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/meshfs/meshfs/scenarios/harness"
	"github.com/meshfs/meshfs/scenarios/lazyfs"
)

// PowerLoss: every node's data dir is on a lazyfs mount (scenarios/lazyfs,
// run by this process), which keeps written data in memory until fsync,
// as a disk's cache would. Under load, the power is cut to every node at
// once: all nodes are SIGKILLed in the same instant and every lazyfs
// throws away what was not fsync'd. Then the nodes start again on what is
// left: bbolt and JetStream must open it, and every file whose fsync had
// returned (each one an acknowledged metadata operation, with its blocks)
// must read back whole.
var PowerLoss = Scenario{
	Name:     "power-loss",
	Summary:  "data dirs on a pass-through FUSE that drops what is not fsync'd; cut the power to every node at once: every fsync'd file and acknowledged operation is there after restart",
	Defaults: Defaults{Nodes: 3, Size: 8 << 20, Duration: 8 * time.Second},
	Run:      runPowerLoss,
}

func runPowerLoss(ctx context.Context, e *Env) error {
	disks := make([]*lazyfs.FS, e.Nodes)
	// disksMu orders mountDisk's writes (this goroutine) with the cleanup,
	// which may run while an interrupted scenario still does; this
	// goroutine's own reads need no lock.
	var disksMu sync.Mutex
	mountDisk := func(i int) error {
		data := filepath.Join(e.MeshDir(), fmt.Sprintf("node%d", i+1))
		backing := filepath.Join(e.Dir, "disks", fmt.Sprintf("node%d", i+1))
		for _, d := range []string{data, backing} {
			if err := os.MkdirAll(d, 0o700); err != nil {
				return err
			}
		}
		fs, err := lazyfs.Mount(data, backing, lazyfs.Options{Logger: slog.New(slog.NewTextHandler(e.logw, &slog.HandlerOptions{Level: slog.LevelWarn}))})
		if err != nil {
			return fmt.Errorf("lazyfs at %s: %w", data, err)
		}
		disksMu.Lock()
		disks[i] = fs
		disksMu.Unlock()
		return nil
	}
	for i := range e.Nodes {
		if err := mountDisk(i); err != nil {
			return err
		}
	}
	e.Defer("unmount the lazyfs data dirs", func() error {
		disksMu.Lock()
		defer disksMu.Unlock()
		var errs []error
		for i, fs := range disks {
			if fs == nil {
				continue
			}
			e.keepLog(i, filepath.Join(e.MeshDir(), fmt.Sprintf("node%d", i+1)))
			if err := fs.Unmount(); err != nil {
				errs = append(errs, err)
			}
		}
		return errors.Join(errs...)
	})
	if err := e.Up(ctx); err != nil {
		return err
	}
	if err := e.WriteDataSet(ctx); err != nil {
		return err
	}
	w := e.StartWorkload(ctx, WorkloadOptions{Readers: 1, Writers: 2, WriteRate: 4 << 20, Quiet: true})
	if !Sleep(ctx, e.Duration) {
		return ctx.Err()
	}
	_, _, _, acked, _ := w.Counts()
	var dirty int64
	for _, fs := range disks {
		dirty += fs.Stats().DirtyBytes
	}
	e.Logf("cutting the power to all %d nodes: %d workload files fsync'd so far, %s not fsync'd on their disks", e.Nodes, acked, formatBytes(dirty))
	for i := range e.Nodes {
		syscall.Kill(e.Node(i).PID, syscall.SIGKILL)
	}
	cut := time.Now()
	for i := range e.Nodes {
		if err := harness.WaitGone(e.Node(i).PID, 10*time.Second); err != nil {
			return fmt.Errorf("%s after SIGKILL: %w", e.Node(i).Name, err)
		}
	}
	var dropped int64
	for i, fs := range disks {
		before := fs.Stats().DroppedBytes
		err := fs.CutPower()
		for try := 0; errors.Is(err, lazyfs.ErrBusy) && try < 50; try++ {
			time.Sleep(100 * time.Millisecond)
			err = fs.CutPower()
		}
		if err != nil {
			return fmt.Errorf("cut the power of node%d's disk: %w", i+1, err)
		}
		dropped += fs.Stats().DroppedBytes - before
	}
	e.Logf("power cut: %s that was not fsync'd is gone; starting the nodes again", formatBytes(dropped))
	e.Note("unsynced_dropped_bytes", dropped)
	e.Note("fsynced_before_cut", acked)
	for i := range e.Nodes {
		if err := mountDisk(i); err != nil {
			return err
		}
	}
	for i := range e.Nodes {
		// Every peer is down too: a node that was a member before starts
		// once no --join address answers within --join-timeout, and goes
		// on joining them as they come back. Restart fails if the node
		// cannot open its bbolt file or its JetStream store.
		e.SetNodeArgs(i, append(e.Node(i).Args, "--join-timeout", "2s"))
		if err := e.Restart(ctx, i); err != nil {
			return fmt.Errorf("restart after the power cut: %w", err)
		}
	}
	e.Logf("all nodes back %.1fs after the cut", time.Since(cut).Seconds())
	if err := e.waitMetadata(ctx); err != nil {
		return err
	}
	Sleep(ctx, 2*time.Second)
	e.Finish(ctx, FinishOptions{Workload: w, HealSince: cut, AllowReadErrors: true, AllowWriteErrors: true})
	return nil
}
