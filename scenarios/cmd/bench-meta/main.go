// Command bench-meta measures metadata throughput through a meshfs mount
// (the mount of a running 'meshfs up', its metadata in 3 replicas) beside
// the same operations on a go-fuse passthrough mount of a local directory
// (the loopback program), measured in the same run.
//
// For each file system, with 1 client and then with -clients clients
// (goroutines, each issuing its own syscalls):
//
//   - creates: open(O_CREAT|O_EXCL) and close of -files empty files; one
//     client puts them in one directory (which is then the readdir
//     directory), several clients each put files/clients in a directory of
//     their own.
//   - stats: lstat of each of those files through a second mount of the
//     same file system that has not looked any of them up yet, so each stat
//     is a LOOKUP answered by the file system, not by the kernel's cache.
//   - readdir: reading the whole -files-entry directory (getdents until the
//     end) through that second mount, -readdirs times per client; several
//     clients read it at once.
//
// The mesh is a 'meshfs up' this program starts in -work (-nodes nodes,
// the metadata at 3 current replicas, or 1 below 3 nodes, before it measures)
// and stops at the end; the second meshfs mount is a 'meshfs mount' of it.
//
// Each fs=… line gives the rates; the last line gives meshfs/passthrough
// ratios of them (below 1: meshfs is slower).
package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/meshfs/meshfs/scenarios/benchutil"
)

type config struct {
	files, clients, readdirs int
}

// figures are one file system's results with some number of clients.
type figures struct {
	clients        int
	createsPerS    float64
	statsPerS      float64
	readdirMS      float64 // median time of one whole readdir
	readdirEntries float64 // entries/s, all clients together
}

func main() {
	bin := flag.String("meshfs", "", "meshfs binary, for 'meshfs up', 'meshfs status' and 'meshfs mount'; required")
	loopback := flag.String("loopback", "", "the loopback (go-fuse passthrough) binary of scenarios/cmd/loopback; required")
	work := flag.String("work", "", "directory for the mesh, mount points, the passthrough's local directory and logs (default: a new temporary directory)")
	nodes := flag.Int("nodes", 3, "nodes of the mesh")
	files := flag.Int("files", 10000, "files created per phase, and entries in the readdir directory")
	clients := flag.Int("clients", 4, "clients of the concurrent phases")
	readdirs := flag.Int("readdirs", 2, "whole-directory reads per client")
	flag.Parse()
	if *bin == "" || *loopback == "" || *nodes < 1 || *files < 1 || *clients < 1 || *readdirs < 1 {
		flag.Usage()
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *bin, *loopback, *work, *nodes, config{files: *files, clients: *clients, readdirs: *readdirs}); err != nil {
		fmt.Fprintln(os.Stderr, "bench-meta:", err)
		os.Exit(1)
	}
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench-meta: "+format+"\n", args...)
}

func run(ctx context.Context, bin, loopback, work string, nodes int, cfg config) (err error) {
	if work == "" {
		if work, err = os.MkdirTemp("", "bench-meta."); err != nil {
			return err
		}
		defer os.RemoveAll(work)
	}
	m, err := benchutil.Up(ctx, bin, filepath.Join(work, "mesh"), nodes, logf)
	if err != nil {
		return err
	}
	defer func() {
		if serr := m.Stop(); serr != nil && err == nil {
			err = fmt.Errorf("stopping the mesh: %w", serr)
		}
	}()

	// The passthrough first: it is quick, and leaves the machine as it was.
	local := filepath.Join(work, "local")
	if err := os.Mkdir(local, 0o755); err != nil {
		return err
	}
	pa, pb := filepath.Join(work, "passthrough-a"), filepath.Join(work, "passthrough-b")
	unmountA, err := startLoopback(ctx, loopback, local, pa)
	if err != nil {
		return err
	}
	pass, err := measure(ctx, "passthrough", filepath.Join(pa, "metabench"), func() (string, func() error, error) {
		u, err := startLoopback(ctx, loopback, local, pb)
		return filepath.Join(pb, "metabench"), u, err
	}, cfg)
	if uerr := unmountA(); err == nil {
		err = uerr
	}
	if err != nil {
		return err
	}

	mesh, err := measure(ctx, "meshfs", filepath.Join(m.Mount(), "metabench"), func() (string, func() error, error) {
		mb := filepath.Join(work, "meshfs-b")
		if err := os.Mkdir(mb, 0o755); err != nil {
			return "", nil, err
		}
		mctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		u, err := m.MountAgain(mctx, mb)
		return filepath.Join(mb, "metabench"), u, err
	}, cfg)
	if err != nil {
		return err
	}

	for i := range mesh {
		for _, f := range []struct {
			name string
			f    figures
		}{{"meshfs", mesh[i]}, {"passthrough", pass[i]}} {
			fmt.Printf("bench=meta fs=%s clients=%d files=%d creates_per_s=%.0f stats_per_s=%.0f readdir_ms=%.1f readdir_entries_per_s=%.0f\n",
				f.name, f.f.clients, cfg.files, f.f.createsPerS, f.f.statsPerS, f.f.readdirMS, f.f.readdirEntries)
		}
	}
	line := fmt.Sprintf("bench=meta files=%d", cfg.files)
	for i := range mesh {
		mf, pf := mesh[i], pass[i]
		line += fmt.Sprintf(" create_ratio_%d=%s stat_ratio_%d=%s readdir_ratio_%d=%s",
			mf.clients, ratio(mf.createsPerS, pf.createsPerS), mf.clients, ratio(mf.statsPerS, pf.statsPerS),
			mf.clients, ratio(mf.readdirEntries, pf.readdirEntries))
	}
	fmt.Println(line)
	return nil
}

