package chaos

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/meshfs/meshfs/mesh/blocknet"
	"github.com/meshfs/meshfs/scenarios/harness"
	"github.com/meshfs/meshfs/scenarios/netns"
)

// Env is one run of one scenario: its configuration, temporary directory,
// mesh, known files, result and what to undo at the end. Its methods are
// safe for concurrent use unless they say otherwise.
type Env struct {
	Config
	Scenario *Scenario
	// Dir is the run's temporary directory; the mesh lives in Dir/mesh.
	Dir string
	// Rand drives the scenario's choices (which node, when); seeded from
	// Config.Seed. Only the scenario's own goroutine may use it.
	Rand *rand.Rand
	// Files is every file whose content the scenario knows.
	Files *FileSet

	start time.Time
	logw  io.Writer

	// meshMu guards mesh.State, which Kill, Restart and AddNode change.
	meshMu sync.Mutex
	mesh   *harness.Mesh
	client *blocknet.Client
	// net and hosts: the network of UpInNet, and node i's namespace.
	net       *netns.Net
	hosts     []*netns.Host
	netPrefix string // names its namespaces, for the cleanup's check

	mu     sync.Mutex
	result Result // result.Heal < 0 until the heal is recorded
	// healGaveUp: WaitHealed failed the run; Finish does not wait again.
	healGaveUp bool
	undo       []undo
	mounts     int
	finished   bool
}

type undo struct {
	what string
	fn   func() error
}

// Run runs scenario s with cfg, logging to logw, and returns its result
// once everything it started is stopped and removed. Cancelling ctx
// (Ctrl-C) stops the scenario, cleans up and fails the result.
func Run(ctx context.Context, s *Scenario, cfg Config, logw io.Writer) Result {
	e := &Env{Config: cfg, Scenario: s, start: time.Now(), logw: logw,
		Rand: rand.New(rand.NewPCG(cfg.Seed, 0x6368616f73)), Files: &FileSet{}}
	e.result = Result{Scenario: s.Name, Seed: cfg.Seed, Nodes: cfg.Nodes, Heal: -1}
	dir, err := os.MkdirTemp(cfg.TempDir, "meshfs-chaos-"+s.Name+"-")
	if err != nil {
		e.Fail("create a temporary directory: %v", err)
		e.result.Seconds = time.Since(e.start).Seconds()
		return e.result
	}
	e.Dir = dir
	e.Logf("scenario %s: seed %d, %d nodes, data set %s, chaos for %v, in %s", s.Name, cfg.Seed, cfg.Nodes, formatBytes(cfg.Size), cfg.Duration, dir)

	done := make(chan struct{})
	go func() {
		defer close(done)
		defer func() {
			if p := recover(); p != nil {
				e.Fail("panic: %v\n%s", p, debug.Stack())
			}
		}()
		if err := e.resolveMeshfs(ctx); err != nil {
			e.Fail("%v", err)
			return
		}
		err := s.Run(ctx, e)
		e.mu.Lock()
		finished := e.finished
		e.mu.Unlock()
		switch {
		case err != nil && ctx.Err() != nil:
			e.Logf("the scenario stopped: %v", err)
		case err != nil:
			e.Fail("%v", err)
		case !finished && ctx.Err() == nil:
			e.Fail("the scenario returned without verifying (no Finish)")
		}
	}()
	select {
	case <-done:
	case <-ctx.Done():
		e.Logf("interrupted: stopping the scenario")
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			e.Logf("the scenario did not stop within 20s of the interrupt; cleaning up under it")
		}
	}
	if ctx.Err() != nil {
		e.Fail("interrupted")
		e.mu.Lock()
		e.result.Interrupted = true
		e.mu.Unlock()
	}
	e.mu.Lock()
	failed := !e.result.Pass() && !e.result.Interrupted
	e.mu.Unlock()
	if failed {
		e.showLogs()
	}
	e.cleanup()
	e.mu.Lock()
	defer e.mu.Unlock()
	e.result.Seconds = time.Since(e.start).Seconds()
	return e.result
}

