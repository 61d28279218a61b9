//go:build !linux

package natsd

import "syscall"

// boundUnacked is Linux's only: elsewhere a silent server is noticed by
// the client's unanswered pings alone.
var boundUnacked func(network, address string, c syscall.RawConn) error
