package natsd

import (
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"
)

// boundUnacked sets TCP_USER_TIMEOUT on a client's connection to a server:
// the kernel drops the connection once data sent on it has gone
// unacknowledged for unackedTimeout. A server that has gone silent (power
// lost, a partition, its zone cut off) is noticed that way within seconds
// of the next ping, while a slow link that acknowledges, however long its
// queue, is not taken for dead.
func boundUnacked(network, address string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int(unackedTimeout.Milliseconds()))
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		return fmt.Errorf("set TCP_USER_TIMEOUT on the connection to %s: %w", address, err)
	}
	return nil
}
