package harness

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/meshfs/meshfs/scenarios/posixdiff"
)

// CrashPoints is the differential exerciser's crash mode on a mesh
// (posixdiff.Crasher): the tree under test lives on a mount of its own,
// and at each crash point either that mount's process is SIGKILLed and the
// mesh mounted again at the same place, or a node is SIGKILLed a random
// moment later, while the next operations run, and restarted at the next
// crash point. One node at most is down at a time, and it is only killed
// once the metadata has all its replicas again, so that the mesh never
// loses its majority: what the exerciser sees must then be exactly what a
// local file system shows (a node's death is the mesh's to hide), or,
// after the mount's death, what one could show after a crash.
type CrashPoints struct {
	m     *Mesh
	dir   string
	extra []string
	rng   *rand.Rand

	pid     int          // the mount process under test
	unmount func() error // its MountAgain stop function
	down    int          // the node killed at the last point, or -1
	killed  chan error   // the result of that kill

	// NodeKills and MountKills count the crashes done.
	NodeKills, MountKills int
}

// NewCrashPoints mounts the mesh at dir with a 'meshfs mount' process of
// its own (extra are its flags) and draws its crashes from seed.
func NewCrashPoints(ctx context.Context, m *Mesh, dir string, seed uint64, extra ...string) (*CrashPoints, error) {
	c := &CrashPoints{m: m, dir: dir, extra: extra, rng: rand.New(rand.NewPCG(seed, 0x6b696c6c)), down: -1}
	var err error
	if c.pid, c.unmount, err = m.MountProcess(ctx, dir, extra...); err != nil {
		return nil, fmt.Errorf("mount for the crash mode: %w", err)
	}
	return c, nil
}

// Crash implements posixdiff.Crasher.
func (c *CrashPoints) Crash(ctx context.Context, n int) (posixdiff.Crash, error) {
	if err := c.restartDown(ctx); err != nil {
		return posixdiff.Crash{}, err
	}
	if c.rng.IntN(2) == 0 {
		pid := c.pid
		if err := c.killMount(ctx); err != nil {
			return posixdiff.Crash{}, err
		}
		c.MountKills++
		return posixdiff.Crash{What: fmt.Sprintf("SIGKILL the mount (pid %d), mounted again", pid), MountLost: true}, nil
	}
	i := c.rng.IntN(len(c.m.State.Nodes))
	delay := time.Duration(c.rng.IntN(300)) * time.Millisecond
	c.down = i
	c.killed = make(chan error, 1)
	go func() {
		time.Sleep(delay)
		c.killed <- c.m.Kill(i)
	}()
	c.NodeKills++
	return posixdiff.Crash{What: fmt.Sprintf("SIGKILL %s %v into the next operations", c.m.State.Nodes[i].Name, delay)}, nil
}

// killMount SIGKILLs the mount under test, detaches its dead mount point
// and mounts the mesh there again.
func (c *CrashPoints) killMount(ctx context.Context) error {
	if err := syscall.Kill(c.pid, syscall.SIGKILL); err != nil {
		return fmt.Errorf("kill the mount (pid %d): %w", c.pid, err)
	}
	for deadline := time.Now().Add(10 * time.Second); alive(c.pid); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			return fmt.Errorf("the mount (pid %d) still alive 10s after SIGKILL", c.pid)
		}
	}
	if err := syscall.Unmount(c.dir, syscall.MNT_DETACH); err != nil {
		return fmt.Errorf("detach the killed mount at %s: %w", c.dir, err)
	}
	c.unmount() // reaps the process; its error is the SIGKILL
	var err error
	if c.pid, c.unmount, err = c.m.MountProcess(ctx, c.dir, c.extra...); err != nil {
		return fmt.Errorf("mount again after the kill: %w", err)
	}
	return nil
}

// restartDown restarts the node killed at the last crash point and waits
// until the metadata has all its replicas up to date again.
func (c *CrashPoints) restartDown(ctx context.Context) error {
	if c.down < 0 {
		return nil
	}
	i := c.down
	c.down = -1
	if err := <-c.killed; err != nil {
		return err
	}
	if err := c.m.Restart(ctx, i); err != nil {
		return err
	}
	return c.m.WaitMetadata(ctx, min(3, len(c.m.State.Nodes)), time.Minute)
}

// Close restarts a node still down and stops the mount under test.
func (c *CrashPoints) Close(ctx context.Context) error {
	err := c.restartDown(ctx)
	if uerr := c.unmount(); uerr != nil && err == nil {
		err = fmt.Errorf("stop the mount under test: %w", uerr)
	}
	return err
}

// WaitMetadata waits, for at most within, until 'meshfs status' run
// against the live nodes shows the metadata with a leader and want
// replicas, all up to date.
func (m *Mesh) WaitMetadata(ctx context.Context, want int, within time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	var last string
	for {
		args := []string{"status", "--json", "--secret-file", m.State.SecretFile}
		for _, n := range m.State.Nodes {
			if alive(n.PID) {
				args = append(args, "--join", n.HTTP)
			}
		}
		var out, stderr bytes.Buffer
		cmd := exec.CommandContext(ctx, m.Bin, args...)
		cmd.Stdout, cmd.Stderr = &out, &stderr
		if err := cmd.Run(); err != nil {
			last = fmt.Sprintf("meshfs status: %v: %s", err, strings.TrimSpace(stderr.String()))
		} else {
			var st struct {
				Metadata struct {
					Replicas int    `json:"replicas"`
					Current  int    `json:"current"`
					Leader   string `json:"leader"`
				} `json:"metadata"`
			}
			if err := json.Unmarshal(out.Bytes(), &st); err != nil {
				return fmt.Errorf("meshfs status --json: %w", err)
			}
			md := st.Metadata
			if md.Leader != "" && md.Replicas >= want && md.Current >= want {
				return nil
			}
			last = fmt.Sprintf("%+v", md)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the metadata not at %d current replicas within %v (last: %s): %w", want, within, last, ctx.Err())
		case <-time.After(250 * time.Millisecond):
		}
	}
}
