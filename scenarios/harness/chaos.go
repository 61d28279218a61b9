package harness

import (
	"context"
	"fmt"
	"os/exec"
	"syscall"
	"time"
)

// What the chaos scenarios (scenarios/chaos) need beyond the tests:
// graceful stops, the pid of an extra mount to SIGKILL, and every pid the
// harness knows of, so that nothing outlives a scenario.

// Alive reports whether process pid exists and is not a zombie.
func Alive(pid int) bool { return pid > 0 && alive(pid) }

// NodeAlive reports whether node i's current process is running.
func (m *Mesh) NodeAlive(i int) bool { return Alive(m.State.Nodes[i].PID) }

// Terminate sends SIGTERM to node i and waits up to within for it to exit
// (a graceful stop: it leaves gossip and closes its stores); past that it
// sends SIGKILL and reports that it had to.
func (m *Mesh) Terminate(i int, within time.Duration) error {
	n := m.State.Nodes[i]
	m.logf("SIGTERM %s (pid %d)", n.Name, n.PID)
	if err := syscall.Kill(n.PID, syscall.SIGTERM); err != nil {
		return fmt.Errorf("terminate %s: %w", n.Name, err)
	}
	for deadline := time.Now().Add(within); alive(n.PID); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			syscall.Kill(n.PID, syscall.SIGKILL)
			return fmt.Errorf("%s (pid %d) still running %v after SIGTERM; killed it", n.Name, n.PID, within)
		}
	}
	return nil
}

// MountProcess is MountAgain that also returns the pid of the 'meshfs
// mount' process, for a scenario that kills it. After a SIGKILL its mount
// point answers ENOTCONN until it is unmounted (syscall.Unmount with
// MNT_DETACH); unmount then reports the process's exit status.
func (m *Mesh) MountProcess(ctx context.Context, dir string, extra ...string) (pid int, unmount func() error, err error) {
	return m.MountProcessWith(ctx, exec.Command, dir, extra...)
}

// MountProcessWith is MountProcess with the process made by command (see
// MountWith).
func (m *Mesh) MountProcessWith(ctx context.Context, command func(name string, args ...string) *exec.Cmd, dir string, extra ...string) (pid int, unmount func() error, err error) {
	cmd, unmount, err := m.mountWith(ctx, command, dir, extra...)
	if err != nil {
		return 0, nil, err
	}
	return cmd.Process.Pid, unmount, nil
}

// PIDs lists every process the harness started or learned of: 'meshfs
// up', the nodes in m.State (current processes), and the nodes and mounts
// it started itself, alive or not.
func (m *Mesh) PIDs() []int {
	var pids []int
	if m.up != nil && m.up.Process != nil {
		pids = append(pids, m.up.Process.Pid)
	}
	for _, n := range m.State.Nodes {
		if n.PID > 0 {
			pids = append(pids, n.PID)
		}
	}
	m.mu.Lock()
	for _, c := range m.started {
		pids = append(pids, c.Process.Pid)
	}
	m.mu.Unlock()
	return pids
}
