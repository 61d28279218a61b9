package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/meshfs/meshfs/mesh/blocknet"
)

// upState is DIR/up.json: what 'meshfs up' started, for scripts and later
// commands. It is written before up reports ready and removed on a clean stop.
type upState struct {
	Mount      string   `json:"mount"`
	PID        int      `json:"pid"` // the 'meshfs up' process, which serves the mount
	SecretFile string   `json:"secret_file"`
	Replicas   int      `json:"replicas"`
	BlockSize  int      `json:"block_size"`
	Nodes      []upNode `json:"nodes"`
}

type upNode struct {
	Name   string   `json:"name"`
	PID    int      `json:"pid"`
	Gossip string   `json:"gossip"`
	HTTP   string   `json:"http"`
	NATS   string   `json:"nats"`
	Data   string   `json:"data"`
	Log    string   `json:"log"`
	Args   []string `json:"args"` // the command line that (re)starts this node
}

func runUp(args []string) error {
	fs := newFlags("up", "meshfs up DIR [--nodes N] [flags] [-- NODE FLAGS...]\n\nFlags after -- are given to every 'meshfs node' (for example -- --repair-delay 5s).")
	var nodeFlags []string
	for i, a := range args {
		if a == "--" {
			args, nodeFlags = args[:i], args[i+1:]
			break
		}
	}
	nodes := fs.Int("nodes", 3, "number of data nodes to start")
	replicas := fs.Int("replicas", 0, "copies of each block for a new mesh (default 3, at most --nodes)")
	blockSize := fs.Int("block-size", 0, "block size in bytes for a new mesh (default 4 MiB)")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error (nodes log to DIR/nodeN/node.log)")
	allowOther := fs.Bool("allow-other", false, "let other users use DIR/mnt, with the kernel checking permission bits as on a local file system (DIR becomes traversable by all: mode 0711)")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usagef("want exactly one DIR, got %d arguments", len(pos))
	}
	if *nodes < 1 || *nodes > 64 {
		return usagef("--nodes %d: want 1 to 64", *nodes)
	}
	if *replicas > *nodes {
		return usagef("--replicas %d is more than --nodes %d: every write would run degraded", *replicas, *nodes)
	}
	log, err := newLogger(os.Stderr, *logLevel)
	if err != nil {
		return err
	}
	dir, err := filepath.Abs(pos[0])
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	if *allowOther {
		// Other users must be able to reach DIR/mnt; DIR's other entries
		// (the secret, the nodes' data) keep their own modes.
		if err := os.Chmod(dir, 0o711); err != nil {
			return fmt.Errorf("open %s to other users: %w", dir, err)
		}
	}
	if prev, err := readUpState(dir); err == nil && processAlive(prev.PID) {
		return fmt.Errorf("a mesh is already up in %s (meshfs up pid %d); stop it first (kill %d)", dir, prev.PID, prev.PID)
	}
	secretFile := filepath.Join(dir, "secret")
	if _, err := os.Stat(secretFile); errors.Is(err, os.ErrNotExist) {
		if err := os.WriteFile(secretFile, []byte(newSecret()+"\n"), 0o600); err != nil {
			return fmt.Errorf("create cluster secret: %w", err)
		}
	}
	secret, err := loadSecret(secretFile)
	if err != nil {
		return err
	}
	mnt := filepath.Join(dir, "mnt")
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		// A mount left by a killed 'meshfs up' answers ENOTCONN.
		if !errors.Is(err, syscall.ENOTCONN) {
			return fmt.Errorf("create mount point: %w", err)
		}
	}
	clearStaleMount(mnt)
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find the meshfs binary: %w", err)
	}

	ctx, stop := signalContext()
	defer stop()
	st := upState{Mount: mnt, PID: os.Getpid(), SecretFile: secretFile}
	var procs []*exec.Cmd
	defer func() { stopNodes(procs) }()
	for i := 1; i <= *nodes; i++ {
		name := fmt.Sprintf("node%d", i)
		data := filepath.Join(dir, name)
		nargs := []string{"node", "--data", data, "--name", name,
			"--gossip", "127.0.0.1:0", "--api", "127.0.0.1:0", "--nats", "127.0.0.1:0",
			"--secret-file", secretFile, "--log-level", *logLevel}
		nargs = append(nargs, nodeFlags...)
		if i == 1 {
			if *replicas != 0 {
				nargs = append(nargs, "--replicas", fmt.Sprint(*replicas))
			} else if *nodes < defaultReplicas {
				nargs = append(nargs, "--replicas", fmt.Sprint(*nodes))
			}
			if *blockSize != 0 {
				nargs = append(nargs, "--block-size", fmt.Sprint(*blockSize))
			}
		} else {
			nargs = append(nargs, "--join", st.Nodes[0].Gossip)
		}
		node, cmd, err := startNode(ctx, self, nargs, data)
		if cmd != nil {
			procs = append(procs, cmd)
		}
		if err != nil {
			return fmt.Errorf("start %s: %w (see %s)", name, err, filepath.Join(data, "node.log"))
		}
		st.Nodes = append(st.Nodes, node)
	}

	client := blocknet.NewClient(secret.BlockKey(), 30*time.Second)
	if err := waitForMembers(ctx, client, st.Nodes[0].HTTP, *nodes); err != nil {
		return err
	}
	m, err := mountMesh(ctx, log, mountConfig{
		Mountpoint: mnt, Seeds: []string{st.Nodes[0].HTTP}, Secret: secret,
		WriteBuffer: 256 << 20, JoinTimeout: 30 * time.Second, CacheTimeout: 10 * time.Second,
		AllowOther: *allowOther,
	})
	if err != nil {
		return err
	}
	defer m.Close()
	info := m.view.Info()
	st.Replicas, st.BlockSize = info.Replication, info.BlockSize
	if err := writeJSONAtomic(filepath.Join(dir, "up.json"), st); err != nil {
		return err
	}
	defer os.Remove(filepath.Join(dir, "up.json"))

	fmt.Printf("meshfs is up: %d nodes, %d copies of each %d-byte block\n", len(st.Nodes), info.Replication, info.BlockSize)
	for _, n := range st.Nodes {
		fmt.Printf("  %-6s pid %-7d gossip %-21s api %-21s log %s\n", n.Name, n.PID, n.Gossip, n.HTTP, n.Log)
	}
	fmt.Printf("mounted at %s\n", mnt)
	fmt.Printf("state in %s; stop with Ctrl-C (or kill %d)\n", filepath.Join(dir, "up.json"), os.Getpid())
	fmt.Println("ready")

	<-ctx.Done()
	fmt.Println("stopping: unmounting, then stopping nodes")
	if err := m.Close(); err != nil {
		log.Warn("unmount", "err", err)
	}
	return nil
}

