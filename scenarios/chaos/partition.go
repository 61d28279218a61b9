package chaos

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/meshfs/meshfs/scenarios/netns"
)

// Partition: every node in a network namespace of its own; the network is
// cut into a majority and a minority (with a mount of its own, in a client
// namespace on the minority side), left cut for --duration, then healed.
// The minority holds at most one of the metadata's three replicas, so:
// metadata writes through the minority's mount must fail, with an errno,
// and none may succeed while cut (a success there would be a history the
// majority does not share); the majority keeps writing; after the heal
// everything written on either side that was acknowledged is visible
// through every mount, and every block is at R copies.
var Partition = Scenario{
	Name:     "partition",
	Summary:  "cut the network into a majority and a minority with its own mount, then heal: the minority's metadata writes fail cleanly, nothing acknowledged is lost",
	Defaults: Defaults{Nodes: 5, Size: 8 << 20, Duration: 40 * time.Second},
	Run:      runPartition,
}

// minorityOp is one metadata write tried through the minority's mount.
type minorityOp struct {
	path       string
	start, end time.Time
	err        error
}

func runPartition(ctx context.Context, e *Env) error {
	if e.Nodes < 3 {
		return fmt.Errorf("a partition needs a majority and a minority: give at least 3 --nodes")
	}
	if err := e.UpInNet(ctx, nil); err != nil {
		return err
	}
	if err := e.WriteDataSet(ctx); err != nil {
		return err
	}
	// The minority: at most half the nodes less one, holding at most one
	// metadata replica, so that the majority keeps the metadata's quorum.
	holders, err := e.needMetaHolders()
	if err != nil {
		return err
	}
	var majority, minority []*netns.Host
	var minorityNames []string
	metaInMinority := 0
	for i := range e.Nodes {
		j := e.Nodes - 1 - i // from the last node: node1 is the first seed
		small := len(minority) < (e.Nodes-1)/2
		if small && (!holders[j] || metaInMinority == 0) {
			minority = append(minority, e.Host(j))
			minorityNames = append(minorityNames, e.Node(j).Name)
			if holders[j] {
				metaInMinority++
			}
			continue
		}
		majority = append(majority, e.Host(j))
	}
	client, err := e.Net().Add(ctx, "client")
	if err != nil {
		return err
	}
	minMount, unmountMin, err := e.MountOnHost(ctx, client)
	if err != nil {
		return err
	}
	e.Logf("minority: %s and a mount at %s (metadata replicas there: %d); majority: the other %d nodes and the mount at %s",
		strings.Join(minorityNames, ","), minMount, metaInMinority, len(majority), e.Mount())
	e.Note("minority", strings.Join(minorityNames, ","))
	minDir := filepath.Join(minMount, "minority")
	if err := os.Mkdir(minDir, 0o755); err != nil {
		return fmt.Errorf("minority mount: %w", err)
	}

	w := e.StartWorkload(ctx, WorkloadOptions{Readers: 2, Writers: 2})
	if !Sleep(ctx, 2*time.Second) {
		return ctx.Err()
	}
	e.Logf("cutting the network")
	cut := time.Now()
	if err := e.Net().Partition(majority, append(slices.Clone(minority), client)); err != nil {
		return err
	}
	_, _, _, writesBefore, _ := w.Counts()

	// The minority's writer: makes directories and files one after the
	// other while the network is cut.
	var mu sync.Mutex
	var ops []minorityOp
	stopMinority := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for n := 0; ; n++ {
			select {
			case <-stopMinority:
				return
			default:
			}
			p := filepath.Join(minDir, fmt.Sprintf("cut-%03d", n))
			op := minorityOp{path: p, start: time.Now()}
			if n%2 == 0 {
				op.err = os.Mkdir(p, 0o755)
			} else {
				op.err = writeSynced(p, []byte(p), func() {})
			}
			op.end = time.Now()
			mu.Lock()
			ops = append(ops, op)
			mu.Unlock()
		}
	})
	Sleep(ctx, e.Duration)
	close(stopMinority)
	e.Logf("healing the network after %.1fs", time.Since(cut).Seconds())
	e.Net().Heal()
	healed := time.Now()
	_, _, _, writesAfter, _ := w.Counts()
	wg.Wait() // an op under way ends within the mount's 30 s metadata deadline

	// During the cut: nothing may have succeeded on the minority side,
	// and every failure must be an errno, not a hang.
	var failed, okDuring, okLate int
	var longest time.Duration
	var errnos []string
	for _, op := range ops {
		longest = max(longest, op.end.Sub(op.start))
		switch {
		case op.err == nil && op.end.Before(healed):
			okDuring++
			e.Fail("minority: %s succeeded at %.1fs, while cut off from the metadata's majority", op.path, op.end.Sub(cut).Seconds())
		case op.err == nil:
			okLate++ // started before the heal, acknowledged after it
		default:
			failed++
			var errno syscall.Errno
			if !errors.As(op.err, &errno) {
				e.Fail("minority: %s failed without an errno: %v", op.path, op.err)
			} else if !slices.Contains(errnos, errno.Error()) {
				errnos = append(errnos, errno.Error())
			}
		}
	}
	e.Note("minority_writes", len(ops))
	e.Note("minority_failed", failed)
	e.Note("minority_ok_while_cut", okDuring)
	e.Note("minority_longest_s", fmt.Sprintf("%.1f", longest.Seconds()))
	e.Note("majority_writes_while_cut", writesAfter-writesBefore)
	e.Logf("minority: %d metadata writes, %d failed (%s), %d acknowledged after the heal, longest %.1fs; majority: %d files written while cut",
		len(ops), failed, strings.Join(errnos, ", "), okLate, longest.Seconds(), writesAfter-writesBefore)
	if failed == 0 {
		e.Fail("minority: no write failed during a %v cut: the partition did not hold", e.Duration)
	}
	if writesAfter == writesBefore {
		e.Fail("majority: no file written during the cut")
	}

	// After the heal: what the minority was told succeeded is there, seen
	// from the majority's mount, and the majority's files read through the
	// minority's mount.
	Sleep(ctx, 2*time.Second)
	for _, op := range ops {
		if op.err != nil {
			continue
		}
		rel, _ := filepath.Rel(minMount, op.path)
		if _, err := os.Stat(filepath.Join(e.Mount(), rel)); err != nil {
			e.Fail("acknowledged on the minority, missing after the heal: %s: %v", rel, err)
		}
	}
	w.Stop()
	e.VerifyFiles(ctx, minMount)
	if err := unmountMin(); err != nil {
		e.Logf("unmount the minority's mount: %v", err)
	}
	e.Finish(ctx, FinishOptions{HealSince: healed})
	return nil
}
