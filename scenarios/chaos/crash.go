package chaos

import (
	"context"
	"fmt"
	"syscall"
	"time"
)

// CrashDuringWrite: writers on a second mount write files and fsync them;
// again and again, that mount's process and a node are SIGKILLed at the
// same instant, mid-write. Then the node is restarted and the mesh mounted
// again, and the writers go on. At the end every file whose fsync had
// returned must read back whole, through every mount.
var CrashDuringWrite = Scenario{
	Name:     "crash-during-write",
	Summary:  "SIGKILL a mount and a node while writers fsync; every fsync'd file intact after restart",
	Defaults: Defaults{Nodes: 4, Size: 8 << 20, Duration: 20 * time.Second},
	Run:      runCrashDuringWrite,
}

func runCrashDuringWrite(ctx context.Context, e *Env) error {
	if err := e.Up(ctx); err != nil {
		return err
	}
	if err := e.WriteDataSet(ctx); err != nil {
		return err
	}
	pid, mnt, unmount, err := e.MountProcess(ctx, "")
	if err != nil {
		return err
	}
	// Readers use the mount of 'meshfs up', which lives on; writers use
	// the one that is killed. Their failed writes are expected.
	w := e.StartWorkload(ctx, WorkloadOptions{Readers: 1, Writers: 2, WriteDir: mnt, WriteRate: 4 << 20, Quiet: true})
	end := time.Now().Add(e.Duration)
	crashes := 0
	var last time.Time
	for time.Until(end) > 3*time.Second && ctx.Err() == nil {
		if !Sleep(ctx, time.Duration(1000+e.Rand.IntN(2000))*time.Millisecond) {
			break
		}
		live := e.LiveNodes()
		victim := live[e.Rand.IntN(len(live))]
		_, _, _, writesBefore, _ := w.Counts()
		e.Logf("SIGKILL the mount at %s (pid %d) and %s, with %d files fsync'd so far", mnt, pid, e.Node(victim).Name, writesBefore)
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			return fmt.Errorf("kill the mount: %w", err)
		}
		if err := e.Kill(victim); err != nil {
			return err
		}
		crashes++
		Sleep(ctx, 500*time.Millisecond)
		if err := unmount(); err != nil {
			e.Logf("unmount the killed mount: %v", err)
		}
		if err := e.Restart(ctx, victim); err != nil {
			return err
		}
		if pid, _, unmount, err = e.MountProcess(ctx, mnt); err != nil {
			return err
		}
		last = time.Now()
	}
	e.WaitHealed(ctx, last)
	Sleep(ctx, time.Until(end))
	_, _, _, writes, writeErrors := w.Counts()
	e.Note("crashes", crashes)
	e.Note("fsynced", writes)
	if crashes == 0 || writes == 0 {
		e.Fail("nothing tested: %d crashes, %d files fsync'd", crashes, writes)
	}
	e.Logf("%d crashes; %d files fsync'd, %d writes failed (the mount died under them)", crashes, writes, writeErrors)
	e.Finish(ctx, FinishOptions{Workload: w, HealSince: last, AllowWriteErrors: true})
	return nil
}
