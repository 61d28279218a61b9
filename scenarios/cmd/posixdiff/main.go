// Command posixdiff runs the differential exerciser of package
// scenarios/posixdiff: the same seeded random sequence of file-system
// operations on a meshfs mount and on a local directory, every result
// compared. On a mismatch it prints the seed, the mismatch, the shortest
// prefix of the sequence that shows it and a minimal sequence, and exits 1.
//
// Without --mount it builds meshfs from the module it is run in, starts a
// 3-node mesh with 'meshfs up' (scenarios/harness) and uses its mount.
//
//	go run ./scenarios/cmd/posixdiff                       # 10,000 ops, one seed
//	go run ./scenarios/cmd/posixdiff --soak                # 100,000 ops, 3 seeds
//	go run ./scenarios/cmd/posixdiff --mount /mnt/meshfs --seed 42 --ops 500
//	go run ./scenarios/cmd/posixdiff --tolerate times-past-2262              # look past a known deviation
//	go run ./scenarios/cmd/posixdiff --crash-every 400 --ops 20000           # crash mode: ~50 kills
//
// In crash mode (--crash-every N) the tree under test lives on a mount of
// its own; at random points, N operations apart on average, either that
// mount's process is SIGKILLed and the mesh mounted again, or a node is
// SIGKILLed while the next operations run, and restarted at the next point
// (harness.CrashPoints). After each crash every fsync'd file must be
// identical and the tree one a local file system could have left
// (posixdiff.Crash); after a node's death, identical. A mismatch in crash
// mode is not minimised: it depends on where the crashes fell.
//
// Each known deviation (posixdiff.Deviations, listed by -h) switches off one
// precise comparison; --exclude stops generating whole operations.
//
// For each seed it prints
//
//	posixdiff seed=S ops=N mismatches=M elapsed_s=T
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/meshfs/meshfs/scenarios/harness"
	"github.com/meshfs/meshfs/scenarios/posixdiff"
)

type options struct {
	mount, local, meshfsBin string
	seed                    uint64
	seeds, ops, checkEvery  int
	blockSize               int
	exclude                 []posixdiff.Kind
	tolerate                []string
	shrinkBudget            time.Duration
	crashEvery              int
}

func main() {
	var o options
	flag.StringVar(&o.mount, "mount", "", "an existing meshfs mount to test in (a directory posixdiff-PID is made in it); default: start a 3-node mesh")
	flag.StringVar(&o.local, "local", "", "directory on a local file system with user.* xattrs (default: a new temporary directory)")
	flag.StringVar(&o.meshfsBin, "meshfs", "", "meshfs binary for the mesh started without --mount (default: build ./cmd/meshfs of this module)")
	flag.Uint64Var(&o.seed, "seed", 0, "first seed; further seeds count up from it (default: from the clock)")
	flag.IntVar(&o.seeds, "seeds", 0, "how many seeds to run (default 1; 3 with --soak)")
	flag.IntVar(&o.ops, "ops", 0, "operations per seed (default 10000; 100000 with --soak)")
	soak := flag.Bool("soak", false, "soak mode: 100,000 operations per seed, 3 seeds, unless --ops or --seeds say otherwise")
	flag.IntVar(&o.checkEvery, "check-every", 250, "operations between full-tree comparisons (and one at the end)")
	flag.IntVar(&o.blockSize, "block-size", 16384, "block size of the mesh started without --mount: small, so files span many blocks")
	exclude := flag.String("exclude", "", "comma-separated operations never to generate (open, pwrite, rename, chown, utimens, setxattr, …)")
	tolerate := flag.String("tolerate", "", "comma-separated known deviations not to check ("+strings.Join(slices.Sorted(maps.Keys(posixdiff.Deviations)), ", ")+")")
	flag.DurationVar(&o.shrinkBudget, "shrink-budget", 5*time.Minute, "time spent looking for a minimal sequence after a mismatch")
	flag.IntVar(&o.crashEvery, "crash-every", 0, "crash mode: SIGKILL the mount or a node every this many operations on average (0: off; needs the mesh this command starts, not --mount)")
	verbose := flag.Bool("v", false, "log progress")
	flag.Parse()
	if flag.NArg() != 0 {
		flag.Usage()
		os.Exit(2)
	}
	if o.crashEvery > 0 && o.mount != "" {
		fmt.Fprintln(os.Stderr, "posixdiff: --crash-every kills the mesh's processes, so it needs the mesh this command starts: drop --mount")
		os.Exit(2)
	}
	if o.seed == 0 {
		o.seed = uint64(time.Now().UnixNano() % 1e9)
	}
	if o.seeds <= 0 {
		o.seeds = 1
		if *soak {
			o.seeds = 3
		}
	}
	if o.ops <= 0 {
		o.ops = 10000
		if *soak {
			o.ops = 100000
		}
	}
	var err error
	if o.exclude, err = posixdiff.ParseKinds(*exclude); err != nil {
		fmt.Fprintln(os.Stderr, "posixdiff:", err)
		os.Exit(2)
	}
	if o.tolerate, err = posixdiff.ParseDeviations(*tolerate); err != nil {
		fmt.Fprintln(os.Stderr, "posixdiff:", err)
		os.Exit(2)
	}
	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelInfo
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	mismatches, err := run(ctx, o, log)
	if err != nil {
		fmt.Fprintln(os.Stderr, "posixdiff:", err)
		os.Exit(2)
	}
	if mismatches > 0 {
		os.Exit(1)
	}
}

