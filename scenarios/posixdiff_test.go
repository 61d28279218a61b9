package scenarios

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

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
// It tolerates the known ways meshfs still departs from the local file
// system (posixdiff.Deviations: a directory removed while open, times past
// 2262), so that it guards everything else; MESHFS_POSIXDIFF_TOLERATE takes
// another comma-separated list of them ("none" for a strict run).
func TestPosixDiff(t *testing.T) {
	list := os.Getenv("MESHFS_POSIXDIFF_TOLERATE")
	switch list {
	case "":
		list = "rmdir-open,times-past-2262"
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
