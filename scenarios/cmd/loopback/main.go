// Command loopback mounts a local directory through go-fuse's passthrough
// file system (fs.NewLoopbackRoot), as a baseline for benchmarks: the same
// FUSE library and kernel path as meshfs, with a local directory behind it.
//
//	loopback [--cache-timeout 10s] DIR MOUNTPOINT
//
// It prints "ready" once mounted, and unmounts on SIGINT or SIGTERM.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

func main() {
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: loopback [--cache-timeout D] DIR MOUNTPOINT")
		flag.PrintDefaults()
	}
	// meshfs mounts default to a 10 s cache timeout for names and
	// attributes; the same here compares the file systems, not the caches.
	timeout := flag.Duration("cache-timeout", 10*time.Second, "kernel cache timeout for names and attributes")
	flag.Parse()
	if flag.NArg() != 2 {
		flag.Usage()
		os.Exit(2)
	}
	dir, mnt := flag.Arg(0), flag.Arg(1)
	root, err := fs.NewLoopbackRoot(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "loopback:", err)
		os.Exit(1)
	}
	opts := &fs.Options{
		EntryTimeout: timeout,
		AttrTimeout:  timeout,
		MountOptions: fuse.MountOptions{
			DirectMount: true,
			MaxWrite:    1 << 20,
			FsName:      dir,
			Name:        "loopback",
			// As meshfs: the kernel checks permissions.
			Options: []string{"default_permissions"},
		},
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	server, err := fs.Mount(mnt, root, opts)
	if err != nil {
		fmt.Fprintln(os.Stderr, "loopback:", err)
		os.Exit(1)
	}
	fmt.Println("ready")
	go func() {
		<-sigs
		for try := 0; ; try++ {
			err := server.Unmount()
			if err == nil {
				return
			}
			if try == 20 {
				fmt.Fprintln(os.Stderr, "loopback: unmount:", err, "; detaching")
				syscall.Unmount(mnt, syscall.MNT_DETACH)
				os.Exit(1)
			}
			time.Sleep(500 * time.Millisecond)
		}
	}()
	server.Wait()
}
