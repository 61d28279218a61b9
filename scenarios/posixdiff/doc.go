// Package posixdiff is a differential exerciser for meshfs: it performs one
// seeded random sequence of file-system operations on two directory trees,
// a meshfs mount and a directory on a local file system, and compares every
// result, so that any way meshfs departs from the local kernel file system
// shows up as the first operation whose result differs.
//
// The pieces, each usable alone:
//
//   - Generator makes the sequence: a pure function of a seed (no clock, no
//     I/O), over a small namespace (three directory names, eight leaf
//     names, paths up to three deep) so that collisions, renames over
//     existing names, renames into a directory's own subtree, ENOTEMPTY,
//     holes, and several handles on one file (some unlinked, some on
//     directories) happen all the time.
//   - Side applies one Op to one tree with real system calls, paths
//     relative to the tree's root and open handles kept in numbered slots,
//     and returns a Result: the errno and the call's values in a canonical,
//     comparable form, and the timestamp rules the call broke.
//   - Snapshot walks a tree and renders everything comparable about it
//     (types, modes, sizes, link counts, owners, symlink targets, contents,
//     user.* and trusted.* xattrs, listings with d_type) as sorted entries.
//   - Runner drives both Sides through a sequence, comparing the trees
//     every so many operations and at the end, and stops at the first
//     difference; Minimize replays it to find the shortest prefix that
//     shows it and drops operations (delta debugging) to a small sequence
//     that still does.
//
// What is normalised rather than compared, because it legitimately differs
// between two file systems: inode numbers, st_dev, st_blksize, st_blocks
// (meshfs may count differently), atime (mount options differ; and a
// symlink's changes whenever a lookup follows it), the st_size of
// directories and the offsets of directory handles (both the file
// system's own), "." and ".." in listings (POSIX lets a file system leave
// them out, and meshfs does), and absolute timestamps. Timestamps are
// compared through the rules POSIX states for each call (it "shall mark
// for update" mtime and ctime, or must leave them alone), checked on each
// side against that side's own clock, and explicit utimensat values are
// compared exactly. Everything else is compared as it is.
//
// Known meshfs deviations (Deviations) can be tolerated by name, each
// switching off one precise comparison, so that a run looks past them.
package posixdiff
