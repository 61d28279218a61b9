package meta

// Linearizability of the namespace operations, checked with porcupine.
//
// Three clustered servers hold an R3 bucket. Several Stores on their own
// connections, spread over the servers, run random creates, mkdirs, unlinks,
// rmdirs, renames (also over an existing target, and with RENAME_NOREPLACE),
// lookups and stats of directories on a tiny namespace: names a, b, c in the
// root and x, y in any directory below it. Every call is recorded with its
// call and return time and its result, and the history is checked against a
// sequential model of the tree. In one variant a server is shut down during
// the workload. In another ("handoff") pairs of clients on different
// servers take turns on fresh directories: one makes a directory and a file
// in it, the other at once tries to remove the directory (which must fail
// with ENOTEMPTY), then looks up, unlinks the file and removes the
// directory.
//
// Identity: every create and mkdir passes a fresh number as the uid, which
// the inode keeps for life, so a lookup tells which file a name holds (a
// rename over a target is visible) and an operation on a directory can name
// it by that number (a lookup that resolved it may be stale by then).
//
// What is checked against the model, and what is not:
//   - Lookup reports the type and uid of the inode a name holds, both fixed
//     for the inode's life. Its nlink is not compared: Lookup reads the name
//     and then the inode, and a file unlinked between the two reads shows
//     nlink 0, as stat(2) racing unlink(2) does on Linux.
//   - GetAttr of a directory (one read) reports its nlink: 2 + subdirectories,
//     or 0 once it is removed (its inode is kept for open handles).
//   - ReadDir is not atomic by contract (POSIX leaves it unspecified whether
//     readdir shows entries added or removed while it runs), so it is only
//     checked at the end, on a quiescent tree: a walk of the whole tree from
//     the root, part of the history. A white-box pass over the bucket's keys
//     then checks that no entry is orphaned and every nlink is right.
//   - Errors: a syscall.Errno is a definite result (no effect unless the
//     model says so); any other error (timeout, lost connection, "gave up
//     after conflicts") leaves the outcome unknown. Such a call may have
//     taken effect at any time after it was called, or never: it gets a
//     return time after the end of the history and the model accepts any
//     result for it (a mutation that would succeed takes effect; one placed
//     after every other operation is the same as one that never happened).
//     A read-only call with an unknown result says nothing and is dropped.
//   - Where POSIX allows several errors, the model returns the one Store
//     checks first (tree.go): e.g. renaming a directory onto a file inside
//     itself is ENOTDIR, not EINVAL.

