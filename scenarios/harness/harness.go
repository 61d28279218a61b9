// Package harness starts real meshfs meshes for end-to-end tests and chaos
// scenarios: it builds the meshfs binary, runs 'meshfs up' in a directory,
// reads DIR/up.json, kills and restarts node processes, and mounts the mesh
// a second time. Everything it starts, it stops.
package harness

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/meshfs/meshfs/mesh"
	"github.com/meshfs/meshfs/mesh/blocknet"
)

// Build compiles ./cmd/meshfs of the module rooted at moduleDir into outDir.
func Build(moduleDir, outDir string) (string, error) {
	bin := filepath.Join(outDir, "meshfs")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/meshfs")
	cmd.Dir = moduleDir
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build meshfs: %v\n%s", err, out)
	}
	return bin, nil
}

// ModuleRoot walks up from the working directory to the go.mod.
func ModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory")
		}
		dir = parent
	}
}

// UpState mirrors DIR/up.json.
type UpState struct {
	Mount      string `json:"mount"`
	PID        int    `json:"pid"`
	SecretFile string `json:"secret_file"`
	Replicas   int    `json:"replicas"`
	BlockSize  int    `json:"block_size"`
	Nodes      []Node `json:"nodes"`
}

// Node is one node of up.json.
type Node struct {
	Name   string   `json:"name"`
	PID    int      `json:"pid"`
	Gossip string   `json:"gossip"`
	HTTP   string   `json:"http"`
	NATS   string   `json:"nats"`
	Data   string   `json:"data"`
	Log    string   `json:"log"`
	Args   []string `json:"args"`
	// Command, when set, makes the node's process (from the binary and
	// Args[1:]) instead of exec.Command: for a node in a network
	// namespace (StartMesh).
	Command func(name string, args ...string) *exec.Cmd `json:"-"`
}

// Logf is where the harness reports what it does (testing.T.Logf fits).
type Logf func(format string, args ...any)

// Mesh is a running 'meshfs up'.
type Mesh struct {
	Bin   string
	Dir   string
	State UpState
	logf  Logf

	up      *exec.Cmd
	upDone  chan error
	mu      sync.Mutex
	started []*exec.Cmd // nodes restarted by the harness, and extra mounts
}

// Up runs 'meshfs up DIR --nodes N extra...' and waits until it says ready.
func Up(ctx context.Context, bin, dir string, nodes int, logf Logf, extra ...string) (*Mesh, error) {
	args := append([]string{"up", dir, "--nodes", fmt.Sprint(nodes)}, extra...)
	cmd := exec.Command(bin, args...)
	stderr, err := os.Create(filepath.Join(dir + ".up.log"))
	if err != nil {
		return nil, err
	}
	cmd.Stderr = stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start meshfs up: %w", err)
	}
	m := &Mesh{Bin: bin, Dir: dir, logf: logf, up: cmd, upDone: make(chan error, 1)}
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			line := sc.Text()
			logf("up: %s", line)
			if line == "ready" {
				close(ready)
			}
		}
		io.Copy(io.Discard, stdout)
	}()
	go func() { m.upDone <- cmd.Wait() }()
	select {
	case <-ready:
	case err := <-m.upDone:
		m.upDone <- err
		return nil, fmt.Errorf("meshfs up exited before ready (%v): %s", err, tail(dir+".up.log"))
	case <-ctx.Done():
		m.Stop()
		return nil, fmt.Errorf("meshfs up not ready: %w: %s", ctx.Err(), tail(dir+".up.log"))
	}
	if err := m.reload(); err != nil {
		m.Stop()
		return nil, err
	}
	return m, nil
}

func (m *Mesh) reload() error {
	b, err := os.ReadFile(filepath.Join(m.Dir, "up.json"))
	if err != nil {
		return fmt.Errorf("read up.json: %w", err)
	}
	return json.Unmarshal(b, &m.State)
}

// Mount is the mount point of 'meshfs up'.
func (m *Mesh) Mount() string { return m.State.Mount }

// Kill sends SIGKILL to node i (0-based) and waits until it is gone.
func (m *Mesh) Kill(i int) error {
	pid := m.State.Nodes[i].PID
	m.logf("SIGKILL %s (pid %d)", m.State.Nodes[i].Name, pid)
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		return fmt.Errorf("kill %s: %w", m.State.Nodes[i].Name, err)
	}
	if err := WaitGone(pid, 10*time.Second); err != nil {
		return fmt.Errorf("%s after SIGKILL: %w", m.State.Nodes[i].Name, err)
	}
	return nil
}