// Logf prints a progress line, stamped with the time since the start.
func (e *Env) Logf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	fmt.Fprintf(e.logw, "[%6.1fs] %s\n", time.Since(e.start).Seconds(), msg)
}

// Fail records a failure: the scenario exits non-zero.
func (e *Env) Fail(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	e.Logf("FAIL: %s", msg)
	e.mu.Lock()
	e.result.Failures = append(e.result.Failures, msg)
	e.mu.Unlock()
}

// Note adds key=value to the summary line (after the standard fields).
func (e *Env) Note(key string, value any) {
	e.mu.Lock()
	defer e.mu.Unlock()
	v := fmt.Sprint(value)
	for i, kv := range e.result.Extra {
		if kv[0] == key {
			e.result.Extra[i][1] = v
			return
		}
	}
	e.result.Extra = append(e.result.Extra, [2]string{key, v})
}

// Defer registers fn to run at cleanup, after the scenario, in reverse
// order of registration; what names it in a failure.
func (e *Env) Defer(what string, fn func() error) {
	e.mu.Lock()
	e.undo = append(e.undo, undo{what, fn})
	e.mu.Unlock()
}

// Sleep waits d or until ctx is done, and reports whether it waited d.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// resolveMeshfs finds or builds the meshfs binary (Config.Meshfs).
func (e *Env) resolveMeshfs(ctx context.Context) error {
	if e.Meshfs != "" {
		abs, err := filepath.Abs(e.Meshfs)
		if err != nil {
			return err
		}
		if _, err := os.Stat(abs); err != nil {
			return fmt.Errorf("meshfs binary: %w", err)
		}
		e.Meshfs = abs
		return nil
	}
	bin, err := FindOrBuildMeshfs(ctx, e.Dir)
	if err != nil {
		return err
	}
	e.Logf("meshfs: %s", bin)
	e.Meshfs = bin
	return nil
}

// FindOrBuildMeshfs builds ./cmd/meshfs into dir when the working
// directory is inside the meshfs module, else returns meshfs from $PATH.
func FindOrBuildMeshfs(ctx context.Context, dir string) (string, error) {
	if root, err := harness.ModuleRoot(); err == nil {
		if mod, err := os.ReadFile(filepath.Join(root, "go.mod")); err == nil && strings.Contains(string(mod), "module github.com/meshfs/meshfs\n") {
			return harness.Build(root, dir)
		}
	}
	bin, err := exec.LookPath("meshfs")
	if err != nil {
		return "", errors.New("no meshfs: run inside the meshfs module (to build it), give --meshfs, or put meshfs on $PATH")
	}
	return filepath.Abs(bin)
}

// Up starts the mesh: 'meshfs up DIR/mesh --nodes N' with the run's block
// size and replicas, and nodeFlags (the scenario's) then Config.NodeFlags
// given to every node after a short repair delay for CI. Nothing in the
// mesh directory may be mounted over except data dirs made beforehand. It
// returns once the metadata has all its replicas, so the chaos never
// takes its only one.
func (e *Env) Up(ctx context.Context, nodeFlags ...string) error {
	return e.startMesh(ctx, func(ctx context.Context, logf harness.Logf, meshFlags, nodeFlags []string) (*harness.Mesh, error) {
		args := append(append(meshFlags, "--"), nodeFlags...)
		return harness.Up(ctx, e.Meshfs, e.MeshDir(), e.Nodes, logf, args...)
	}, nodeFlags...)
}

