package netns

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"

	"golang.org/x/sys/unix"
)

// Host is a network namespace of a Net, with one address in it.
type Host struct {
	Name string

	net   *Net
	index byte // last byte of ip
	ip    netip.Addr
	netns string // the namespace's name
}

// IP is the host's address.
func (h *Host) IP() netip.Addr { return h.ip }

// NetnsPath is the file that names the host's namespace, for nsenter
// --net, setns(2) or 'ip netns exec'.
func (h *Host) NetnsPath() string { return filepath.Join(netnsDir, h.netns) }

// Command is exec.Command for a program that runs in the host's
// network namespace and every other namespace of the caller: its mounts
// (a FUSE mount it makes is seen by the whole machine), its PIDs, its
// files. It runs through nsenter, which execs the program, so the Cmd's
// Process is the program itself.
func (h *Host) Command(name string, args ...string) *exec.Cmd {
	return exec.Command("nsenter", append([]string{"--net=" + h.NetnsPath(), "--", name}, args...)...)
}

// InNetns calls fn on an OS thread that is in the host's network
// namespace, and waits for it. A socket fn opens (net.Listen, net.Dial...)
// is the host's for its whole life, whatever goroutine uses it later. fn
// must open its sockets itself: goroutines it starts run elsewhere.
func (h *Host) InNetns(fn func() error) error {
	target, err := os.Open(h.NetnsPath())
	if err != nil {
		return fmt.Errorf("enter namespace of host %s: %w", h.Name, err)
	}
	defer target.Close()
	done := make(chan error, 1)
	// A goroutine of its own: its thread is the one that changes
	// namespace, and if it cannot change back, the thread ends with it
	// (a goroutine that exits locked takes its thread along).
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			done <- fmt.Errorf("enter namespace of host %s: %w", h.Name, err)
			return
		}
		defer orig.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			done <- fmt.Errorf("enter namespace of host %s: setns: %w", h.Name, err)
			return
		}
		fnErr := fn()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			done <- fmt.Errorf("leave namespace of host %s: setns: %w (the thread is discarded)", h.Name, err)
			return
		}
		runtime.UnlockOSThread()
		done <- fnErr
	}()
	return <-done
}

// ListenPacket is net.ListenPacket in the host's namespace.
func (h *Host) ListenPacket(network, address string) (c net.PacketConn, err error) {
	err = h.InNetns(func() error {
		c, err = net.ListenPacket(network, address)
		return err
	})
	return c, err
}

// DialContext is net.Dialer.DialContext from the host's namespace.
func (h *Host) DialContext(ctx context.Context, network, address string) (c net.Conn, err error) {
	err = h.InNetns(func() error {
		var d net.Dialer
		c, err = d.DialContext(ctx, network, address)
		return err
	})
	return c, err
}

func (h *Host) String() string { return h.Name + "(" + h.ip.String() + ")" }