// WaitGone waits until process pid has exited (or is a zombie), for at
// most within.
func WaitGone(pid int, within time.Duration) error {
	for deadline := time.Now().Add(within); alive(pid); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			return fmt.Errorf("pid %d still alive after %v", pid, within)
		}
	}
	return nil
}

// Restart starts node i again with the command line recorded in up.json
// and waits for its new addresses (DATA/addr.json).
func (m *Mesh) Restart(ctx context.Context, i int) error {
	n := &m.State.Nodes[i]
	addrFile := filepath.Join(n.Data, "addr.json")
	os.Remove(addrFile)
	args := append([]string(nil), n.Args[1:]...)
	// Its old peers are where they were; join any of them.
	if !hasFlag(args, "--join") {
		for j, o := range m.State.Nodes {
			if j != i {
				args = append(args, "--join", o.Gossip)
			}
		}
	}
	logf, err := os.OpenFile(n.Log, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	command := exec.Command
	if n.Command != nil {
		command = n.Command
	}
	cmd := command(m.Bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("restart %s: %w", n.Name, err)
	}
	m.track(cmd)
	m.logf("restarted %s (pid %d)", n.Name, cmd.Process.Pid)
	for {
		var a struct {
			PID    int    `json:"pid"`
			Gossip string `json:"gossip"`
			HTTP   string `json:"http"`
			NATS   string `json:"nats"`
		}
		if b, err := os.ReadFile(addrFile); err == nil && json.Unmarshal(b, &a) == nil && a.PID == cmd.Process.Pid {
			n.PID, n.Gossip, n.HTTP, n.NATS = a.PID, a.Gossip, a.HTTP, a.NATS
			return m.waitSeen(ctx, i)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("restart %s: not ready: %w: %s", n.Name, ctx.Err(), tail(n.Log))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// AddNode starts a new node named name that joins the mesh, with the same
// flags as the others (data under DIR/name), and waits until the mesh sees
// it. It is recorded in m.State.Nodes (not in up.json).
func (m *Mesh) AddNode(ctx context.Context, name string) error {
	first := m.State.Nodes[0]
	data := filepath.Join(m.Dir, name)
	args := []string{first.Args[0]}
	for i := 1; i < len(first.Args); i++ {
		switch first.Args[i] {
		case "--data":
			args = append(args, "--data", data)
			i++
		case "--name":
			args = append(args, "--name", name)
			i++
		case "--replicas", "--block-size":
			i++ // a joining node adopts the mesh's
		default:
			args = append(args, first.Args[i])
		}
	}
	if err := os.MkdirAll(data, 0o700); err != nil {
		return err
	}
	m.State.Nodes = append(m.State.Nodes, Node{Name: name, Data: data, Log: filepath.Join(data, "node.log"), Args: args})
	return m.Restart(ctx, len(m.State.Nodes)-1)
}

// Client returns a block API client keyed with the mesh's secret.
func (m *Mesh) Client() (*blocknet.Client, error) {
	raw, err := os.ReadFile(m.State.SecretFile)
	if err != nil {
		return nil, fmt.Errorf("read secret: %w", err)
	}
	return blocknet.NewClient(mesh.Secret(strings.TrimSpace(string(raw))).BlockKey(), 10*time.Second), nil
}

// waitSeen waits until every other live node lists node i as alive at its
// current block API address, so clients that ask any of them find it.
func (m *Mesh) waitSeen(ctx context.Context, i int) error {
	c, err := m.Client()
	if err != nil {
		return err
	}
	n := m.State.Nodes[i]
	for {
		seen := true
		for j, o := range m.State.Nodes {
			if j == i || !alive(o.PID) {
				continue
			}
			info, err := c.Cluster(ctx, o.HTTP)
			ok := false
			for _, mem := range info.Members {
				ok = ok || (err == nil && mem.Name == n.Name && mem.State == mesh.StateAlive && mem.HTTP == n.HTTP)
			}
			seen = seen && ok
		}
		if seen {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s restarted, but the mesh does not see it at %s: %w", n.Name, n.HTTP, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// MountAgain mounts the mesh at dir with a separate 'meshfs mount' process
// and returns a function that unmounts it.
func (m *Mesh) MountAgain(ctx context.Context, dir string, extra ...string) (func() error, error) {
	return m.MountWith(ctx, exec.Command, dir, extra...)
}

// MountWith is MountAgain with the mount process made by command (for a
// mount in a network namespace: see netns.Host.Command).
func (m *Mesh) MountWith(ctx context.Context, command func(name string, args ...string) *exec.Cmd, dir string, extra ...string) (func() error, error) {
	_, unmount, err := m.mountWith(ctx, command, dir, extra...)
	return unmount, err
}

// mountWith is MountWith that also returns the mount's process.
func (m *Mesh) mountWith(ctx context.Context, command func(name string, args ...string) *exec.Cmd, dir string, extra ...string) (*exec.Cmd, func() error, error) {
	var joins []string
	for _, n := range m.State.Nodes {
		joins = append(joins, "--join", n.HTTP)
	}
	args := append(append([]string{"mount", dir, "--secret-file", m.State.SecretFile}, joins...), extra...)
	cmd := command(m.Bin, args...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, nil, err
	}
	logPath := dir + ".mount.log"
	lf, err := os.Create(logPath)
	if err != nil {
		return nil, nil, err
	}
	cmd.Stderr = lf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, nil, err
	}
	m.track(cmd)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait(); lf.Close() }()
	line := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		if sc.Scan() {
			line <- sc.Text()
		}
		io.Copy(io.Discard, out)
	}()
	select {
	case l := <-line:
		m.logf("mount: %s", l)
	case err := <-done:
		return nil, nil, fmt.Errorf("meshfs mount exited (%v): %s", err, tail(logPath))
	case <-ctx.Done():
		cmd.Process.Kill()
		return nil, nil, fmt.Errorf("meshfs mount not ready: %w: %s", ctx.Err(), tail(logPath))
	}
	return cmd, func() error {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-done:
			return err
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			syscall.Unmount(dir, syscall.MNT_DETACH)
			return fmt.Errorf("meshfs mount %s did not stop within 20s", dir)
		}
	}, nil
}

func (m *Mesh) track(cmd *exec.Cmd) {
	m.mu.Lock()
	m.started = append(m.started, cmd)
	m.mu.Unlock()
}

// Stop stops 'meshfs up' with SIGTERM (it unmounts and stops its nodes),
// then anything the harness started, and checks nothing is left mounted.
func (m *Mesh) Stop() error {
	var errs []error
	m.mu.Lock()
	started := m.started
	m.started = nil
	m.mu.Unlock()
	for _, c := range started {
		c.Process.Signal(syscall.SIGTERM)
	}
	if m.up != nil && m.up.Process != nil {
		m.up.Process.Signal(syscall.SIGTERM)
		select {
		case <-m.upDone:
		case <-time.After(30 * time.Second):
			errs = append(errs, errors.New("meshfs up did not stop within 30s of SIGTERM"))
			m.up.Process.Kill()
		}
	}
	for _, c := range started {
		for deadline := time.Now().Add(10 * time.Second); alive(c.Process.Pid) && time.Now().Before(deadline); {
			time.Sleep(20 * time.Millisecond)
		}
		if alive(c.Process.Pid) {
			c.Process.Kill()
			errs = append(errs, fmt.Errorf("pid %d (%s) ignored SIGTERM", c.Process.Pid, strings.Join(c.Args, " ")))
		}
		c.Wait()
	}
	for _, n := range m.State.Nodes {
		if alive(n.PID) {
			syscall.Kill(n.PID, syscall.SIGKILL)
			errs = append(errs, fmt.Errorf("%s (pid %d) outlived meshfs up", n.Name, n.PID))
		}
	}
	if mounted(m.State.Mount) {
		syscall.Unmount(m.State.Mount, syscall.MNT_DETACH)
		errs = append(errs, fmt.Errorf("%s still mounted after meshfs up stopped", m.State.Mount))
	}
	return errors.Join(errs...)
}

// Mounted reports whether path is a mount point in /proc/self/mounts.
func mounted(path string) bool {
	b, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 1 && f[1] == path {
			return true
		}
	}
	return false
}

// Mounted is exported for tests that check their own mounts.
func Mounted(path string) bool { return mounted(path) }

func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	return len(f) > 0 && f[0] != "Z"
}

func hasFlag(args []string, flag string) bool {
	for _, a := range args {
		if a == flag || strings.HasPrefix(a, flag+"=") {
			return true
		}
	}
	return false
}

func tail(path string) string {
	b, _ := os.ReadFile(path)
	s := strings.TrimSpace(string(b))
	if len(s) > 2000 {
		s = "…" + s[len(s)-2000:]
	}
	return s
}