// run runs every seed and returns how many showed a mismatch.
func run(ctx context.Context, o options, log *slog.Logger) (int, error) {
	mount := o.mount
	var crasher *harness.CrashPoints
	if mount == "" {
		m, cleanup, err := startMesh(ctx, o, log)
		if err != nil {
			return 0, err
		}
		defer cleanup()
		mount = m.Mount()
		if o.crashEvery > 0 {
			if _, err := m.WaitMetadata(ctx, time.Minute); err != nil {
				return 0, err
			}
			mount = filepath.Join(m.Dir, "crash-mnt")
			if err := os.Mkdir(mount, 0o755); err != nil {
				return 0, err
			}
			if crasher, err = harness.NewCrashPoints(ctx, m, mount, o.seed); err != nil {
				return 0, err
			}
			defer func() {
				cctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
				defer cancel()
				if err := crasher.Close(cctx); err != nil {
					fmt.Fprintln(os.Stderr, "posixdiff: after the crash run:", err)
				}
			}()
		}
	}
	meshDir := filepath.Join(mount, fmt.Sprintf("posixdiff-%d", os.Getpid()))
	if err := os.Mkdir(meshDir, 0o755); err != nil {
		return 0, fmt.Errorf("work directory in the mount: %w", err)
	}
	defer os.RemoveAll(meshDir)
	local := o.local
	if local == "" {
		var err error
		if local, err = os.MkdirTemp("", "posixdiff-local-"); err != nil {
			return 0, err
		}
		defer os.RemoveAll(local)
	}
	fsType, err := posixdiff.CheckLocalDir(local)
	if err != nil {
		return 0, err
	}
	var st unix.Stat_t
	if err := unix.Stat(meshDir, &st); err != nil {
		return 0, fmt.Errorf("stat %s: %w", meshDir, err)
	}
	// meshfs reports its block size as st_blksize: offsets cluster
	// around its multiples.
	gen := posixdiff.GenConfig{BlockSize: int64(st.Blksize), Exclude: o.exclude}
	fmt.Printf("posixdiff: meshfs %s (block size %d), local %s (%s), %d seed(s) from %d, %d ops each, tree compared every %d\n",
		meshDir, st.Blksize, local, fsType, o.seeds, o.seed, o.ops, o.checkEvery)

	cfg := posixdiff.Config{
		Under:     posixdiff.Tree{Name: "meshfs", Dir: meshDir},
		Reference: posixdiff.Tree{Name: "local", Dir: local},
		Tolerate:  o.tolerate,
		Log:       log,
	}
	if crasher != nil {
		cfg.Crasher, cfg.CrashEvery, cfg.CrashSeed = crasher, o.crashEvery, o.seed
	}
	r, err := posixdiff.NewRunner(cfg)
	if err != nil {
		return 0, err
	}
	bad := 0
	for i := range o.seeds {
		seed := o.seed + uint64(i)
		start := time.Now()
		ops := posixdiff.Generate(seed, o.ops, gen)
		mm, err := r.Run(ctx, ops, o.checkEvery)
		if err != nil {
			return bad, fmt.Errorf("seed %d: %w", seed, err)
		}
		n := 0
		if mm != nil && crasher != nil {
			bad++
			fmt.Printf("posixdiff seed=%d ops=%d crash_every=%d %s\n(%s; a crash-mode mismatch is not minimised)\n", seed, o.ops, o.crashEvery, mm, r.CrashStats())
			return bad, nil
		}
		if mm != nil {
			n = 1
			bad++
			fmt.Printf("posixdiff seed=%d ops=%d %s\n", seed, o.ops, mm)
			fmt.Printf("posixdiff: the run took %.1f s; minimising (budget %v)…\n", time.Since(start).Seconds(), o.shrinkBudget)
			shrunk, merr := r.Minimize(ctx, ops, mm, o.checkEvery, o.shrinkBudget)
			if merr != nil && ctx.Err() != nil {
				return bad, merr
			}
			fmt.Print(posixdiff.Report(seed, o.ops, mm, shrunk, merr))
		}
		crashes := ""
		if crasher != nil {
			crashes = fmt.Sprintf(" node_kills=%d mount_kills=%d (all seeds so far: %s)", crasher.NodeKills, crasher.MountKills, r.CrashStats())
		}
		fmt.Printf("posixdiff seed=%d ops=%d mismatches=%d elapsed_s=%.1f%s\n", seed, o.ops, n, time.Since(start).Seconds(), crashes)
	}
	return bad, nil
}

// startMesh builds meshfs and runs a 3-node 'meshfs up' in a temporary
// directory; cleanup stops it and removes the directory.
func startMesh(ctx context.Context, o options, log *slog.Logger) (*harness.Mesh, func(), error) {
	work, err := os.MkdirTemp("", "posixdiff-mesh-")
	if err != nil {
		return nil, nil, err
	}
	bin := o.meshfsBin
	if bin == "" {
		root, err := harness.ModuleRoot()
		if err != nil {
			os.RemoveAll(work)
			return nil, nil, fmt.Errorf("building meshfs (run inside the meshfs module, or give --mount or --meshfs): %w", err)
		}
		fmt.Println("posixdiff: building meshfs…")
		if bin, err = harness.Build(root, work); err != nil {
			os.RemoveAll(work)
			return nil, nil, err
		}
	}
	upCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	logf := func(format string, args ...any) { log.Info(fmt.Sprintf(format, args...)) }
	m, err := harness.Up(upCtx, bin, filepath.Join(work, "mesh"), 3, logf, "--block-size", fmt.Sprint(o.blockSize))
	if err != nil {
		os.RemoveAll(work)
		return nil, nil, fmt.Errorf("start a mesh: %w", err)
	}
	cleanup := func() {
		if err := m.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "posixdiff: stopping the mesh:", err)
		}
		os.RemoveAll(work)
	}
	return m, cleanup, nil
}
