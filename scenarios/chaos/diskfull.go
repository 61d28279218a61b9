package chaos

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/meshfs/meshfs/persist"
)

// diskFullSize and diskFullHow are disk-full's --disk and --how.
var diskFullSize, diskFullHow string

// DiskFull: the last node's data dir is a small tmpfs (made before 'meshfs
// up' creates the dir; without the right to mount, the node is restarted
// with --capacity instead). Writes fill it: the node must refuse new
// blocks with a reason (507, "no room for a block …") and go on serving
// what it holds, writes must go to the other nodes without an error, and
// nothing stored before may be harmed.
var DiskFull = Scenario{
	Name:     "disk-full",
	Summary:  "one node's data dir on a small tmpfs fills up; it refuses blocks with a reason, writes go elsewhere, nothing stored is harmed",
	Defaults: Defaults{Nodes: 4, Size: 8 << 20, Duration: 10 * time.Second},
	Flags: func(fs *flag.FlagSet) {
		fs.StringVar(&diskFullSize, "disk", "40MiB", "size of the small node's file system")
		fs.StringVar(&diskFullHow, "how", "auto", "tmpfs (a small file system: needs root), capacity (the node's --capacity), or auto (tmpfs if it may mount)")
	},
	Run: runDiskFull,
}

func runDiskFull(ctx context.Context, e *Env) error {
	disk, err := ParseSize(diskFullSize)
	if err != nil {
		return err
	}
	const reserve = 4 << 20
	if e.Nodes < 4 {
		return fmt.Errorf("disk-full needs R+1 = 4 nodes or more: with one full, writes still need R with room")
	}
	how := diskFullHow
	if how != "auto" && how != "tmpfs" && how != "capacity" {
		return fmt.Errorf("--how %q: want tmpfs, capacity or auto", how)
	}
	k := e.Nodes - 1
	data := filepath.Join(e.MeshDir(), fmt.Sprintf("node%d", k+1))
	if err := os.MkdirAll(data, 0o700); err != nil {
		return err
	}
	if how != "capacity" {
		err := syscall.Mount("tmpfs", data, "tmpfs", 0, fmt.Sprintf("size=%d,mode=0700", disk))
		switch {
		case err == nil:
			how = "tmpfs"
			e.Defer("unmount the tmpfs at "+data, func() error {
				e.keepLog(k, data)
				return detach(data)
			})
		case errors.Is(err, syscall.EPERM) && how == "auto":
			how = "capacity"
			e.Logf("cannot mount a tmpfs (%v): limiting node%d with --capacity instead", err, k+1)
		default:
			return fmt.Errorf("mount a tmpfs at %s: %w", data, err)
		}
	}
	diskNote := "tmpfs:" + formatBytes(disk)
	if how == "capacity" {
		diskNote = "capacity:" + formatBytes(disk-reserve)
	}
	e.Note("disk", diskNote)
	// The default reserve (2% of the file system, at least 64 MiB) would
	// leave no room at all on a small one.
	if err := e.Up(ctx, "--disk-reserve", fmt.Sprint(reserve)); err != nil {
		return err
	}
	small := e.Node(k)
	if how == "capacity" {
		if err := e.Terminate(k); err != nil {
			return err
		}
		e.SetNodeArgs(k, append(append([]string(nil), small.Args...), "--capacity", fmt.Sprint(disk-reserve)))
		if err := e.Restart(ctx, k); err != nil {
			return err
		}
		small = e.Node(k)
	}
	if err := e.WriteDataSet(ctx); err != nil {
		return err
	}
	onSmall, err := e.listNode(ctx, k)
	if err != nil {
		return err
	}
	e.Logf("%s holds %d blocks of the data set (%s)", small.Name, len(onSmall), diskNote)

	// Fill: write until the small node has no room for a block.
	start := time.Now()
	w := e.StartWorkload(ctx, WorkloadOptions{Readers: 1, Writers: 2, WriteRate: 8 << 20})
	var full time.Time
	for time.Since(start) < 2*time.Minute && ctx.Err() == nil {
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		st, err := e.Client().Stats(sctx, small.HTTP)
		cancel()
		if err != nil {
			return fmt.Errorf("%s stats: %w", small.Name, err)
		}
		if st.DiskFree < uint64(e.BlockBytes()) {
			full = time.Now()
			e.Logf("%s is full %.1fs into the load: %d blocks, %s, %s free for blocks of %s", small.Name, full.Sub(start).Seconds(), st.Blocks, formatBytes(st.Bytes), formatBytes(int64(st.DiskFree)), formatBytes(int64(st.DiskTotal)))
			break
		}
		Sleep(ctx, 250*time.Millisecond)
	}
	if full.IsZero() {
		w.Stop()
		return fmt.Errorf("%s did not fill up within 2 minutes of writing", small.Name)
	}
	_, _, _, writesAtFull, errorsAtFull := w.Counts()

	// A block the node does not hold is refused, with the reason.
	probe := content(e.Seed, 1<<50, int64(e.BlockBytes()))
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	perr := e.Client().Put(pctx, small.HTTP, persist.Sum(probe), probe)
	cancel()
	switch {
	case perr == nil:
		e.Fail("%s took a %s block while full", small.Name, formatBytes(int64(len(probe))))
	case !errors.Is(perr, syscall.ENOSPC) || !strings.Contains(perr.Error(), "no room for a block"):
		e.Fail("%s refused a block, but not as a full node (507, \"no room for a block …\"): %v", small.Name, perr)
	default:
		e.Logf("a new block to the full %s: %v", small.Name, perr)
	}

	// Writes go on, to the other nodes.
	Sleep(ctx, e.Duration)
	_, _, _, writes, writeErrors := w.Counts()
	w.Stop()
	e.Note("full_after_s", fmt.Sprintf("%.1f", full.Sub(start).Seconds()))
	e.Note("writes_after_full", writes-writesAtFull)
	if writes == writesAtFull {
		e.Fail("no write succeeded in the %v after %s was full", e.Duration, small.Name)
	}
	if writeErrors > errorsAtFull {
		e.Logf("%d writes failed after %s was full", writeErrors-errorsAtFull, small.Name)
	}
	// A full node logs its refusals at most once a minute, and the repair
	// actors the copies it refused once per round and node.
	refusals := countInFile(small.Log, "refusing new blocks: no room")
	e.Note("refusals_logged", refusals)
	e.Logf("%s's log shows %d warnings that it refuses new blocks (at most one a minute)", small.Name, refusals)
	var refused int
	for i := range e.NumNodes() {
		if i != k {
			refused += refusedCopies(e.Node(i).Log, small.Name)
		}
	}
	e.Note("repair_copies_refused", refused)
	e.Logf("the other nodes' repair actors logged %d copies that %s refused for want of room", refused, small.Name)

	// What the full node held before and holds now is unharmed, and it
	// still runs.
	if !e.Alive(k) {
		e.Fail("%s died when its disk filled", small.Name)
	} else {
		now, err := e.listNode(ctx, k)
		if err != nil {
			return err
		}
		for id := range onSmall {
			if !now[id] {
				e.Logf("%s no longer lists block %s", small.Name, id)
			}
			now[id] = true
		}
		bad := 0
		for id := range now {
			gctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			_, err := e.Client().Get(gctx, small.HTTP, id)
			cancel()
			if err != nil {
				bad++
				e.Logf("%s block %s: %v", small.Name, id, err)
			}
		}
		if bad > 0 {
			e.Fail("%d of the blocks %s held are gone or damaged", bad, small.Name)
		}
		e.Logf("all %d blocks %s held before and after it filled up read back whole", len(now), small.Name)
	}
	e.Finish(ctx, FinishOptions{})
	return nil
}

// listNode returns the blocks node i holds.
func (e *Env) listNode(ctx context.Context, i int) (map[persist.BlockID]bool, error) {
	ids := map[persist.BlockID]bool{}
	lctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	err := e.Client().List(lctx, e.Node(i).HTTP, func(id persist.BlockID, size int) error {
		ids[id] = true
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list the blocks of %s: %w", e.Node(i).Name, err)
	}
	return ids, nil
}

func countInFile(path, s string) int {
	b, _ := os.ReadFile(path)
	return strings.Count(string(b), s)
}

// refusedCopies sums the copies to node that a repair actor's log at path
// says were refused for want of room.
func refusedCopies(path, node string) int {
	b, _ := os.ReadFile(path)
	re := regexp.MustCompile(`msg="repair: node has no room[^"]*".* node=` + regexp.QuoteMeta(node) + ` .*refused=(\d+)`)
	n := 0
	for _, m := range re.FindAllSubmatch(b, -1) {
		c, _ := strconv.Atoi(string(m[1]))
		n += c
	}
	return n
}