// startMesh starts the mesh with up, given the flags of a new mesh
// (--block-size, --replicas) and those of every node, and waits for its
// metadata (see Up).
func (e *Env) startMesh(ctx context.Context, up func(ctx context.Context, logf harness.Logf, meshFlags, nodeFlags []string) (*harness.Mesh, error), nodeFlags ...string) error {
	meshFlags := []string{"--block-size", fmt.Sprint(e.BlockSize)}
	if e.Replicas > 0 {
		meshFlags = append(meshFlags, "--replicas", fmt.Sprint(e.Replicas))
	}
	nodeFlags = append(append([]string{"--repair-delay", "5s", "--repair-interval", "2s"}, nodeFlags...), e.NodeFlags...)
	logf := func(string, ...any) {}
	if e.Verbose {
		logf = func(format string, a ...any) { e.Logf("harness: "+format, a...) }
	}
	uctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	t := time.Now()
	m, err := up(uctx, logf, meshFlags, nodeFlags)
	if err != nil {
		return fmt.Errorf("meshfs up: %w", err)
	}
	e.meshMu.Lock()
	e.mesh = m
	e.meshMu.Unlock()
	e.Defer("stop the mesh", m.Stop)
	c, err := m.Client()
	if err != nil {
		return err
	}
	e.client = c
	e.Logf("mesh up in %.1fs: %d nodes, R=%d, %s blocks, mounted at %s", time.Since(t).Seconds(), len(m.State.Nodes), m.State.Replicas, formatBytes(int64(m.State.BlockSize)), m.Mount())
	return e.waitMetadata(ctx)
}

// UpInNet is Up with every node in a network namespace of its own,
// joined by a userspace router (scenarios/netns) that the scenario can
// cut, delay and make lossy (Net, Host); the mount of Mount stays in this
// process's namespace, which the router connects to the first group of
// any partition. zones, if not nil, gives each node's --zone.
func (e *Env) UpInNet(ctx context.Context, zones []string, nodeFlags ...string) error {
	if err := netns.Available(); err != nil {
		return fmt.Errorf("this scenario puts nodes in network namespaces: %w", err)
	}
	// Not from e.Rand: the prefix names the system's namespaces, so two
	// runs of one seed must not share it (and the scenario's draws must
	// not depend on it).
	e.netPrefix = fmt.Sprintf("mfc%04x", rand.IntN(1<<16))
	n, err := netns.New(ctx, e.netPrefix, slog.New(slog.NewTextHandler(e.logw, &slog.HandlerOptions{Level: slog.LevelWarn})), netns.Seed(e.Seed))
	if err != nil {
		return err
	}
	// Registered before the mesh's stop, so it runs after it: no process
	// may be left in a namespace that is removed.
	e.Defer("remove the network namespaces", n.Close)
	e.net = n
	specs := make([]harness.NodeSpec, e.Nodes)
	for i := range specs {
		h, err := n.Add(ctx, fmt.Sprintf("node%d", i+1))
		if err != nil {
			return err
		}
		e.hosts = append(e.hosts, h)
		specs[i] = harness.NodeSpec{Name: h.Name, IP: h.IP().String(), Command: h.Command}
		if zones != nil {
			specs[i].Zone = zones[i]
		}
	}
	e.Logf("network: nodes in namespaces %s-node1… on %s, this process at %s", e.netPrefix, n.Subnet(), n.RootIP())
	return e.startMesh(ctx, func(ctx context.Context, logf harness.Logf, meshFlags, nodeFlags []string) (*harness.Mesh, error) {
		return harness.StartMesh(ctx, e.Meshfs, e.MeshDir(), specs, logf, append(meshFlags, nodeFlags...)...)
	}, nodeFlags...)
}

// Net is the network of a mesh started with UpInNet (nil otherwise).
func (e *Env) Net() *netns.Net { return e.net }

// Host is node i's network namespace (UpInNet).
func (e *Env) Host(i int) *netns.Host { return e.hosts[i] }

// MeshDir is the directory of 'meshfs up' (the nodes' data dirs are
// MeshDir/node1 …).
func (e *Env) MeshDir() string { return filepath.Join(e.Dir, "mesh") }

// Mount is the mount point of 'meshfs up'.
func (e *Env) Mount() string { return e.mesh.Mount() }

// R is the mesh's replication factor.
func (e *Env) R() int { return e.mesh.State.Replicas }

