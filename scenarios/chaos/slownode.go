package chaos

import (
	"context"
	"flag"
	"fmt"
	"path/filepath"
	"time"

	"github.com/meshfs/meshfs/scenarios/netns"
)

var slowNodeShape netns.Shape

// SlowNode: every node in a network namespace of its own; one node's link
// gets delay and loss (--delay each way, --loss). Clients must route
// around it (hedged reads, hedged writes, the slow node asked last), so
// that reading the data set through a fresh mount, and writing fsync'd
// files, each run at no less than half the speed they had before, measured
// the same way in the same run.
//
// The slow node holds no metadata replica: a slow raft leader slows every
// metadata operation, and nothing moves leadership off a slow node; that
// is left out of this scenario, and said in its summary line.
var SlowNode = Scenario{
	Name:     "slow-node",
	Summary:  "add delay and loss to one node's link: reads and writes route around it, throughput within 2x of healthy",
	Defaults: Defaults{Nodes: 4, Size: 40 << 20, Duration: 10 * time.Second},
	Flags: func(fs *flag.FlagSet) {
		fs.DurationVar(&slowNodeShape.Delay, "delay", 100*time.Millisecond, "delay added to each packet to and from the slow node (a round trip gains twice this)")
		fs.Float64Var(&slowNodeShape.Loss, "loss", 0.02, "fraction of the slow node's packets dropped, each way")
	},
	Run: runSlowNode,
}

// throughput is one measurement: MiB/s reading the data set through a
// fresh mount, and writing fsync'd files.
type throughput struct{ read, write float64 }

func runSlowNode(ctx context.Context, e *Env) error {
	if err := e.UpInNet(ctx, nil); err != nil {
		return err
	}
	if err := e.WriteDataSet(ctx); err != nil {
		return err
	}
	holders, err := e.needMetaHolders()
	if err != nil {
		return err
	}
	slow := -1
	for i := range e.Nodes {
		if !holders[i] {
			slow = i
		}
	}
	if slow < 0 {
		return fmt.Errorf("every node holds a metadata replica: give more --nodes than 3")
	}
	set := e.Files.All() // both measurements use the data set's files
	healthy, err := measureThroughput(ctx, e, set, "healthy")
	if err != nil {
		return err
	}
	e.Logf("slowing %s: %v each way, %.0f%% loss", e.Node(slow).Name, slowNodeShape.Delay, 100*slowNodeShape.Loss)
	if err := e.Net().ShapeHost(e.Host(slow), slowNodeShape); err != nil {
		return err
	}
	w := e.StartWorkload(ctx, WorkloadOptions{Readers: 1, Writers: 1})
	Sleep(ctx, e.Duration)
	w.Stop()
	shaped, err := measureThroughput(ctx, e, set, "slow")
	if err != nil {
		return err
	}
	rr, wr := shaped.read/healthy.read, shaped.write/healthy.write
	e.Logf("throughput with %s slow: read %.1f MiB/s (healthy %.1f, ratio %.2f), write %.1f MiB/s (healthy %.1f, ratio %.2f)",
		e.Node(slow).Name, shaped.read, healthy.read, rr, shaped.write, healthy.write, wr)
	e.Note("slow", e.Node(slow).Name)
	e.Note("read_mibps", fmt.Sprintf("%.1f/%.1f", shaped.read, healthy.read))
	e.Note("write_mibps", fmt.Sprintf("%.1f/%.1f", shaped.write, healthy.write))
	e.Note("read_ratio", fmt.Sprintf("%.2f", rr))
	e.Note("write_ratio", fmt.Sprintf("%.2f", wr))
	e.Note("slow_holds_metadata", holders[slow])
	if rr < 0.5 {
		e.Fail("reads with one slow node ran at %.2f of the healthy speed (want at least 0.5)", rr)
	}
	if wr < 0.5 {
		e.Fail("writes with one slow node ran at %.2f of the healthy speed (want at least 0.5)", wr)
	}
	// The slow node keeps its copies: it is slow, not dead. Its link is
	// made healthy again for the final checks, which ask every node.
	if err := e.Net().ShapeHost(e.Host(slow), netns.Shape{}); err != nil {
		return err
	}
	e.Finish(ctx, FinishOptions{Workload: w, HealSince: time.Now()})
	return nil
}

// measureThroughput writes fsync'd files of the sizes of files, then reads
// files, through a fresh mount, and returns both speeds.
func measureThroughput(ctx context.Context, e *Env, files []File, label string) (throughput, error) {
	var tp throughput
	// A fresh mount, made now: it connects to the metadata server that
	// answers first, and its reads come from the nodes, not a cache.
	dir, unmount, err := e.MountAgain(ctx)
	if err != nil {
		return tp, err
	}
	defer unmount()
	t := time.Now()
	var written int64
	for i, f := range files {
		rel := filepath.Join("probe-"+label, fmt.Sprintf("f%04d", i))
		data := content(e.Seed^0x5709, uint64(i), f.Size)
		if err := writeSynced(filepath.Join(dir, rel), data, func() { e.Files.Add(describe(rel, data, e.BlockBytes())) }); err != nil {
			return tp, fmt.Errorf("%s write: %w", label, err)
		}
		written += f.Size
	}
	tp.write = float64(written) / (1 << 20) / time.Since(t).Seconds()
	t = time.Now()
	var read int64
	for _, f := range files {
		n, sum, err := readSum(filepath.Join(dir, f.Path))
		if err != nil {
			return tp, fmt.Errorf("%s read: %w", label, err)
		}
		if n != f.Size || sum != f.Sum {
			e.Fail("%s read of %s: %d bytes with the wrong content", label, f.Path, n)
		}
		read += n
	}
	tp.read = float64(read) / (1 << 20) / time.Since(t).Seconds()
	e.Logf("%s: through a fresh mount, wrote %s in fsync'd files at %.1f MiB/s, read %s at %.1f MiB/s", label, formatBytes(written), tp.write, formatBytes(read), tp.read)
	return tp, nil
}
