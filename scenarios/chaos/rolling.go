package chaos

import (
	"context"
	"flag"
	"fmt"
	"time"
)

// rollingSignal and rollingDown are rolling-restart's --signal and --down.
var (
	rollingSignal string
	rollingDown   time.Duration
)

// RollingRestart: restart every node in turn under load, each once the
// mesh is healthy again. No read may fail, and the restarts must not cause
// a re-copy of the data: a node that comes back within the repair delay
// (30 s here) still holds its blocks. Blocks written while a node was down
// went to the next node in placement order and move home when it is back,
// so the repair actors do copy; recopied_bytes is what they copied,
// summed over every node's lifetimes (a node's counter, and so 'meshfs
// status', starts again at zero when it restarts). The re-copy is
// measured on the data set, written before the restarts:
// recopied_existing_bytes are the bytes of data-set copies on nodes that
// did not hold them before, and must stay under a quarter of the data set
// (a node's full re-copy would be about R/N of it).
var RollingRestart = Scenario{
	Name:     "rolling-restart",
	Summary:  "restart every node in turn under load; no read error, no re-copy of the data",
	Defaults: Defaults{Nodes: 4, Size: 16 << 20, Duration: 20 * time.Second},
	Flags: func(fs *flag.FlagSet) {
		fs.StringVar(&rollingSignal, "signal", "term", "how each node is stopped: term (SIGTERM, a graceful stop) or kill (SIGKILL)")
		fs.DurationVar(&rollingDown, "down", 4*time.Second, "how long each node stays stopped (long enough for gossip to declare it dead, shorter than the 30 s repair delay)")
	},
	Run: runRollingRestart,
}

func runRollingRestart(ctx context.Context, e *Env) error {
	if rollingSignal != "term" && rollingSignal != "kill" {
		return fmt.Errorf("--signal %q: want term or kill", rollingSignal)
	}
	if err := e.Up(ctx, "--repair-delay", "30s"); err != nil {
		return err
	}
	if err := e.WriteDataSet(ctx); err != nil {
		return err
	}
	_, dataBytes := e.Files.Len()
	dataBlocks := e.Files.Blocks()
	invBefore, err := e.Inventory(ctx)
	if err != nil {
		return err
	}
	// copied sums the repair actors' copied bytes: each node's counter
	// starts at zero when the node does, so it is read just before the
	// node stops and added to what its earlier lifetimes copied.
	var copied, initial int64
	for i := range e.NumNodes() {
		na, err := e.Actors(ctx, i)
		if err != nil {
			return err
		}
		initial += na.Repair.CopiedBytes
	}
	// Copies made and then dropped (surplus once the node is back) count
	// too: the inventories are sampled throughout.
	seen := invBefore
	sampleCtx, stopSampling := context.WithCancel(ctx)
	defer stopSampling()
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for Sleep(sampleCtx, time.Second) {
			if inv, err := e.Inventory(sampleCtx); err == nil {
				seen = seen.Union(inv)
			}
		}
	}()
	start := time.Now()
	w := e.StartWorkload(ctx, WorkloadOptions{Readers: 2, Writers: 1})
	slot := e.Duration / time.Duration(e.NumNodes())
	var last time.Time
	for i := range e.NumNodes() {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		t := time.Now()
		if na, err := e.Actors(ctx, i); err == nil {
			copied += na.Repair.CopiedBytes
		} else {
			e.Logf("repair counters of %s: %v (its copies since the last reading are not counted)", e.Node(i).Name, err)
		}
		var err error
		if rollingSignal == "kill" {
			err = e.Kill(i)
		} else {
			err = e.Terminate(i)
		}
		if err != nil {
			return err
		}
		Sleep(ctx, rollingDown)
		if err := e.Restart(ctx, i); err != nil {
			return err
		}
		last = time.Now()
		e.Logf("%s down for %.1fs", e.Node(i).Name, last.Sub(t).Seconds())
		if !waitStatus(ctx, e, e.HealTimeout, Status.Healthy) {
			e.Fail("not healthy within %v of restarting %s", e.HealTimeout, e.Node(i).Name)
			break
		}
		Sleep(ctx, time.Until(t.Add(slot)))
	}
	e.WaitHealed(ctx, last)
	Sleep(ctx, time.Until(start.Add(e.Duration)))
	w.Stop()
	for i := range e.NumNodes() {
		na, err := e.Actors(ctx, i)
		if err != nil {
			return err
		}
		copied += na.Repair.CopiedBytes
	}
	copied -= initial
	stopSampling()
	<-sampled
	invAfter, err := e.Inventory(ctx)
	if err != nil {
		return err
	}
	recopies, recopied := seen.Union(invAfter).Added(invBefore, dataBlocks)
	e.Note("recopied_bytes", copied)
	e.Note("recopied_existing_bytes", recopied)
	e.Logf("the repair copied %s during the rolling restart (mostly blocks written while their owner was down, moving home); of the %s data set written before, %d copies (%s, %.1f%%) were made again",
		formatBytes(copied), formatBytes(dataBytes), recopies, formatBytes(recopied), 100*float64(recopied)/float64(max(dataBytes, 1)))
	if recopied > dataBytes/4 {
		e.Fail("the restarts re-copied %s of the %s data set, more than a quarter", formatBytes(recopied), formatBytes(dataBytes))
	}
	e.Finish(ctx, FinishOptions{Workload: w, HealSince: last})
	return nil
}
