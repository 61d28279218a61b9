package netns

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
)

// netnsDir is where 'ip netns add' mounts a named namespace.
const netnsDir = "/run/netns"

// Available returns nil if this machine can run a Net, or the first reason
// it cannot: not root, no /dev/net/tun, no ip or nsenter program.
func Available() error {
	if uid := os.Geteuid(); uid != 0 {
		return fmt.Errorf("netns needs root (to create namespaces and TUN devices); running as uid %d", uid)
	}
	f, err := os.OpenFile("/dev/net/tun", os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("netns needs /dev/net/tun: %w", err)
	}
	f.Close()
	for _, prog := range []string{"ip", "nsenter"} {
		if _, err := exec.LookPath(prog); err != nil {
			return fmt.Errorf("netns needs the %s program: %w", prog, err)
		}
	}
	return nil
}

// RemoveStale deletes every named network namespace whose name starts with
// prefix: the leftovers of a run that crashed before Close. It deletes the
// namespaces of a Net still in use too, so call it when no run is going,
// or with a prefix only dead runs used. Processes still inside them keep
// them alive (anonymously) until they exit. It returns the names it found.
func RemoveStale(ctx context.Context, prefix string) ([]string, error) {
	if prefix == "" {
		return nil, errors.New("remove stale namespaces: empty prefix would match every namespace")
	}
	entries, err := os.ReadDir(netnsDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("remove stale namespaces %s*: %w", prefix, err)
	}
	var found []string
	var errs []error
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) {
			found = append(found, e.Name())
			if err := runIP(ctx, "netns", "delete", e.Name()); err != nil {
				errs = append(errs, fmt.Errorf("remove stale namespace %s: %w", e.Name(), err))
			}
		}
	}
	return found, errors.Join(errs...)
}

// runIP runs the ip program for its effect; an error carries the
// command line and what ip wrote.
func runIP(ctx context.Context, args ...string) error {
	_, err := outputIP(ctx, args...)
	return err
}

func outputIP(ctx context.Context, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "ip", args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	return out, nil
}
