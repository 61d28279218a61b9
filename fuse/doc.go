// Package fuse is meshfs's file-system client: a go-fuse v2 tree whose
// metadata lives in the metadata store (mesh/meta) and whose file contents
// live in content-addressed blocks on the mesh (mesh/blocknet).
//
// It owns the inodes the kernel sees, the open files of a mount, their
// write-back buffers and the read cache with read-ahead. What it promises:
//
//   - write returns once the bytes are in the mount's write-back buffer. The
//     buffer is bounded (Options.WriteBuffer); a full buffer makes write wait
//     for uploads, never drop data.
//   - close (flush) and fsync return once every written block is stored on
//     the mesh and one atomic metadata commit points the file at them. If a
//     block cannot be stored, they fail with EIO and commit nothing: the file
//     keeps its previous content. Data written after the last close (the
//     kernel writes a shared mapping's dirty pages back at munmap) is
//     committed at the file's last release, unless that close failed.
//   - All handles of one file on one mount share its unflushed data. Another
//     mount sees a file's new content when it opens the file after the
//     writer's close (close-to-open consistency).
//   - An unlinked file stays readable through handles still open on this
//     mount; its inode is reclaimed at the last close.
//
// A file is cut into slots of the cluster block size; slot i holds bytes
// [i*BlockSize, (i+1)*BlockSize) and is stored as one block, or is a hole.
package fuse
