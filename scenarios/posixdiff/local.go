package posixdiff

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// CheckLocalDir makes sure dir can serve as the reference tree: it holds
// user.* xattrs (tmpfs before Linux 6.6 cannot; without them every xattr
// call would differ for the local side's sake). It returns the name of the
// file system dir is on, for the report.
func CheckLocalDir(dir string) (string, error) {
	const probe = "user.posixdiff.probe"
	if err := unix.Setxattr(dir, probe, []byte("1"), 0); err != nil {
		if errors.Is(err, unix.ENOTSUP) {
			return "", fmt.Errorf("local directory %s does not support user.* xattrs: pick one on ext4, xfs, btrfs or tmpfs (Linux 6.6+)", dir)
		}
		return "", fmt.Errorf("local directory %s: setxattr: %w", dir, err)
	}
	if err := unix.Removexattr(dir, probe); err != nil {
		return "", fmt.Errorf("local directory %s: removexattr: %w", dir, err)
	}
	var sf unix.Statfs_t
	if err := unix.Statfs(dir, &sf); err != nil {
		return "", fmt.Errorf("statfs %s: %w", dir, err)
	}
	return fsTypeName(sf.Type), nil
}

func fsTypeName(magic int64) string {
	switch magic {
	case unix.EXT4_SUPER_MAGIC:
		return "ext4"
	case unix.TMPFS_MAGIC:
		return "tmpfs"
	case unix.XFS_SUPER_MAGIC:
		return "xfs"
	case unix.BTRFS_SUPER_MAGIC:
		return "btrfs"
	case unix.OVERLAYFS_SUPER_MAGIC:
		return "overlayfs"
	case unix.FUSE_SUPER_MAGIC:
		return "fuse"
	}
	return fmt.Sprintf("fs magic %#x", magic)
}
