package chaos

import (
	"context"
	"flag"
	"fmt"
	"slices"
	"strings"
	"time"
)

// KillOne: SIGKILL one random node under load. The node stays dead, so
// the survivors must copy its blocks until every block has R copies again
// (which needs at least R+1 nodes).
var KillOne = Scenario{
	Name:     "kill-one",
	Summary:  "SIGKILL a random node under load; the survivors bring every block back to R copies",
	Defaults: Defaults{Nodes: 4, Size: 16 << 20, Duration: 15 * time.Second},
	Run:      func(ctx context.Context, e *Env) error { return killSome(ctx, e, 1) },
}

// killManyCount is kill-many's --kill.
var killManyCount int

// KillMany: SIGKILL several nodes at once (R-1 of the default R=3) under
// load: nothing is lost, and the survivors heal. The victims include at
// most one of the metadata bucket's three replicas: the metadata survives
// the loss of one, by design, and this scenario is about the blocks.
var KillMany = Scenario{
	Name:     "kill-many",
	Summary:  "SIGKILL R-1 nodes at once under load; nothing lost, every block back to R copies",
	Defaults: Defaults{Nodes: 5, Size: 16 << 20, Duration: 15 * time.Second},
	Flags: func(fs *flag.FlagSet) {
		fs.IntVar(&killManyCount, "kill", 2, "nodes to SIGKILL at once (R-1 of the default R=3)")
	},
	Run: func(ctx context.Context, e *Env) error { return killSome(ctx, e, killManyCount) },
}

func killSome(ctx context.Context, e *Env, n int) error {
	if err := e.Up(ctx); err != nil {
		return err
	}
	if n < 1 || e.Nodes-n < e.R() {
		return fmt.Errorf("killing %d of %d nodes leaves fewer than R=%d to heal on: give more --nodes", n, e.Nodes, e.R())
	}
	if err := e.WriteDataSet(ctx); err != nil {
		return err
	}
	start := time.Now()
	w := e.StartWorkload(ctx, WorkloadOptions{Readers: 2, Writers: 1})
	if !Sleep(ctx, e.Duration/5) {
		return ctx.Err()
	}
	victims := pickVictims(e, n)
	var names []string
	for _, v := range victims {
		names = append(names, e.Node(v).Name)
	}
	e.Note("killed", strings.Join(names, ","))
	killed := time.Now()
	for _, v := range victims {
		if err := e.Kill(v); err != nil {
			return err
		}
	}
	e.WaitHealed(ctx, killed)
	Sleep(ctx, time.Until(start.Add(e.Duration)))
	e.Finish(ctx, FinishOptions{Workload: w, HealSince: killed})
	return nil
}

// pickVictims chooses n live nodes at random, at most one of them a
// holder of a metadata replica (when n > 1 and the holders are known).
func pickVictims(e *Env, n int) []int {
	live := e.LiveNodes()
	holders := e.MetaHolders()
	if n > 1 && holders == nil {
		e.Logf("cannot tell which nodes hold the metadata replicas; killing %d at random", n)
	}
	var out []int
	metaTaken := false
	for _, i := range e.Rand.Perm(len(live)) {
		v := live[i]
		if n > 1 && holders[v] {
			if metaTaken {
				continue
			}
			metaTaken = true
		}
		out = append(out, v)
		if len(out) == n {
			return out
		}
	}
	e.Logf("too few nodes without a metadata replica: killing two replicas stalls the metadata")
	for _, v := range live {
		if len(out) < n && !slices.Contains(out, v) {
			out = append(out, v)
		}
	}
	return out
}
