package chaos

import (
	"context"
	"fmt"
	"time"
)

// Churn: for the duration, nodes join, leave for good and crash and come
// back, one event every few seconds, under load. At most one node is down
// at a time besides those that left, a node leaves only when the mesh is
// healthy (so the blocks of two departed nodes are never at stake at
// once), and a node holding a metadata replica only crashes, never leaves
// (the metadata keeps its three replicas where they were placed). At the
// end the mesh must converge: every block at R copies on the live nodes.
var Churn = Scenario{
	Name:     "churn",
	Summary:  "nodes join, leave and crash repeatedly under load; the mesh converges to R copies of everything",
	Defaults: Defaults{Nodes: 4, Size: 12 << 20, Duration: 40 * time.Second},
	Run:      runChurn,
}

func runChurn(ctx context.Context, e *Env) error {
	if err := e.Up(ctx); err != nil {
		return err
	}
	if e.Nodes < e.R()+1 {
		return fmt.Errorf("churn needs at least R+1 = %d nodes", e.R()+1)
	}
	if err := e.WriteDataSet(ctx); err != nil {
		return err
	}
	w := e.StartWorkload(ctx, WorkloadOptions{Readers: 2, Writers: 1})
	end := time.Now().Add(e.Duration)
	crashed := -1
	var joins, leaves, crashes int
	last := time.Now()
	maxLive := e.Nodes + 1
	for ctx.Err() == nil {
		Sleep(ctx, time.Duration(2000+e.Rand.IntN(2000))*time.Millisecond)
		if time.Now().After(end) || ctx.Err() != nil {
			break
		}
		if crashed >= 0 {
			if err := e.Restart(ctx, crashed); err != nil {
				return err
			}
			crashed, last = -1, time.Now()
			continue
		}
		live := e.LiveNodes()
		holders := e.MetaHolders()
		var leavers []int
		for _, i := range live {
			if !holders[i] {
				leavers = append(leavers, i)
			}
		}
		switch k := e.Rand.IntN(3); {
		case k == 0 && len(live) < maxLive:
			name := fmt.Sprintf("node%d", e.NumNodes()+1)
			if _, err := e.AddNode(ctx, name); err != nil {
				return err
			}
			joins++
			last = time.Now()
		case k == 1 && len(live)-1 > e.R() && len(leavers) > 0:
			if st, err := e.Status(ctx); err != nil || !st.Healthy() {
				e.Logf("no node leaves now: the mesh is not healthy yet (%v%v)", st, err)
				continue
			}
			v := leavers[e.Rand.IntN(len(leavers))]
			e.Logf("%s leaves for good", e.Node(v).Name)
			if err := e.Kill(v); err != nil {
				return err
			}
			leaves++
			last = time.Now()
		case len(live)-1 >= e.R():
			v := live[e.Rand.IntN(len(live))]
			if err := e.Kill(v); err != nil {
				return err
			}
			crashed = v
			crashes++
			last = time.Now()
		}
	}
	if crashed >= 0 {
		if err := e.Restart(ctx, crashed); err != nil {
			return err
		}
		last = time.Now()
	}
	e.Note("joins", joins)
	e.Note("leaves", leaves)
	e.Note("crashes", crashes)
	e.Logf("churn over: %d joined, %d left, %d crashed and came back; %d nodes live", joins, leaves, crashes, len(e.LiveNodes()))
	if joins+leaves+crashes == 0 {
		e.Fail("no churn happened")
	}
	e.Finish(ctx, FinishOptions{Workload: w, HealSince: last})
	return nil
}