// startNode starts one 'meshfs node' and waits for its DATA/addr.json.
// Nodes get their own process group, so a terminal's Ctrl-C reaches only
// 'up', which unmounts before it stops them; and they die with 'up' even
// when it is killed (Pdeathsig).
func startNode(ctx context.Context, self string, args []string, data string) (upNode, *exec.Cmd, error) {
	if err := os.MkdirAll(data, 0o700); err != nil {
		return upNode{}, nil, err
	}
	os.Remove(filepath.Join(data, "addr.json"))
	logPath := filepath.Join(data, "node.log")
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return upNode{}, nil, err
	}
	defer logf.Close()
	cmd := exec.Command(self, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		return upNode{}, nil, err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	deadline := time.After(60 * time.Second)
	for {
		var a nodeAddrs
		if b, err := os.ReadFile(filepath.Join(data, "addr.json")); err == nil && json.Unmarshal(b, &a) == nil && a.PID == cmd.Process.Pid {
			return upNode{Name: a.Name, PID: a.PID, Gossip: a.Gossip, HTTP: a.HTTP, NATS: a.NATS,
				Data: data, Log: logPath, Args: append([]string{self}, args...)}, cmd, nil
		}
		select {
		case err := <-exited:
			return upNode{}, nil, fmt.Errorf("node exited: %v: %s", err, lastLine(logPath))
		case <-deadline:
			return upNode{}, cmd, errors.New("node not ready within 60s")
		case <-ctx.Done():
			return upNode{}, cmd, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func waitForMembers(ctx context.Context, client *blocknet.Client, addr string, n int) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		info, err := client.Cluster(ctx, addr)
		alive := 0
		if err == nil {
			for _, m := range info.Members {
				if m.Live() {
					alive++
				}
			}
			if alive >= n {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("mesh did not reach %d live members within 30s (have %d, last error: %v)", n, alive, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// stopNodes sends SIGTERM to every node, and SIGKILL to those still running
// after 10 s.
func stopNodes(procs []*exec.Cmd) {
	for _, p := range procs {
		p.Process.Signal(syscall.SIGTERM)
	}
	deadline := time.Now().Add(10 * time.Second)
	for _, p := range procs {
		for processAlive(p.Process.Pid) && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		if processAlive(p.Process.Pid) {
			p.Process.Kill()
		}
	}
}

func processAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	// A zombie still answers signal 0; read its state to tell.
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	fields := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	return len(fields) > 0 && fields[0] != "Z"
}

func readUpState(dir string) (upState, error) {
	var st upState
	b, err := os.ReadFile(filepath.Join(dir, "up.json"))
	if err != nil {
		return st, err
	}
	return st, json.Unmarshal(b, &st)
}

// clearStaleMount lazily unmounts a mount left by a 'meshfs up' that was
// killed (its mount point answers ENOTCONN).
func clearStaleMount(mnt string) {
	if _, err := os.Stat(mnt); errors.Is(err, syscall.ENOTCONN) {
		syscall.Unmount(mnt, syscall.MNT_DETACH)
	}
}

func lastLine(path string) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return lines[len(lines)-1]
}
