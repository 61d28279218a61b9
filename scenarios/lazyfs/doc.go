// Package lazyfs mounts a test-only pass-through FUSE file system that, like
// LazyFS, keeps written file data in memory until fsync, and throws away
// everything not fsync'd when the test cuts the power. The power-loss chaos
// scenario puts each node's data directory on it, SIGKILLs the node, calls
// CutPower, mounts the same backing directory again and restarts the node,
// which must find every byte it fsync'd.
//
// # What is lazy and what is not
//
// A mount is a view of a backing directory. Namespace operations (create,
// mkdir, mknod, symlink, link, unlink, rmdir, rename, chmod, chown, utimens,
// xattrs) go straight to the backing directory and survive a power cut. As
// in LazyFS, the loss of a journaling file system's metadata is not modelled:
// a file created or renamed and never fsync'd keeps its name after the cut.
//
// File data is lazy. Writes, truncates (truncate, ftruncate, O_TRUNC) and
// fallocate's size changes and zeroing are kept in memory per backing inode,
// as 4 KiB pages plus a pending size, and the backing file is not touched.
// Reads, mappings and stat see the merged view: the backing content, cut at
// the lowest size the file was truncated to since the last sync, overlaid
// with the kept pages, up to the pending size; holes read as zeros.
// Timestamps are the backing file's, so they move at sync.
//
// fsync or fdatasync through any handle of a file writes the changes kept
// for that inode, from every handle, to the backing file and syncs it; a
// file opened O_SYNC or O_DSYNC is synced after each write (the kernel sends
// the fsync). fsync of a directory syncs the backing directory. close writes
// nothing.
//
// Changes are kept by inode, not by path: they follow the file through
// renames and are shared by its hard links. When the last name of a file
// with unsynced changes goes and no handle holds it, the changes are
// discarded (nothing could sync them any more).
//
// # Power cut and unmount
//
// CutPower drops every unsynced change of every file, so the backing files
// hold exactly what was last synced, then unmounts, which also drops the
// kernel's page cache of the mount. It is meant to be called once every
// process using the mount has been SIGKILLed and reaped; the caller then
// mounts again with Mount on the same backing directory. Unmount is a clean
// shutdown: like a real disk's, it writes and syncs every unsynced change.
//
// # Kernel caching
//
// Entry and attribute timeouts are zero, so the kernel always asks for the
// pending size. There is no writeback cache and no direct I/O: writes go
// through to this process at once, and reads and mmap (bbolt maps its file
// read-only, MAP_SHARED) go through the page cache, filled from the merged
// view. Locks (flock, fcntl) are the kernel's own, local to the mount.
// copy_file_range and O_TMPFILE are not supported; callers fall back.
//
// Files on the mount must not be mapped by the process that serves it (the
// one that called Mount): a page fault waits for the FUSE server while
// holding the address-space lock that the server's Go runtime may need to
// grow its heap, and the process hangs. The scenario's nodes, and the
// tests' bbolt users, are other processes.
package lazyfs
