package scenarios

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func sha256Sum(b []byte) [32]byte { return sha256.Sum256(b) }

// runMeshfs runs the binary to completion (bounded) and returns its exit
// code and stderr.
func runMeshfs(t *testing.T, timeout time.Duration, env []string, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, meshfsBin, args...)
	cmd.Env = append(os.Environ(), env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("meshfs %s: still running after %v", strings.Join(args, " "), timeout)
	}
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run meshfs: %v", err)
	}
	return code, strings.TrimSpace(stderr.String())
}

// runMeshfsStdout runs the binary (bounded) and returns its exit code and
// stdout (stderr on failure).
func runMeshfsStdout(t *testing.T, timeout time.Duration, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, meshfsBin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), stderr.String()
	} else if err != nil {
		t.Fatalf("run meshfs %v: %v", args, err)
	}
	return 0, stdout.String()
}

// expectFailure checks a command failed and that its error, the last line
// of stderr (log lines may come before it), is one line naming want.
func expectFailure(t *testing.T, code int, stderr, want string) {
	t.Helper()
	if code == 0 {
		t.Fatalf("exit status 0, want failure mentioning %q", want)
	}
	lines := strings.Split(stderr, "\n")
	last := lines[len(lines)-1]
	if !strings.HasPrefix(last, "meshfs ") || !strings.Contains(last, want) {
		t.Fatalf("last line of stderr %q is not a meshfs error mentioning %q (stderr: %q)", last, want, stderr)
	}
	t.Logf("error: %s", last)
}

// startNode runs a stand-alone node and returns a function that stops it.
func startNode(t *testing.T, data string, env []string, extra ...string) func() {
	t.Helper()
	args := append([]string{"node", "--data", data, "--gossip", "127.0.0.1:0", "--api", "127.0.0.1:0", "--nats", "127.0.0.1:0"}, extra...)
	cmd := exec.Command(meshfsBin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	logf, _ := os.Create(data + ".log")
	cmd.Stderr = logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); logf.Close(); close(done) }()
	for deadline := time.Now().Add(30 * time.Second); ; {
		var a struct{ PID int }
		if b, err := os.ReadFile(filepath.Join(data, "addr.json")); err == nil && json.Unmarshal(b, &a) == nil && a.PID == cmd.Process.Pid {
			break
		}
		select {
		case <-done:
			b, _ := os.ReadFile(data + ".log")
			t.Fatalf("node exited: %s", b)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("node not ready within 30s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	stop := func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			cmd.Process.Kill()
			<-done
			t.Errorf("node ignored SIGTERM for 15s")
		}
	}
	return stop
}

func TestBadInput(t *testing.T) {
	secretA := []string{"MESHFS_SECRET=secret-a-0123456789abcdef"}
	secretB := []string{"MESHFS_SECRET=secret-b-0123456789abcdef"}

	t.Run("unknown flag", func(t *testing.T) {
		code, stderr := runMeshfs(t, 10*time.Second, secretA, "node", "--data", t.TempDir(), "--bogus")
		if code != 2 || !strings.Contains(stderr, "bogus") {
			t.Fatalf("exit %d, stderr %q; want 2 naming the flag", code, stderr)
		}
	})
	t.Run("no secret", func(t *testing.T) {
		code, stderr := runMeshfs(t, 10*time.Second, []string{"MESHFS_SECRET="}, "node", "--data", t.TempDir())
		expectFailure(t, code, stderr, "no cluster secret")
	})
	t.Run("join address unreachable", func(t *testing.T) {
		start := time.Now()
		code, stderr := runMeshfs(t, 30*time.Second, secretA, "node", "--data", t.TempDir(),
			"--gossip", "127.0.0.1:0", "--api", "127.0.0.1:0", "--nats", "127.0.0.1:0",
			"--join", "127.0.0.1:1", "--join-timeout", "2s")
		expectFailure(t, code, stderr, "no member answered")
		if took := time.Since(start); took < 2*time.Second {
			t.Fatalf("gave up after %v, before the 2s join timeout: no retry", took)
		}
	})
	t.Run("mount: mount point missing", func(t *testing.T) {
		code, stderr := runMeshfs(t, 10*time.Second, secretA, "mount", filepath.Join(t.TempDir(), "nope"), "--join", "127.0.0.1:1")
		expectFailure(t, code, stderr, "mount point")
	})
	t.Run("mount: nobody at the join address", func(t *testing.T) {
		code, stderr := runMeshfs(t, 20*time.Second, secretA, "mount", t.TempDir(), "--join", "127.0.0.1:1", "--join-timeout", "2s")
		expectFailure(t, code, stderr, "127.0.0.1:1")
	})

	t.Run("data dir of another cluster, another block size, in use", func(t *testing.T) {
		data := filepath.Join(t.TempDir(), "n")
		stop := startNode(t, data, secretA, "--block-size", "65536")
		// in use: a second node on the same data dir
		code, stderr := runMeshfs(t, 20*time.Second, secretA, "node", "--data", data,
			"--gossip", "127.0.0.1:0", "--api", "127.0.0.1:0", "--nats", "127.0.0.1:0")
		expectFailure(t, code, stderr, "in use")
		stop()
		code, stderr = runMeshfs(t, 20*time.Second, secretB, "node", "--data", data,
			"--gossip", "127.0.0.1:0", "--api", "127.0.0.1:0", "--nats", "127.0.0.1:0")
		expectFailure(t, code, stderr, "belongs to cluster")
		code, stderr = runMeshfs(t, 20*time.Second, secretA, "node", "--data", data, "--block-size", "131072",
			"--gossip", "127.0.0.1:0", "--api", "127.0.0.1:0", "--nats", "127.0.0.1:0")
		expectFailure(t, code, stderr, "block size")
	})

	t.Run("mount point already mounted", func(t *testing.T) {
		m := startMesh(t, 1)
		code, stderr := runMeshfs(t, 30*time.Second, nil, "mount", m.Mount(), "--join", m.State.Nodes[0].HTTP, "--secret-file", m.State.SecretFile)
		expectFailure(t, code, stderr, "already")
	})
}

// TestWriteWithTooFewNodes kills two of three nodes: with one copy possible
// and R=3 (a majority needs 2), a write fails with EIO and the file keeps
// its previous content.
func TestWriteWithTooFewNodes(t *testing.T) {
	m := startMesh(t, 3)
	path := filepath.Join(m.Mount(), "keep")
	before := randomBytes(t, 1000)
	if err := os.WriteFile(path, before, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, i := range []int{1, 2} {
		if err := m.Kill(i); err != nil {
			t.Fatal(err)
		}
	}
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatalf("open for writing: %v", err)
	}
	_, werr := f.Write(randomBytes(t, 5000))
	serr := f.Sync()
	cerr := f.Close()
	if !errors.Is(werr, syscall.EIO) && !errors.Is(serr, syscall.EIO) && !errors.Is(cerr, syscall.EIO) {
		t.Fatalf("write/fsync/close with 1 of 3 nodes: %v / %v / %v, want EIO", werr, serr, cerr)
	}
	t.Logf("write %v, fsync %v, close %v", werr, serr, cerr)
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read after failed write: %v", err)
	}
	if !bytes.Equal(got, before) {
		t.Fatalf("after a failed overwrite the file holds %d bytes, not its previous 1000", len(got))
	}
	_ = context.Background
}