func ratio(a, b float64) string {
	if b == 0 {
		return "inf"
	}
	return fmt.Sprintf("%.3f", a/b)
}

// measure runs the phases on one file system: creates under dirA (through
// the first mount), then stats and readdirs through a second mount made by
// mountB, which returns dirA's path through it.
func measure(ctx context.Context, name, dirA string, mountB func() (string, func() error, error), cfg config) ([]figures, error) {
	out := []figures{{clients: 1}, {clients: cfg.clients}}
	one := filepath.Join(dirA, "one")
	if err := os.MkdirAll(one, 0o755); err != nil {
		return nil, err
	}
	per := cfg.files / cfg.clients
	many := make([]string, cfg.clients)
	for i := range many {
		many[i] = filepath.Join(dirA, "many", fmt.Sprint(i))
		if err := os.MkdirAll(many[i], 0o755); err != nil {
			return nil, err
		}
	}

	// creates
	el, err := parallel(ctx, 1, func(_ int) error { return create(ctx, one, cfg.files) })
	if err != nil {
		return nil, err
	}
	out[0].createsPerS = float64(cfg.files) / el.Seconds()
	logf("%s: 1 client: %d creates in %.1fs", name, cfg.files, el.Seconds())
	el, err = parallel(ctx, cfg.clients, func(i int) error { return create(ctx, many[i], per) })
	if err != nil {
		return nil, err
	}
	out[1].createsPerS = float64(per*cfg.clients) / el.Seconds()
	logf("%s: %d clients: %d creates in %.1fs", name, cfg.clients, per*cfg.clients, el.Seconds())

	// stats and readdirs through a mount that has not seen the files
	dirB, unmount, err := mountB()
	if err != nil {
		return nil, err
	}
	defer func() {
		if unmount != nil {
			unmount()
		}
	}()
	oneB := filepath.Join(dirB, "one")
	el, err = parallel(ctx, 1, func(_ int) error { return stat(ctx, oneB, cfg.files) })
	if err != nil {
		return nil, err
	}
	out[0].statsPerS = float64(cfg.files) / el.Seconds()
	logf("%s: 1 client: %d stats in %.1fs", name, cfg.files, el.Seconds())
	el, err = parallel(ctx, cfg.clients, func(i int) error {
		return stat(ctx, filepath.Join(dirB, "many", fmt.Sprint(i)), per)
	})
	if err != nil {
		return nil, err
	}
	out[1].statsPerS = float64(per*cfg.clients) / el.Seconds()
	logf("%s: %d clients: %d stats in %.1fs", name, cfg.clients, per*cfg.clients, el.Seconds())

	for i, clients := range []int{1, cfg.clients} {
		var mu sync.Mutex
		var times []time.Duration
		el, err = parallel(ctx, clients, func(_ int) error {
			for range cfg.readdirs {
				t := time.Now()
				n, err := readdir(oneB)
				if err != nil {
					return err
				}
				d := time.Since(t)
				if n != cfg.files {
					return fmt.Errorf("readdir %s: %d entries, want %d", oneB, n, cfg.files)
				}
				mu.Lock()
				times = append(times, d)
				mu.Unlock()
			}
			return ctx.Err()
		})
		if err != nil {
			return nil, err
		}
		slices.Sort(times)
		med := (times[(len(times)-1)/2] + times[len(times)/2]) / 2
		out[i].readdirMS = float64(med) / float64(time.Millisecond)
		out[i].readdirEntries = float64(clients*cfg.readdirs*cfg.files) / el.Seconds()
		logf("%s: %d clients: %d readdirs of %d entries in %.1fs", name, clients, clients*cfg.readdirs, cfg.files, el.Seconds())
	}

	u := unmount
	unmount = nil
	if err := u(); err != nil {
		return nil, err
	}
	return out, nil
}