import (
	"cmp"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/meshfs/meshfs/mesh/natsd"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

const (
	histSecret = "hist-secret"
	// histWorkers clients run at once, each making histOpsPerWorker calls
	// (plus the lookups that resolve directories).
	histWorkers      = 8
	histOpsPerWorker = 125
	// histWorkload bounds the workload's wall time on a slow machine.
	histWorkload = 60 * time.Second
	// histCheckTimeout bounds porcupine; running out of it fails the test.
	histCheckTimeout = 90 * time.Second
)

// Names in the root, and in any other directory.
var (
	histRootNames = []string{"a", "b", "c"}
	histSubNames  = []string{"x", "y"}
)

func TestHistoryLinearizable(t *testing.T) {
	t.Run("steady", func(t *testing.T) { histRun(t, histSteady) })
	t.Run("server-killed", func(t *testing.T) { histRun(t, histKill) })
	t.Run("handoff", func(t *testing.T) { histRun(t, histHandoff) })
}

type histMode int

const (
	histSteady  histMode = iota // random operations
	histKill                    // random operations; the stream leader's server is shut down a third of the way in
	histHandoff                 // make a directory and a file on one server, remove the directory through another
)

// histHandoffRounds is how many directories each of the histHandoffPairs
// pairs of clients goes through.
const (
	histHandoffPairs  = 3
	histHandoffRounds = 80
)

// ---- the cluster ----

type histCluster struct {
	srvs  []*natsd.Server
	names []string
	down  []atomic.Bool
}

// histStartCluster starts three clustered servers with their own temp dirs
// and waits until they form one meta group (see natsd/CLUSTERING.md).
func histStartCluster(t *testing.T) *histCluster {
	t.Helper()
	c := &histCluster{down: make([]atomic.Bool, 3)}
	for i := range 3 {
		name := fmt.Sprintf("h%d", i)
		s, err := natsd.Start(natsd.Config{Name: name, Dir: t.TempDir(), Secret: histSecret, ClusterName: "hist"})
		if err != nil {
			t.Fatal(err)
		}
		c.srvs = append(c.srvs, s)
		c.names = append(c.names, name)
		t.Cleanup(func() { c.kill(i) })
	}
	// Routes are gossiped: knowing one peer is enough.
	for _, s := range c.srvs[1:] {
		if err := s.SetRoutes([]string{c.srvs[0].ClusterURL()}); err != nil {
			t.Fatal(err)
		}
	}
	t0 := time.Now()
	for {
		ok := true
		for _, s := range c.srvs {
			if l, size, _ := s.MetaGroup(); l == "" || size != 3 {
				ok = false
			}
		}
		if ok {
			break
		}
		if time.Since(t0) > 20*time.Second {
			for i, s := range c.srvs {
				l, size, q := s.MetaGroup()
				t.Logf("%s: leader %q size %d quorum %d", c.names[i], l, size, q)
			}
			t.Fatalf("no meta group of 3 after %v", time.Since(t0))
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("meta group of 3 after %v", time.Since(t0).Round(time.Millisecond))
	return c
}

// kill shuts server i down (once).
func (c *histCluster) kill(i int) {
	if !c.down[i].Swap(true) {
		c.srvs[i].Shutdown()
	}
}

func (c *histCluster) urls() []string {
	var u []string
	for _, s := range c.srvs {
		u = append(u, s.ClientURL())
	}
	return u
}

func (c *histCluster) index(name string) int {
	return slices.Index(c.names, name)
}

// histConnect connects to urls. With want set, it connects again until the
// connection is to that server (a list of several URLs is tried in random
// order).
func histConnect(t *testing.T, urls []string, want, name string) *nats.Conn {
	t.Helper()
	for try := 0; ; try++ {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		nc, err := natsd.Connect(ctx, urls, histSecret, name, nil)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		if want == "" || nc.ConnectedServerName() == want {
			t.Cleanup(nc.Close)
			return nc
		}
		nc.Close()
		if try > 50 {
			t.Fatalf("connection %s never reached server %s", name, want)
		}
	}
}

// histOpen opens the store, trying again for a while: right after the meta
// election, requests can go unanswered or fail ("no suitable peers for
// placement").
func histOpen(t *testing.T, nc *nats.Conn, opts Options) *Store {
	t.Helper()
	t0 := time.Now()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		s, err := Open(ctx, nc, opts)
		cancel()
		if err == nil {
			t.Cleanup(func() { s.Close() })
			return s
		}
		if time.Since(t0) > 45*time.Second {
			t.Fatalf("open bucket %s R%d after %v: %v", opts.Bucket, opts.Replicas, time.Since(t0), err)
		}
		t.Logf("open bucket %s: %v; trying again", opts.Bucket, err)
		time.Sleep(100 * time.Millisecond)
	}
}

// histStreamLeader waits until the bucket's stream has a leader and both
// followers are current, and returns the leader's server name.
func histStreamLeader(t *testing.T, nc *nats.Conn, bucket string) string {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	var last string
	for time.Since(t0) < 20*time.Second {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		st, err := js.Stream(ctx, "KV_"+bucket)
		var si *jetstream.StreamInfo
		if err == nil {
			si, err = st.Info(ctx)
		}
		cancel()
		switch {
		case err != nil:
			last = err.Error()
		case si.Cluster == nil || si.Cluster.Leader == "":
			last = "no leader"
		default:
			cur := 0
			for _, r := range si.Cluster.Replicas {
				if r.Current {
					cur++
				}
			}
			if cur == 2 {
				return si.Cluster.Leader
			}
			last = fmt.Sprintf("%d current followers", cur)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("stream KV_%s not settled after 20s: %s", bucket, last)
	return ""
}

// ---- the workload ----

type hKind uint8

const (
	hLookup  hKind = iota // Lookup(p1, n1)
	hStat                 // GetAttr of directory p1
	hReaddir              // ReadDir(p1) (only in the final, quiescent walk)
	hCreate               // Create(p1, n1) with uid tag
	hMkdir                // Mkdir(p1, n1) with uid tag
	hUnlink               // Unlink(p1, n1)
	hRmdir                // Rmdir(p1, n1)
	hRename               // Rename(p1, n1, p2, n2, flags)
)

var hKindNames = [...]string{"lookup", "stat", "readdir", "create", "mkdir", "unlink", "rmdir", "rename"}

func (k hKind) String() string { return hKindNames[k] }

// hIn is a call. Directories are named by their uid (0 is the root).
type hIn struct {
	kind   hKind
	p1, p2 uint32
	n1, n2 string
	tag    uint32 // create, mkdir: the new inode's uid
	flags  uint32 // rename
}

// hOut is a result. Fields that an operation does not report stay zero.
type hOut struct {
	unknown bool          // no definite result
	errno   syscall.Errno // 0 = success
	dir     bool          // lookup: the name is a directory
	tag     uint32        // lookup: uid found; unlink: uid unlinked; rename: uid replaced; stat: uid
	nlink   uint32        // stat
	list    string        // readdir: "name/" for a directory, "name" for a file, comma-separated
}

// histDir is a directory as a client resolved it (possibly stale).
type histDir struct {
	ino Ino
	tag uint32
}

type histWorker struct {
	id    int
	s     *Store
	ctx   context.Context
	rng   *rand.Rand
	now   func() int64
	tags  *atomic.Uint32
	done  *atomic.Int64
	dirs  []histDir // directories resolved earlier
	ops   []porcupine.Operation
	other []string // errors of unknown outcome, for the log
}

// call runs one operation and records it.
func (w *histWorker) call(in hIn, f func() (hOut, error)) (hOut, bool) {
	start := w.now()
	out, err := f()
	end := w.now()
	w.done.Add(1)
	if err != nil {
		var e syscall.Errno
		if errors.As(err, &e) {
			out = hOut{errno: e}
		} else {
			w.other = append(w.other, err.Error())
			if in.kind <= hReaddir {
				return hOut{unknown: true}, false // read only: says nothing
			}
			out, end = hOut{unknown: true}, -1 // return time set later
		}
	}
	w.ops = append(w.ops, porcupine.Operation{ClientId: w.id, Input: in, Call: start, Output: out, Return: end})
	return out, err == nil
}

func (w *histWorker) lookup(p histDir, name string) (histDir, hOut, bool) {
	var a Attr
	out, ok := w.call(hIn{kind: hLookup, p1: p.tag, n1: name}, func() (hOut, error) {
		var err error
		a, err = w.s.Lookup(w.ctx, p.ino, name)
		return hOut{dir: a.IsDir(), tag: a.Uid}, err
	})
	return histDir{a.Ino, a.Uid}, out, ok
}

func (w *histWorker) remember(d histDir) {
	if len(w.dirs) < 6 {
		w.dirs = append(w.dirs, d)
	} else {
		w.dirs[w.rng.IntN(len(w.dirs))] = d
	}
}

// parent picks the directory an operation works in: mostly the root,
// else a directory found by lookups now or earlier (maybe gone by now).
func (w *histWorker) parent() histDir {
	root := histDir{RootIno, 0}
	switch r := w.rng.IntN(100); {
	case r < 50:
		return root
	case r < 70 && len(w.dirs) > 0:
		return w.dirs[w.rng.IntN(len(w.dirs))]
	}
	d, out, ok := w.lookup(root, histRootNames[w.rng.IntN(len(histRootNames))])
	if !ok || !out.dir {
		return root
	}
	w.remember(d)
	if w.rng.IntN(3) == 0 {
		if d2, out, ok := w.lookup(d, histSubNames[w.rng.IntN(len(histSubNames))]); ok && out.dir {
			w.remember(d2)
			return d2
		}
	}
	return d
}

func (w *histWorker) name(p histDir) string {
	if p.ino == RootIno {
		return histRootNames[w.rng.IntN(len(histRootNames))]
	}
	return histSubNames[w.rng.IntN(len(histSubNames))]
}

func (w *histWorker) stat(d histDir) {
	w.call(hIn{kind: hStat, p1: d.tag}, func() (hOut, error) {
		a, err := w.s.GetAttr(w.ctx, d.ino)
		return hOut{tag: a.Uid, nlink: a.Nlink}, err
	})
}

func (w *histWorker) create(p histDir, n string) {
	tag := w.tags.Add(1)
	w.call(hIn{kind: hCreate, p1: p.tag, n1: n, tag: tag}, func() (hOut, error) {
		_, err := w.s.Create(w.ctx, p.ino, n, 0o644, tag, 0)
		return hOut{}, err
	})
}

func (w *histWorker) mkdir(p histDir, n string) (histDir, bool) {
	tag := w.tags.Add(1)
	var a Attr
	_, ok := w.call(hIn{kind: hMkdir, p1: p.tag, n1: n, tag: tag}, func() (hOut, error) {
		var err error
		a, err = w.s.Mkdir(w.ctx, p.ino, n, 0o755, tag, 0)
		return hOut{}, err
	})
	return histDir{a.Ino, tag}, ok
}

func (w *histWorker) unlink(p histDir, n string) {
	w.call(hIn{kind: hUnlink, p1: p.tag, n1: n}, func() (hOut, error) {
		a, err := w.s.Unlink(w.ctx, p.ino, n)
		return hOut{tag: a.Uid}, err
	})
}

func (w *histWorker) rmdir(p histDir, n string) {
	w.call(hIn{kind: hRmdir, p1: p.tag, n1: n}, func() (hOut, error) {
		return hOut{}, errOf(w.s.Rmdir(w.ctx, p.ino, n))
	})
}

// histHandoffRound: a makes directory name with a file in it; b, on
// another server, at once tries to remove the directory, then looks the
// file up, unlinks it and removes the directory.
func histHandoffRound(a, b *histWorker, name string) {
	root := histDir{RootIno, 0}
	d, ok := a.mkdir(root, name)
	if !ok {
		return
	}
	a.create(d, "x")
	b.rmdir(root, name)
	b.lookup(d, "x")
	b.unlink(d, "x")
	b.rmdir(root, name)
}

func (w *histWorker) step() {
	p := w.parent()
	n := w.name(p)
	switch r := w.rng.IntN(100); {
	case r < 18:
		w.lookup(p, n)
	case r < 24:
		w.stat(p)
	case r < 38:
		w.create(p, n)
	case r < 52:
		w.mkdir(p, n)
	case r < 62:
		w.unlink(p, n)
	case r < 74:
		w.rmdir(p, n)
	default:
		p2 := w.parent()
		n2 := w.name(p2)
		var flags uint32
		if w.rng.IntN(6) == 0 {
			flags = renameNoReplace
		}
		w.call(hIn{kind: hRename, p1: p.tag, n1: n, p2: p2.tag, n2: n2, flags: flags}, func() (hOut, error) {
			rep, ok, err := w.s.Rename(w.ctx, p.ino, n, p2.ino, n2, flags)
			out := hOut{}
			if ok {
				out.tag = rep.Uid
			}
			return out, err
		})
	}
}

func histRun(t *testing.T, mode histMode) {
	kill := mode == histKill
	c := histStartCluster(t)
	urls := c.urls()
	bucket := newBucket() + "_hist"
	// Long enough to outlast the elections that follow a shutdown.
	opts := Options{Bucket: bucket, Replicas: 3, BlockSize: testBlockSize, OpTimeout: 10 * time.Second}
	first := histOpen(t, histConnect(t, urls[2:3], "", "hist-open"), opts)
	victim := c.index(histStreamLeader(t, first.nc, bucket))
	if victim < 0 {
		t.Fatal("stream leader is none of the servers")
	}

	// Four more stores on their own connections, two on the victim (the
	// stream leader) and one on each other server.
	var stores []*Store
	for i := range 4 {
		home := (victim + i) % 3
		u, want := urls[home:home+1], ""
		if kill && home == victim {
			// It goes away: give all three URLs to reconnect elsewhere.
			u, want = urls, c.names[home]
		}
		nc := histConnect(t, u, want, fmt.Sprintf("hist-%d", i))
		stores = append(stores, histOpen(t, nc, opts))
		t.Logf("store %d connected to %s", i, nc.ConnectedServerName())
	}

	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	t0 := time.Now()
	now := func() int64 { return int64(time.Since(t0)) }
	ctx, cancel := context.WithCancel(context.Background()) // no deadline: each call gets OpTimeout
	defer cancel()
	var tags atomic.Uint32
	var done atomic.Int64
	workers := make([]*histWorker, histWorkers)
	for i := range workers {
		workers[i] = &histWorker{
			id: i, s: stores[i%len(stores)], ctx: ctx, now: now, tags: &tags, done: &done,
			rng: rand.New(rand.NewPCG(seed, uint64(i))),
		}
	}

	var killedAt atomic.Int64
	killedAt.Store(-1)
	stopKill := make(chan struct{})
	var kwg sync.WaitGroup
	if kill {
		kwg.Go(func() {
			for done.Load() < histWorkers*histOpsPerWorker/3 {
				select {
				case <-stopKill:
					return
				case <-time.After(5 * time.Millisecond):
				}
			}
			at, n := now(), done.Load()
			c.kill(victim)
			killedAt.Store(now())
			t.Logf("server %s (stream leader) shut down at %v after %d calls; shutdown took %v",
				c.names[victim], time.Duration(at).Round(time.Millisecond), n, time.Duration(killedAt.Load()-at).Round(time.Millisecond))
		})
	}

	deadline := time.Now().Add(histWorkload)
	var wg sync.WaitGroup
	if mode == histHandoff {
		// Pair k makes on store k and removes through store k+1, which is
		// on another server.
		for k := range histHandoffPairs {
			workers[2*k].s, workers[2*k+1].s = stores[k], stores[k+1]
		}
		for k := range histHandoffPairs {
			wg.Go(func() {
				for r := range histHandoffRounds {
					if time.Now().After(deadline) {
						return
					}
					histHandoffRound(workers[2*k], workers[2*k+1], fmt.Sprintf("h%d_%d", k, r))
				}
			})
		}
	} else {
		for _, w := range workers {
			wg.Go(func() {
				for range histOpsPerWorker {
					if time.Now().After(deadline) {
						return
					}
					w.step()
				}
			})
		}
	}
	wg.Wait()
	close(stopKill)
	kwg.Wait()
	workEnd := now()
	t.Logf("workload: %d calls in %v", done.Load(), time.Duration(workEnd).Round(time.Millisecond))

	// The final walk, on a quiescent tree (after a pause in which the
	// replicas catch up: ReadDir may read a follower), is part of the
	// history: it pins down the final state.
	time.Sleep(300 * time.Millisecond)
	walker := &histWorker{id: histWorkers, s: first, ctx: ctx, now: now, tags: &tags, done: &done}
	histWalk(t, walker, histDir{RootIno, 0}, 0)

	var history []porcupine.Operation
	unknown, maxRet := 0, int64(0)
	var other []string
	for _, w := range append(workers, walker) {
		history = append(history, w.ops...)
		other = append(other, w.other...)
	}
	for _, op := range history {
		maxRet = max(maxRet, op.Return)
	}
	afterKill := 0
	for i := range history {
		if history[i].Return < 0 {
			history[i].Return = maxRet + 1 // may take effect any time after its call
			unknown++
		}
		if ka := killedAt.Load(); ka >= 0 && history[i].Call > ka && history[i].Output.(hOut) != (hOut{unknown: true}) {
			afterKill++
		}
	}
	histLogOutcomes(t, history)
	slowest := slices.MaxFunc(history, func(a, b porcupine.Operation) int {
		return cmp.Compare(a.Return-a.Call, b.Return-b.Call)
	})
	if slowest.Output.(hOut).unknown {
		t.Logf("slowest call: %s", histOpString(slowest))
	} else {
		t.Logf("slowest call: %v: %s", time.Duration(slowest.Return-slowest.Call).Round(time.Millisecond), histOpString(slowest))
	}
	if len(other) > 0 {
		t.Logf("%d calls failed with an unknown outcome (%d of them mutations, kept with an open end); e.g. %s",
			len(other), unknown, other[0])
	}
	if kill {
		if killedAt.Load() < 0 {
			t.Fatal("the workload ended before the server was shut down")
		}
		t.Logf("%d calls made after the shutdown completed", afterKill)
		if afterKill == 0 {
			t.Fatal("no call completed after the shutdown")
		}
	}
	histCheck(t, history)
	histCheckKeys(t, first)
}

// histWalk lists every directory from d down and looks up each entry, and
// stats each directory, recording the calls.
func histWalk(t *testing.T, w *histWorker, d histDir, depth int) {
	if depth > 64 {
		t.Fatalf("directory tree deeper than %d: a cycle?", depth)
	}
	w.call(hIn{kind: hStat, p1: d.tag}, func() (hOut, error) {
		a, err := w.s.GetAttr(w.ctx, d.ino)
		return hOut{tag: a.Uid, nlink: a.Nlink}, err
	})
	var ents []DirEntry
	_, ok := w.call(hIn{kind: hReaddir, p1: d.tag}, func() (hOut, error) {
		var err error
		ents, err = w.s.ReadDir(w.ctx, d.ino)
		return hOut{list: histList(ents)}, err
	})
	if !ok {
		t.Fatalf("final walk: readdir of %d failed", d.ino)
	}
	for _, e := range ents {
		sub, out, ok := w.lookup(d, e.Name)
		if ok && out.dir {
			histWalk(t, w, sub, depth+1)
		}
	}
}

func histList(ents []DirEntry) string {
	var parts []string
	for _, e := range ents {
		if e.Mode&syscall.S_IFMT == syscall.S_IFDIR {
			parts = append(parts, e.Name+"/")
		} else {
			parts = append(parts, e.Name)
		}
	}
	return strings.Join(parts, ",")
}

// histLogOutcomes logs how often each kind of call had each result, to show
// what the run covered.
func histLogOutcomes(t *testing.T, history []porcupine.Operation) {
	count := map[string]int{}
	for _, op := range history {
		in, out := op.Input.(hIn), op.Output.(hOut)
		r := "ok"
		switch {
		case out.unknown:
			r = "unknown"
		case out.errno != 0:
			r = histErrnoName(out.errno)
		case in.kind == hRename && out.tag != 0:
			r = "ok-replaced"
		}
		count[in.kind.String()+" "+r]++
	}
	keys := make([]string, 0, len(count))
	for k := range count {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, " %s:%d", k, count[k])
	}
	t.Logf("outcomes:%s", b.String())
}

func histErrnoName(e syscall.Errno) string {
	switch e {
	case syscall.ENOENT:
		return "ENOENT"
	case syscall.EEXIST:
		return "EEXIST"
	case syscall.ENOTEMPTY:
		return "ENOTEMPTY"
	case syscall.ENOTDIR:
		return "ENOTDIR"
	case syscall.EISDIR:
		return "EISDIR"
	case syscall.EINVAL:
		return "EINVAL"
	}
	return fmt.Sprintf("errno%d(%v)", int(e), e)
}

// ---- the model ----

// hNode is one directory entry of the model: name in directory parent (by
// uid) holds the inode with uid tag.
type hNode struct {
	parent uint32
	name   string
	tag    uint32
	dir    bool
}

// hState is the tree: its entries sorted by parent, then name. Values are
// never changed in place (porcupine needs a pure Step).
type hState []hNode

func (s hState) find(parent uint32, name string) int {
	i, ok := slices.BinarySearchFunc(s, hNode{parent: parent, name: name}, hCmp)
	if !ok {
		return -1
	}
	return i
}

func hCmp(a, b hNode) int {
	if a.parent != b.parent {
		if a.parent < b.parent {
			return -1
		}
		return 1
	}
	return strings.Compare(a.name, b.name)
}

// node returns the index of the entry that holds uid tag, or -1.
func (s hState) node(tag uint32) int {
	return slices.IndexFunc(s, func(n hNode) bool { return n.tag == tag })
}

// isDir reports whether uid tag is a live directory.
func (s hState) isDir(tag uint32) bool {
	if tag == 0 {
		return true
	}
	i := s.node(tag)
	return i >= 0 && s[i].dir
}

func (s hState) children(tag uint32) (n, subdirs int) {
	for _, e := range s {
		if e.parent == tag {
			n++
			if e.dir {
				subdirs++
			}
		}
	}
	return n, subdirs
}

// under reports whether directory d is anc or lies below it.
func (s hState) under(d, anc uint32) bool {
	for range len(s) + 1 {
		if d == anc {
			return true
		}
		if d == 0 {
			return false
		}
		i := s.node(d)
		if i < 0 {
			return false
		}
		d = s[i].parent
	}
	panic("model: cycle in the tree")
}

func (s hState) without(idx ...int) hState {
	out := make(hState, 0, len(s))
	for i, e := range s {
		if !slices.Contains(idx, i) {
			out = append(out, e)
		}
	}
	return out
}

func (s hState) with(n hNode) hState {
	i, _ := slices.BinarySearchFunc(s, n, hCmp)
	return slices.Insert(slices.Clone(s), i, n)
}

// histStep is the sequential specification: the result of in on state s
// and the state after it.
func histStep(s hState, in hIn) (hOut, hState) {
	fail := func(e syscall.Errno) (hOut, hState) { return hOut{errno: e}, s }
	switch in.kind {
	case hLookup:
		if !s.isDir(in.p1) {
			return fail(syscall.ENOENT)
		}
		i := s.find(in.p1, in.n1)
		if i < 0 {
			return fail(syscall.ENOENT)
		}
		return hOut{dir: s[i].dir, tag: s[i].tag}, s
	case hStat:
		if !s.isDir(in.p1) {
			// Removed: the inode stays at nlink 0 for handles open on
			// it (nothing here reclaims it). A tag names a directory a
			// lookup saw, so it existed.
			return hOut{tag: in.p1}, s
		}
		_, sub := s.children(in.p1)
		return hOut{tag: in.p1, nlink: 2 + uint32(sub)}, s
	case hReaddir:
		if !s.isDir(in.p1) {
			return fail(syscall.ENOENT)
		}
		var parts []string
		for _, e := range s { // sorted by name within a parent
			if e.parent == in.p1 {
				if e.dir {
					parts = append(parts, e.name+"/")
				} else {
					parts = append(parts, e.name)
				}
			}
		}
		return hOut{list: strings.Join(parts, ",")}, s
	case hCreate, hMkdir:
		if !s.isDir(in.p1) {
			return fail(syscall.ENOENT)
		}
		if s.find(in.p1, in.n1) >= 0 {
			return fail(syscall.EEXIST)
		}
		return hOut{}, s.with(hNode{parent: in.p1, name: in.n1, tag: in.tag, dir: in.kind == hMkdir})
	case hUnlink:
		if !s.isDir(in.p1) {
			return fail(syscall.ENOENT)
		}
		i := s.find(in.p1, in.n1)
		switch {
		case i < 0:
			return fail(syscall.ENOENT)
		case s[i].dir:
			return fail(syscall.EISDIR)
		}
		return hOut{tag: s[i].tag}, s.without(i)
	case hRmdir:
		if !s.isDir(in.p1) {
			return fail(syscall.ENOENT)
		}
		i := s.find(in.p1, in.n1)
		switch {
		case i < 0:
			return fail(syscall.ENOENT)
		case !s[i].dir:
			return fail(syscall.ENOTDIR)
		}
		if n, _ := s.children(s[i].tag); n > 0 {
			return fail(syscall.ENOTEMPTY)
		}
		return hOut{}, s.without(i)
	case hRename:
		if !s.isDir(in.p1) || !s.isDir(in.p2) {
			return fail(syscall.ENOENT)
		}
		i := s.find(in.p1, in.n1)
		if i < 0 {
			return fail(syscall.ENOENT)
		}
		src := s[i]
		j := s.find(in.p2, in.n2)
		var replaced uint32
		if j >= 0 {
			dst := s[j]
			if in.flags&renameNoReplace != 0 {
				return fail(syscall.EEXIST)
			}
			if dst.tag == src.tag {
				return hOut{}, s // the same file (the same name: no hard links here)
			}
			switch {
			case src.dir && !dst.dir:
				return fail(syscall.ENOTDIR)
			case !src.dir && dst.dir:
				return fail(syscall.EISDIR)
			case dst.dir:
				if n, _ := s.children(dst.tag); n > 0 {
					return fail(syscall.ENOTEMPTY)
				}
			}
			replaced = dst.tag
		}
		if src.dir && in.p2 != in.p1 && s.under(in.p2, src.tag) {
			return fail(syscall.EINVAL) // into its own subtree
		}
		next := s.without(i, j)
		src.parent, src.name = in.p2, in.n2
		return hOut{tag: replaced}, next.with(src)
	}
	panic(fmt.Sprintf("model: unknown operation %v", in.kind))
}

func histModel() porcupine.Model {
	return porcupine.Model{
		Init: func() any { return hState(nil) },
		Step: func(state, input, output any) (bool, any) {
			want, next := histStep(state.(hState), input.(hIn))
			got := output.(hOut)
			if got.unknown {
				return true, next
			}
			if got != want {
				return false, state
			}
			return true, next
		},
		Equal: func(a, b any) bool { return slices.Equal(a.(hState), b.(hState)) },
		Hash: func(state any) uint64 {
			h := fnv.New64a()
			var b []byte
			for _, n := range state.(hState) {
				b = binary.LittleEndian.AppendUint32(b[:0], n.parent)
				b = append(b, n.name...)
				b = binary.LittleEndian.AppendUint32(append(b, 0), n.tag)
				if n.dir {
					b = append(b, 1)
				}
				h.Write(b)
			}
			return h.Sum64()
		},
		DescribeOperation: func(input, output any) string { return histDescribe(input.(hIn), output.(hOut)) },
		DescribeState:     func(state any) string { return histDescribeState(state.(hState)) },
	}
}

func histPath(dir uint32, name string) string {
	if dir == 0 {
		return "/" + name
	}
	return "#" + strconv.FormatUint(uint64(dir), 10) + "/" + name
}

func histDescribe(in hIn, out hOut) string {
	var call string
	switch in.kind {
	case hStat, hReaddir:
		call = fmt.Sprintf("%v(#%d)", in.kind, in.p1)
	case hCreate, hMkdir:
		call = fmt.Sprintf("%v(%s, uid %d)", in.kind, histPath(in.p1, in.n1), in.tag)
	case hRename:
		call = fmt.Sprintf("rename(%s, %s", histPath(in.p1, in.n1), histPath(in.p2, in.n2))
		if in.flags&renameNoReplace != 0 {
			call += ", NOREPLACE"
		}
		call += ")"
	default:
		call = fmt.Sprintf("%v(%s)", in.kind, histPath(in.p1, in.n1))
	}
	var res string
	switch {
	case out.unknown:
		res = "?"
	case out.errno != 0:
		res = histErrnoName(out.errno)
	case in.kind == hLookup:
		res = fmt.Sprintf("#%d", out.tag)
		if out.dir {
			res += " dir"
		}
	case in.kind == hStat:
		res = fmt.Sprintf("#%d nlink %d", out.tag, out.nlink)
	case in.kind == hReaddir:
		res = "[" + out.list + "]"
	case in.kind == hUnlink:
		res = fmt.Sprintf("ok, unlinked #%d", out.tag)
	case in.kind == hRename && out.tag != 0:
		res = fmt.Sprintf("ok, replaced #%d", out.tag)
	default:
		res = "ok"
	}
	return call + " -> " + res
}

func histDescribeState(s hState) string {
	var parts []string
	for _, n := range s {
		d := ""
		if n.dir {
			d = "/"
		}
		parts = append(parts, fmt.Sprintf("%s=#%d%s", histPath(n.parent, n.name), n.tag, d))
	}
	return "{" + strings.Join(parts, " ") + "}"
}

// ---- checking ----

// histCheck checks the history with porcupine and fails with an
// explanation if it is not linearizable (or if porcupine runs out of time).
func histCheck(t *testing.T, history []porcupine.Operation) {
	t.Helper()
	model := histModel()
	t0 := time.Now()
	res := porcupine.CheckOperationsTimeout(model, history, histCheckTimeout)
	took := time.Since(t0)
	t.Logf("porcupine checked %d operations in %v: %s", len(history), took.Round(time.Millisecond), res)
	switch res {
	case porcupine.Ok:
		return
	case porcupine.Unknown:
		t.Fatalf("porcupine could not decide within %v whether the %d operations are linearizable", histCheckTimeout, len(history))
	}
	_, info := porcupine.CheckOperationsVerbose(model, history, histCheckTimeout)
	histExplain(t, history, info)
	if f, err := os.CreateTemp("", "meta-history-*.html"); err == nil {
		f.Close()
		if err := porcupine.VisualizePath(model, info, f.Name()); err == nil {
			t.Logf("visualization: %s", f.Name())
		}
	}
	if f, err := os.CreateTemp("", "meta-history-*.txt"); err == nil {
		sorted := slices.Clone(history)
		slices.SortFunc(sorted, func(a, b porcupine.Operation) int { return cmp.Compare(a.Call, b.Call) })
		for _, op := range sorted {
			fmt.Fprintln(f, histOpString(op))
		}
		f.Close()
		t.Logf("history by call time: %s", f.Name())
	}
	t.Errorf("the history of %d operations is not linearizable", len(history))
}

// histExplain logs the end of the longest linearizable prefix that porcupine
// found, the model state it leads to, and the calls that could not follow it.
func histExplain(t *testing.T, history []porcupine.Operation, info porcupine.LinearizationInfo) {
	var best []porcupine.Operation
	for _, part := range info.PartialLinearizationsOperations() {
		for _, lin := range part {
			if len(lin) > len(best) {
				best = lin
			}
		}
	}
	state := hState(nil)
	for _, op := range best {
		_, state = histStep(state, op.Input.(hIn))
	}
	type key struct{ call, ret int64 }
	in := map[key]bool{}
	for _, op := range best {
		in[key{op.Call, op.Return}] = true
	}
	var rest []porcupine.Operation
	minRet := int64(1<<63 - 1)
	for _, op := range history {
		if !in[key{op.Call, op.Return}] {
			rest = append(rest, op)
			minRet = min(minRet, op.Return)
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "longest linearizable prefix: %d of %d operations; its last ones:\n", len(best), len(history))
	for _, op := range best[max(0, len(best)-12):] {
		fmt.Fprintf(&b, "  %s\n", histOpString(op))
	}
	fmt.Fprintf(&b, "state after it: %s\n", histDescribeState(state))
	b.WriteString("none of these (the calls that may come next) fits that state:\n")
	for _, op := range rest {
		if op.Call <= minRet {
			fmt.Fprintf(&b, "  %s (model: %s)\n", histOpString(op), histDescribe(op.Input.(hIn), func() hOut { o, _ := histStep(state, op.Input.(hIn)); return o }()))
		}
	}
	t.Log(b.String())
}

func histOpString(op porcupine.Operation) string {
	return fmt.Sprintf("[%v .. %v] client %d: %s", time.Duration(op.Call), time.Duration(op.Return), op.ClientId,
		histDescribe(op.Input.(hIn), op.Output.(hOut)))
}

// histCheckKeys checks the bucket's keys on the quiescent tree: every entry
// is in a live directory and names a live inode of its type, every
// directory other than the root has exactly one name and the right parent
// pointer and nlink, and every file has as many names as links.
func histCheckKeys(t *testing.T, s *Store) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	inodes := map[Ino]inodeRec{}
	var bad []string
	err := s.scan(ctx, "i.>", func(key string, val []byte, _ uint64) bool {
		var r inodeRec
		if err := json.Unmarshal(val, &r); err != nil {
			bad = append(bad, fmt.Sprintf("%s: %v", key, err))
		}
		inodes[r.Ino] = r
		return true
	})
	if err != nil {
		t.Fatal(err)
	}
	type dent struct {
		parent Ino
		name   string
		rec    direntRec
	}
	var dents []dent
	err = s.scan(ctx, "d.>", func(key string, val []byte, _ uint64) bool {
		parts := strings.SplitN(key, ".", 3)
		p, err := strconv.ParseUint(parts[1], 10, 64)
		if err != nil {
			bad = append(bad, fmt.Sprintf("%s: %v", key, err))
			return true
		}
		name, err := direntName(direntPrefix(Ino(p)), key)
		if err != nil {
			bad = append(bad, err.Error())
			return true
		}
		var d direntRec
		if err := json.Unmarshal(val, &d); err != nil {
			bad = append(bad, fmt.Sprintf("%s: %v", key, err))
			return true
		}
		dents = append(dents, dent{Ino(p), name, d})
		return true
	})
	if err != nil {
		t.Fatal(err)
	}
	names := map[Ino]int{}
	subdirs := map[Ino]uint32{}
	for _, d := range dents {
		where := fmt.Sprintf("entry %q in %d -> %d", d.name, d.parent, d.rec.Ino)
		p, ok := inodes[d.parent]
		switch {
		case !ok:
			bad = append(bad, where+": orphan, its directory is gone")
		case !p.isDir():
			bad = append(bad, where+": its parent is not a directory")
		}
		in, ok := inodes[d.rec.Ino]
		if !ok {
			bad = append(bad, where+": dangling, the inode is gone")
			continue
		}
		if in.Mode&syscall.S_IFMT != d.rec.Mode {
			bad = append(bad, fmt.Sprintf("%s: entry type %o, inode type %o", where, d.rec.Mode, in.Mode&syscall.S_IFMT))
		}
		names[d.rec.Ino]++
		if in.isDir() {
			subdirs[d.parent]++
			if in.Parent != d.parent {
				bad = append(bad, fmt.Sprintf("%s: directory's parent pointer is %d", where, in.Parent))
			}
		}
	}
	for ino, r := range inodes {
		switch {
		case ino == RootIno:
			if r.Nlink != 2+subdirs[ino] {
				bad = append(bad, fmt.Sprintf("root: nlink %d with %d subdirectories", r.Nlink, subdirs[ino]))
			}
		case r.isDir() && r.Nlink == 0:
			// Removed, kept for open handles until reclaimed: no name,
			// and nothing in it.
			if names[ino] != 0 || subdirs[ino] != 0 {
				bad = append(bad, fmt.Sprintf("removed directory %d (uid %d) has %d names and %d subdirectories", ino, r.Uid, names[ino], subdirs[ino]))
			}
		case r.isDir():
			if names[ino] != 1 {
				bad = append(bad, fmt.Sprintf("directory %d (uid %d) has %d names", ino, r.Uid, names[ino]))
			}
			if r.Nlink != 2+subdirs[ino] {
				bad = append(bad, fmt.Sprintf("directory %d (uid %d): nlink %d with %d subdirectories", ino, r.Uid, r.Nlink, subdirs[ino]))
			}
		default:
			if int(r.Nlink) != names[ino] {
				bad = append(bad, fmt.Sprintf("file %d (uid %d): nlink %d with %d names", ino, r.Uid, r.Nlink, names[ino]))
			}
		}
	}
	t.Logf("bucket keys: %d inodes, %d entries", len(inodes), len(dents))
	for i, b := range bad {
		if i == 20 {
			t.Errorf("... and %d more", len(bad)-i)
			break
		}
		t.Errorf("bucket keys: %s", b)
	}
}

// ---- the model alone ----

// The model and checker on hand-made histories: legal ones pass, a stale
// read and a lost rename fail, and an operation of unknown outcome may have
// happened or not.
func TestHistoryModel(t *testing.T) {
	type call struct {
		client     int
		in         hIn
		out        hOut
		start, end int64
	}
	const inf = 1 << 40
	check := func(name string, want bool, calls ...call) {
		t.Helper()
		var h []porcupine.Operation
		for _, c := range calls {
			h = append(h, porcupine.Operation{ClientId: c.client, Input: c.in, Output: c.out, Call: c.start, Return: c.end})
		}
		if got := porcupine.CheckOperations(histModel(), h); got != want {
			t.Errorf("%s: linearizable = %v, want %v", name, got, want)
		}
	}
	mkA := hIn{kind: hMkdir, n1: "a", tag: 1}
	creB := hIn{kind: hCreate, n1: "b", tag: 2}
	lkA := hIn{kind: hLookup, n1: "a"}
	lkB := hIn{kind: hLookup, n1: "b"}
	ok := hOut{}
	check("sequential", true,
		call{0, mkA, ok, 0, 1},
		call{0, hIn{kind: hCreate, p1: 1, n1: "x", tag: 3}, ok, 2, 3},
		call{0, hIn{kind: hStat}, hOut{nlink: 3}, 4, 5},
		call{0, hIn{kind: hRmdir, n1: "a"}, hOut{errno: syscall.ENOTEMPTY}, 6, 7},
		call{0, creB, ok, 8, 9},
		call{0, hIn{kind: hRename, n1: "b", p2: 0, n2: "a"}, hOut{errno: syscall.EISDIR}, 10, 11},
		call{0, hIn{kind: hRename, n1: "a", p2: 1, n2: "y"}, hOut{errno: syscall.EINVAL}, 12, 13},
		call{0, hIn{kind: hUnlink, p1: 1, n1: "x"}, hOut{tag: 3}, 14, 15},
		call{0, hIn{kind: hMkdir, n1: "c", tag: 4}, ok, 16, 17},
		call{0, hIn{kind: hRename, n1: "c", p2: 0, n2: "a"}, hOut{tag: 1}, 18, 19},
		call{0, lkA, hOut{dir: true, tag: 4}, 20, 21},
		call{0, hIn{kind: hStat, p1: 1}, hOut{tag: 1}, 22, 23}, // replaced: kept at nlink 0
		call{0, hIn{kind: hReaddir}, hOut{list: "a/,b"}, 24, 25},
	)
	check("stale read", false,
		call{0, creB, ok, 0, 1},
		call{1, lkB, hOut{errno: syscall.ENOENT}, 2, 3},
	)
	check("concurrent read", true,
		call{0, creB, ok, 0, 10},
		call{1, lkB, hOut{errno: syscall.ENOENT}, 2, 3},
		call{1, lkB, hOut{tag: 2}, 4, 5},
	)
	check("read goes back", false,
		call{0, creB, ok, 0, 10},
		call{1, lkB, hOut{tag: 2}, 2, 3},
		call{1, lkB, hOut{errno: syscall.ENOENT}, 4, 5},
	)
	renBA := hIn{kind: hRename, n1: "b", n2: "c"}
	check("lost rename", false,
		call{0, creB, ok, 0, 1},
		call{0, renBA, ok, 2, 3},
		call{1, lkB, hOut{tag: 2}, 4, 5},
	)
	unknownCreate := call{0, creB, hOut{unknown: true}, 0, inf}
	check("unknown create, seen", true, unknownCreate, call{1, lkB, hOut{tag: 2}, 4, 5})
	check("unknown create, not seen", true, unknownCreate, call{1, lkB, hOut{errno: syscall.ENOENT}, 4, 5})
	check("unknown create, seen then not", false, unknownCreate,
		call{1, lkB, hOut{tag: 2}, 4, 5},
		call{1, lkB, hOut{errno: syscall.ENOENT}, 6, 7},
	)
	check("unknown create, then EEXIST", true, unknownCreate,
		call{1, hIn{kind: hCreate, n1: "b", tag: 5}, hOut{errno: syscall.EEXIST}, 4, 5},
		call{1, lkB, hOut{tag: 2}, 6, 7},
	)
}
