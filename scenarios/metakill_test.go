package scenarios

import (
	"crypto/sha256"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshfs/meshfs/scenarios/harness"
)

// waitMetaReplicas waits until the metadata bucket has want replicas, all
// up to date, and no witness votes any more.
func waitMetaReplicas(t *testing.T, m *harness.Mesh, want int) meshStatus {
	t.Helper()
	t0 := time.Now()
	for {
		st := status(t, m)
		md := st.Metadata
		if md.Replicas == want && md.Current == want && !md.Witness && md.Leader != "" {
			t.Logf("metadata at %d replicas, leader %s, %v after asking", want, md.Leader, time.Since(t0).Round(time.Millisecond))
			return st
		}
		if time.Since(t0) > 60*time.Second {
			t.Fatalf("metadata not at %d current replicas after 60 s: %+v", want, md)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// ackedFile is a file whose creation, write, close and rename all returned
// success: it must survive.
type ackedFile struct {
	path string // relative to the mount
	sum  [32]byte
}

// TestMetadataSurvivesLeaderKill runs creates, writes and renames from two
// mounts, SIGKILLs the node that leads the metadata bucket in the middle,
// and checks that every acknowledged operation is there afterwards, on both
// mounts and on a new one, and that operations went on within seconds.
func TestMetadataSurvivesLeaderKill(t *testing.T) {
	m := startMesh(t, 3)
	st := waitMetaReplicas(t, m, 3)
	leader := st.Metadata.Leader
	victim, err := strconv.Atoi(strings.TrimPrefix(leader, "node"))
	if err != nil {
		t.Fatalf("metadata leader %q is not one of up's nodes", leader)
	}
	mounts := []string{m.Mount(), mountAgain(t, m)}

	var mu sync.Mutex
	var acked []ackedFile
	var failures []string
	var lastOK time.Time
	var stalls []time.Duration // gaps between successes, all workers together
	var slowWrite, slowRename time.Duration
	record := func(f ackedFile) {
		mu.Lock()
		defer mu.Unlock()
		now := time.Now()
		if !lastOK.IsZero() {
			stalls = append(stalls, now.Sub(lastOK))
		}
		lastOK = now
		acked = append(acked, f)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		mnt := mounts[w%2]
		dir := fmt.Sprintf("w%d", w)
		if err := os.Mkdir(filepath.Join(mnt, dir), 0o755); err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				data := make([]byte, 1+rng.IntN(16<<10))
				for i := range data {
					data[i] = byte(rng.Uint32())
				}
				tmp := filepath.Join(dir, fmt.Sprintf("f%d.tmp", n))
				final := filepath.Join(dir, fmt.Sprintf("f%d", n))
				t0 := time.Now()
				err := os.WriteFile(filepath.Join(mnt, tmp), data, 0o644)
				t1 := time.Now()
				if err == nil {
					err = os.Rename(filepath.Join(mnt, tmp), filepath.Join(mnt, final))
				}
				mu.Lock()
				slowWrite, slowRename = max(slowWrite, t1.Sub(t0)), max(slowRename, time.Since(t1))
				mu.Unlock()
				if err != nil {
					mu.Lock()
					failures = append(failures, fmt.Sprintf("%s: %v", final, err))
					mu.Unlock()
					continue
				}
				record(ackedFile{path: final, sum: sha256.Sum256(data)})
			}
		}()
	}
	time.Sleep(3 * time.Second)
	mu.Lock()
	before := len(acked)
	mu.Unlock()
	killedAt := time.Now()
	if err := m.Kill(victim - 1); err != nil {
		t.Fatal(err)
	}
	time.Sleep(10 * time.Second)
	close(stop)
	wg.Wait()

	mu.Lock()
	after := len(acked) - before
	longest := time.Duration(0)
	for _, s := range stalls {
		longest = max(longest, s)
	}
	mu.Unlock()
	t.Logf("killed %s (metadata leader); %d operations acknowledged before, %d in the 10 s after; %d failed; longest gap between acknowledgements %v",
		leader, before, after, len(failures), longest.Round(time.Millisecond))
	t.Logf("slowest create+write+close %v, slowest rename %v", slowWrite.Round(time.Millisecond), slowRename.Round(time.Millisecond))
	for i, f := range failures {
		if i == 5 {
			break
		}
		t.Logf("failed: %s", f)
	}
	if before == 0 || after == 0 {
		t.Fatalf("the workload did not make progress: %d acknowledged before the kill, %d after", before, after)
	}
	// An unclean loss of a leader is noticed by the NATS servers' raft after its
	// election timeout, 4 to 9 s (fixed in nats-server), plus a retry.
	if longest > 15*time.Second {
		t.Errorf("operations stalled for %v after the kill at %v", longest, killedAt.Format(time.TimeOnly))
	}
	st = status(t, m)
	if st.Metadata.Leader == "" || st.Metadata.Leader == leader {
		t.Errorf("after the kill the metadata leader is %q", st.Metadata.Leader)
	}
	checkAcked(t, "first mount", mounts[0], acked)
	checkAcked(t, "second mount", mounts[1], acked)
	checkAcked(t, "new mount", mountAgain(t, m), acked)
}

// checkAcked verifies every acknowledged file, and that no acknowledged
// rename left its temporary name behind.
func checkAcked(t *testing.T, what, mnt string, acked []ackedFile) {
	t.Helper()
	bad := 0
	for _, f := range acked {
		got := fileSum(t, filepath.Join(mnt, f.path))
		if got != f.sum {
			bad++
			if bad <= 5 {
				t.Errorf("%s: %s differs from what was acknowledged", what, f.path)
			}
		}
		if _, err := os.Lstat(filepath.Join(mnt, f.path+".tmp")); err == nil {
			t.Errorf("%s: %s.tmp still there after its rename was acknowledged", what, f.path)
		}
	}
	if bad > 0 {
		t.Fatalf("%s: %d of %d acknowledged files lost or changed", what, bad, len(acked))
	}
	t.Logf("%s: all %d acknowledged files identical", what, len(acked))
}