// BlockBytes is the mesh's block size.
func (e *Env) BlockBytes() int { return e.mesh.State.BlockSize }

// Client talks to the nodes' block API with the mesh's secret.
func (e *Env) Client() *blocknet.Client { return e.client }

// Node is a copy of node i's current record.
func (e *Env) Node(i int) harness.Node {
	e.meshMu.Lock()
	defer e.meshMu.Unlock()
	return e.mesh.State.Nodes[i]
}

// NumNodes is the number of nodes ever started (dead ones included).
func (e *Env) NumNodes() int {
	e.meshMu.Lock()
	defer e.meshMu.Unlock()
	return len(e.mesh.State.Nodes)
}

// Alive reports whether node i's process runs.
func (e *Env) Alive(i int) bool {
	e.meshMu.Lock()
	defer e.meshMu.Unlock()
	return e.mesh.NodeAlive(i)
}

// LiveNodes lists the indexes of the nodes whose process runs.
func (e *Env) LiveNodes() []int {
	e.meshMu.Lock()
	defer e.meshMu.Unlock()
	var live []int
	for i := range e.mesh.State.Nodes {
		if e.mesh.NodeAlive(i) {
			live = append(live, i)
		}
	}
	return live
}

// Kill sends SIGKILL to node i.
func (e *Env) Kill(i int) error {
	e.meshMu.Lock()
	defer e.meshMu.Unlock()
	e.Logf("SIGKILL %s (pid %d)", e.mesh.State.Nodes[i].Name, e.mesh.State.Nodes[i].PID)
	return e.mesh.Kill(i)
}

// Terminate stops node i with SIGTERM (SIGKILL after 30 s).
func (e *Env) Terminate(i int) error {
	e.meshMu.Lock()
	defer e.meshMu.Unlock()
	e.Logf("SIGTERM %s (pid %d)", e.mesh.State.Nodes[i].Name, e.mesh.State.Nodes[i].PID)
	return e.mesh.Terminate(i, 30*time.Second)
}

// Restart starts node i again with the same data dir and flags and waits
// until the live nodes see it.
func (e *Env) Restart(ctx context.Context, i int) error {
	e.meshMu.Lock()
	defer e.meshMu.Unlock()
	rctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	t := time.Now()
	if err := e.mesh.Restart(rctx, i); err != nil {
		return err
	}
	e.Logf("restarted %s (pid %d) in %.1fs", e.mesh.State.Nodes[i].Name, e.mesh.State.Nodes[i].PID, time.Since(t).Seconds())
	return nil
}

// AddNode starts a new node that joins the mesh and returns its index.
func (e *Env) AddNode(ctx context.Context, name string) (int, error) {
	e.meshMu.Lock()
	defer e.meshMu.Unlock()
	rctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	t := time.Now()
	if err := e.mesh.AddNode(rctx, name); err != nil {
		return 0, err
	}
	i := len(e.mesh.State.Nodes) - 1
	e.Logf("added %s (pid %d) in %.1fs", name, e.mesh.State.Nodes[i].PID, time.Since(t).Seconds())
	return i, nil
}

// SetNodeArgs replaces the command line node i is restarted with.
func (e *Env) SetNodeArgs(i int, args []string) {
	e.meshMu.Lock()
	defer e.meshMu.Unlock()
	e.mesh.State.Nodes[i].Args = args
}

// MountAgain mounts the mesh at a new directory with a separate 'meshfs
// mount' process, unmounted at cleanup (or by calling unmount).
func (e *Env) MountAgain(ctx context.Context) (dir string, unmount func() error, err error) {
	_, dir, unmount, err = e.MountProcess(ctx, "")
	return dir, unmount, err
}

// MountProcess is MountAgain at dir ("" for a new one) that also returns
// the mount process's pid. unmount is safe to call more than once, also
// after the process was killed.
func (e *Env) MountProcess(ctx context.Context, dir string) (pid int, mnt string, unmount func() error, err error) {
	return e.mountProcess(ctx, exec.Command, dir)
}

