package chaos

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/meshfs/meshfs/scenarios/harness"
	"github.com/meshfs/meshfs/scenarios/netns"
)

// cleanup undoes what the run did, newest first, then makes sure of it:
// any process of the run still running is killed, anything still mounted
// under the run's directory is detached, and the directory is removed
// (unless Keep). What it had to force is a failure: the scenario or
// meshfs left it behind.
func (e *Env) cleanup() {
	e.mu.Lock()
	undo := e.undo
	e.undo = nil
	e.mu.Unlock()
	for _, u := range slices.Backward(undo) {
		if err := u.fn(); err != nil {
			e.Fail("cleanup: %s: %v", u.what, err)
		}
	}
	if e.Dir == "" {
		return
	}
	// The scenario may still be running (it ignored an interrupt), so
	// e.mesh is read under its lock.
	var pids []int
	e.meshMu.Lock()
	if e.mesh != nil {
		pids = e.mesh.PIDs()
	}
	e.meshMu.Unlock()
	for _, pid := range pids {
		if cmd := cmdline(pid); harness.Alive(pid) && ownedBy(cmd, e.Dir) {
			syscall.Kill(pid, syscall.SIGKILL)
			e.Fail("cleanup: pid %d (%s) was still running; killed it", pid, cmd)
		}
	}
	for _, mnt := range mountsUnder(e.Dir) {
		err := detach(mnt)
		e.Fail("cleanup: %s was still mounted; detached it (%v)", mnt, err)
	}
	if e.netPrefix != "" {
		left, err := netns.RemoveStale(context.Background(), e.netPrefix+"-")
		if len(left) > 0 || err != nil {
			e.Fail("cleanup: network namespaces %v were left; removed them (%v)", left, err)
		}
	}
	if left := mountsUnder(e.Dir); len(left) > 0 {
		e.Fail("cleanup: still mounted, so %s is kept: %s", e.Dir, strings.Join(left, " "))
		return
	}
	if e.Keep {
		e.Logf("kept %s", e.Dir)
		return
	}
	if err := os.RemoveAll(e.Dir); err != nil {
		e.Fail("cleanup: remove %s: %v", e.Dir, err)
	}
}

// mountsUnder lists the mount points at or below dir, deepest first.
func mountsUnder(dir string) []string {
	b, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		return nil
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		p := unescapeMount(f[1])
		if p == dir || strings.HasPrefix(p, dir+"/") {
			out = append(out, p)
		}
	}
	slices.SortFunc(out, func(a, b string) int { return len(b) - len(a) })
	return out
}

// unescapeMount undoes the octal escapes of /proc/self/mounts (\040 for a
// space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var c byte
			if _, err := fmt.Sscanf(s[i+1:i+4], "%03o", &c); err == nil {
				b.WriteByte(c)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// detach lazily unmounts mnt (a FUSE mount whose process died answers
// ENOTCONN until then), waiting until it is gone.
func detach(mnt string) error {
	err := syscall.Unmount(mnt, syscall.MNT_DETACH)
	for deadline := time.Now().Add(5 * time.Second); harness.Mounted(mnt) && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("unmount %s: %w", mnt, err)
	}
	return nil
}

// ownedBy reports whether a process with command line cmd was started
// for the run in dir: cmd names a path there. A pid the run knew of may
// have been reused by an unrelated process since.
func ownedBy(cmd, dir string) bool {
	return strings.Contains(cmd, dir+string(filepath.Separator))
}

func cmdline(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return strings.TrimSpace(strings.ReplaceAll(string(b), "\x00", " "))
}