// parallel runs fn(0) … fn(n-1) at once and returns the wall time they took.
func parallel(ctx context.Context, n int, fn func(i int) error) (time.Duration, error) {
	errs := make([]error, n)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = fn(i)
		}()
	}
	wg.Wait()
	el := time.Since(start)
	if err := errors.Join(errs...); err != nil {
		return 0, err
	}
	return el, ctx.Err()
}

func create(ctx context.Context, dir string, n int) error {
	for i := range n {
		if i%256 == 0 && ctx.Err() != nil {
			return ctx.Err()
		}
		p := filepath.Join(dir, fmt.Sprintf("f%06d", i))
		fd, err := syscall.Open(p, syscall.O_CREAT|syscall.O_EXCL|syscall.O_WRONLY|syscall.O_CLOEXEC, 0o644)
		if err != nil {
			return fmt.Errorf("create %s: %w", p, err)
		}
		if err := syscall.Close(fd); err != nil {
			return fmt.Errorf("close %s: %w", p, err)
		}
	}
	return nil
}

func stat(ctx context.Context, dir string, n int) error {
	var st syscall.Stat_t
	for i := range n {
		if i%256 == 0 && ctx.Err() != nil {
			return ctx.Err()
		}
		p := filepath.Join(dir, fmt.Sprintf("f%06d", i))
		if err := syscall.Lstat(p, &st); err != nil {
			return fmt.Errorf("stat %s: %w", p, err)
		}
	}
	return nil
}

// readdir reads the names of dir to the end, as ls does, and counts them.
func readdir(dir string) (int, error) {
	f, err := os.Open(dir)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	return len(names), err
}

// startLoopback runs 'loopback DIR MNT' (which mounts DIR at mnt, says
// "ready", and unmounts on SIGTERM), waits until it is mounted, and returns
// a function that stops it and waits for it to end.
func startLoopback(ctx context.Context, bin, dir, mnt string) (func() error, error) {
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, dir, mnt)
	logPath := mnt + ".log"
	lf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd.Stderr = lf
	out, err := cmd.StdoutPipe()
	if err != nil {
		lf.Close()
		return nil, err
	}
	// Should this program die, the mount goes too (it unmounts on SIGTERM).
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait(); lf.Close() }()
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if sc.Text() == "ready" {
				close(ready)
				break
			}
		}
		io.Copy(io.Discard, out)
	}()
	stop := func() error {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-done:
			done <- err
			if err != nil {
				return fmt.Errorf("loopback %s: %v (log %s)", mnt, err, logPath)
			}
			return nil
		case <-time.After(45 * time.Second):
			cmd.Process.Kill()
			<-done
			syscall.Unmount(mnt, syscall.MNT_DETACH)
			return fmt.Errorf("loopback %s did not stop within 45s of SIGTERM; killed", mnt)
		}
	}
	select {
	case <-ready:
		return stop, nil
	case err := <-done:
		done <- err
		b, _ := os.ReadFile(logPath)
		return nil, fmt.Errorf("loopback %s exited (%v): %s", mnt, err, bytes.TrimSpace(b))
	case <-time.After(60 * time.Second):
		stop()
		return nil, fmt.Errorf("loopback %s not mounted within 60s", mnt)
	case <-ctx.Done():
		stop()
		return nil, ctx.Err()
	}
}
