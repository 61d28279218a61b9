package netns

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// openTUN creates the TUN device name (layer 3, no packet-information
// header: each read or write is one bare IP packet) and returns its file.
// The device lives as long as the file is open, wherever it is moved.
//
// The file is non-blocking, so os.File puts it on Go's poller: a Read
// waits without holding a thread, and Close wakes a Read that waits.
func openTUN(name string) (*os.File, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("create TUN device %s: open /dev/net/tun: %w", name, err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("create TUN device %s: %w", name, err)
	}
	ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("create TUN device %s: TUNSETIFF: %w", name, err)
	}
	return os.NewFile(uintptr(fd), "tun:"+name), nil
}
