package harness

import (
	"context"
	"fmt"
	"math/rand/v2"
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
	if err := WaitGone(c.pid, 10*time.Second); err != nil {
		return fmt.Errorf("the mount after SIGKILL: %w", err)
	}
	if err := syscall.Unmount(c.dir, syscall.MNT_DETACH); err != nil {
		return fmt.Errorf("detach the killed mount at %s: %w", c.dir, err)
	}
	c.unmount() // reaps the process; its error is the SIGKILL
	c.unmount = nil
	pid, unmount, err := c.m.MountProcess(ctx, c.dir, c.extra...)
	if err != nil {
		return fmt.Errorf("mount again after the kill: %w", err)
	}
	c.pid, c.unmount = pid, unmount
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
	if err := <-c.killed; err != nil && c.m.NodeAlive(i) {
		return err // the kill failed: the node is up
	}
	if err := c.m.Restart(ctx, i); err != nil {
		return err
	}
	_, err := c.m.WaitMetadata(ctx, time.Minute)
	return err
}

// Close restarts a node still down and stops the mount under test.
func (c *CrashPoints) Close(ctx context.Context) error {
	err := c.restartDown(ctx)
	if c.unmount == nil {
		return err // a remount after a kill failed: nothing is mounted
	}
	if uerr := c.unmount(); uerr != nil && err == nil {
		err = fmt.Errorf("stop the mount under test: %w", uerr)
	}
	return err
}