// MountOnHost is MountAgain with the mount process in host's network
// namespace (its mount point is visible to all, as any other's).
func (e *Env) MountOnHost(ctx context.Context, h *netns.Host) (dir string, unmount func() error, err error) {
	_, dir, unmount, err = e.mountProcess(ctx, h.Command, "")
	return dir, unmount, err
}

func (e *Env) mountProcess(ctx context.Context, command func(name string, args ...string) *exec.Cmd, dir string) (pid int, mnt string, unmount func() error, err error) {
	if dir == "" {
		e.mu.Lock()
		e.mounts++
		dir = filepath.Join(e.Dir, fmt.Sprintf("mnt%d", e.mounts+1))
		e.mu.Unlock()
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return 0, "", nil, err
	}
	mctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	e.meshMu.Lock()
	pid, stop, err := e.mesh.MountProcessWith(mctx, command, dir)
	e.meshMu.Unlock()
	if err != nil {
		return 0, "", nil, fmt.Errorf("mount again at %s: %w", dir, err)
	}
	down := func() error {
		err := stop()
		var ee *exec.ExitError
		if errors.As(err, &ee) && ee.Sys().(syscall.WaitStatus).Signal() == syscall.SIGKILL {
			// Killed (by the scenario): the kernel keeps the dead
			// mount until it is detached.
			err = nil
			if harness.Mounted(dir) {
				err = detach(dir)
			}
		}
		return err
	}
	var once sync.Once
	var uerr error
	unmount = func() error {
		once.Do(func() { uerr = down() })
		return uerr
	}
	// The error of an unmount the scenario did is the scenario's to
	// report; that of one left to the cleanup is reported here.
	e.Defer("unmount "+dir, func() (err error) {
		once.Do(func() { err = down() })
		return err
	})
	return pid, dir, unmount, nil
}

// MetaHolders tells which nodes hold a replica of the metadata bucket (a
// KV stream directory in their NATS store), or nil when none is found.
func (e *Env) MetaHolders() map[int]bool {
	holders := map[int]bool{}
	for i := range e.NumNodes() {
		n := e.Node(i)
		if m, _ := filepath.Glob(filepath.Join(n.Data, "nats", "jetstream", "*", "streams", "KV_*")); len(m) > 0 {
			holders[i] = true
		}
	}
	if len(holders) == 0 {
		return nil
	}
	return holders
}

// keepLog copies node i's log from its data dir, data, beside the run's
// other logs (for --keep and the failure report): before a data dir on a
// file system of the scenario's own (a tmpfs, lazyfs) is unmounted.
func (e *Env) keepLog(i int, data string) {
	if b, err := os.ReadFile(filepath.Join(data, "node.log")); err == nil {
		os.WriteFile(filepath.Join(e.Dir, fmt.Sprintf("node%d.log", i+1)), b, 0o600)
	}
}

// needMetaHolders is MetaHolders for a scenario that chooses nodes by it
// and cannot go on without knowing.
func (e *Env) needMetaHolders() (map[int]bool, error) {
	if h := e.MetaHolders(); h != nil {
		return h, nil
	}
	return nil, errors.New("cannot tell which nodes hold a metadata replica: no node's NATS store has the KV stream")
}

// showLogs prints the last lines of the mesh's logs after a failure.
func (e *Env) showLogs() {
	if e.Dir == "" {
		return
	}
	logs, _ := filepath.Glob(filepath.Join(e.MeshDir(), "node*", "node.log"))
	more, _ := filepath.Glob(filepath.Join(e.Dir, "*.log"))
	for _, f := range append(more, logs...) {
		b, err := os.ReadFile(f)
		if err != nil || len(b) == 0 {
			continue
		}
		lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
		lines = lines[max(0, len(lines)-12):]
		fmt.Fprintf(e.logw, "== last lines of %s\n%s\n", f, strings.Join(lines, "\n"))
	}
}
