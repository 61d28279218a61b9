package scenarios

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/meshfs/meshfs/scenarios/harness"
	"github.com/meshfs/meshfs/scenarios/posixdiff"
)

// TestPosixDiff is the CI form of the differential exerciser
// (scenarios/cmd/posixdiff runs the soak form): seeded random sequences of
// file-system operations on a 3-node meshfs mount and on a local ext4
// directory, every result and, every 250 operations, the whole trees
// compared. A mismatch fails the test with the seed, the shortest prefix
// that shows it and a minimal sequence, replayable with
//
//	go run ./scenarios/cmd/posixdiff --seed S --ops N
//
// It tolerates the one known way meshfs still departs from the local file
// system (posixdiff.Deviations: times past 2262), so that it guards
// everything else; MESHFS_POSIXDIFF_TOLERATE takes another comma-separated
// list of them ("none" for a strict run).
func TestPosixDiff(t *testing.T) {
	list := os.Getenv("MESHFS_POSIXDIFF_TOLERATE")
	switch list {
	case "":
		list = "times-past-2262"
	case "none":
		list = ""
	}
	tolerate, err := posixdiff.ParseDeviations(list)
	if err != nil {
		t.Fatal(err)
	}
	// Small blocks, so that files of a few tens of KiB span many of them
	// and the offsets the generator picks cross block edges often.
	const blockSize = 16384
	m := startMesh(t, 3, "--block-size", fmt.Sprint(blockSize))
	meshDir := filepath.Join(m.Mount(), "posixdiff")
	if err := os.Mkdir(meshDir, 0o755); err != nil {
		t.Fatal(err)
	}
	// t.TempDir is under /tmp: ext4 here (CheckLocalDir says which, and
	// fails on a file system without user.* xattrs).
	local := t.TempDir()
	fsType, err := posixdiff.CheckLocalDir(local)
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Stat(meshDir, &st); err != nil {
		t.Fatal(err)
	}
	if st.Blksize != blockSize {
		t.Fatalf("meshfs st_blksize %d, want the block size %d", st.Blksize, blockSize)
	}
	r, err := posixdiff.NewRunner(posixdiff.Config{
		Under:     posixdiff.Tree{Name: "meshfs", Dir: meshDir},
		Reference: posixdiff.Tree{Name: "local", Dir: local},
		Tolerate:  tolerate,
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(tolerate) > 0 {
		t.Logf("not checking the known deviations %v", tolerate)
	}
	const checkEvery = 250
	gen := posixdiff.GenConfig{BlockSize: blockSize}
	for _, tc := range []struct {
		seed uint64
		ops  int
	}{
		{seed: 1, ops: 10000},
		{seed: 2, ops: 3000},
	} {
		start := time.Now()
		ops := posixdiff.Generate(tc.seed, tc.ops, gen)
		mm, err := r.Run(context.Background(), ops, checkEvery)
		if err != nil {
			t.Fatal(err)
		}
		if mm != nil {
			shrunk, merr := r.Minimize(context.Background(), ops, mm, checkEvery, 45*time.Second)
			t.Errorf("meshfs differs from the local %s directory:\n%s", fsType, posixdiff.Report(tc.seed, tc.ops, mm, shrunk, merr))
			continue
		}
		t.Logf("posixdiff seed=%d ops=%d mismatches=0 elapsed_s=%.1f (local: %s)", tc.seed, tc.ops, time.Since(start).Seconds(), fsType)
	}
}

// TestPosixDiffCrash is the CI form of the exerciser's crash mode (the
// soak form: go run ./scenarios/cmd/posixdiff --crash-every 400 --ops
// 20000): the same comparison, on a mount of its own that is SIGKILLed and
// mounted again at random points, while at others a node is SIGKILLed
// under the running operations and restarted later. After a node's death
// the trees must still be identical; after the mount's, every file
// fsync'd (or unchanged since its last fsync) must be identical, and the
// rest a state a local file system could have left (posixdiff.Crash).
func TestPosixDiffCrash(t *testing.T) {
	const blockSize = 16384
	m := startMesh(t, 3, "--block-size", fmt.Sprint(blockSize))
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	if _, err := m.WaitMetadata(ctx, time.Minute); err != nil {
		t.Fatal(err)
	}
	mnt := filepath.Join(t.TempDir(), "crash-mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	const seed = 3
	crasher, err := harness.NewCrashPoints(ctx, m, mnt, seed)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if err := crasher.Close(cctx); err != nil {
			t.Errorf("after the crash run: %v", err)
		}
	})
	local := t.TempDir()
	if _, err := posixdiff.CheckLocalDir(local); err != nil {
		t.Fatal(err)
	}
	r, err := posixdiff.NewRunner(posixdiff.Config{
		Under:      posixdiff.Tree{Name: "meshfs", Dir: mnt},
		Reference:  posixdiff.Tree{Name: "local", Dir: local},
		Tolerate:   []string{"times-past-2262"},
		Crasher:    crasher,
		CrashEvery: 250,
		CrashSeed:  seed,
	})
	if err != nil {
		t.Fatal(err)
	}
	const ops = 3000
	start := time.Now()
	mm, err := r.Run(ctx, posixdiff.Generate(seed, ops, posixdiff.GenConfig{BlockSize: blockSize}), 250)
	if err != nil {
		t.Fatal(err)
	}
	st := r.CrashStats()
	if mm != nil {
		// The mount logs why a call failed (an errno of EIO says little).
		logTail, _ := os.ReadFile(mnt + ".mount.log")
		if len(logTail) > 4000 {
			logTail = logTail[len(logTail)-4000:]
		}
		t.Fatalf("seed=%d ops=%d crash_every=250: %s\n(%s)\nthe mount's log since its last start ends:\n%s", seed, ops, mm, st, logTail)
	}
	t.Logf("posixdiff crash seed=%d ops=%d mismatches=0 node_kills=%d %s elapsed_s=%.1f",
		seed, ops, crasher.NodeKills, st, time.Since(start).Seconds())
	if st.MountLosses == 0 || crasher.NodeKills == 0 || st.ExactFiles == 0 {
		t.Fatalf("the crash run tested too little: %d node kills, %s", crasher.NodeKills, st)
	}
}
