package persist

import (
	"encoding/binary"
	"fmt"
	"math"

	bolt "go.etcd.io/bbolt"
)

// Keys of the identity bucket.
var (
	keyClusterID = []byte("cluster_id")
	keyBlockSize = []byte("block_size")
)

// checkIdentity compares opts with the identity recorded in b, records what
// is not recorded yet, and returns the block size Put must enforce. An empty
// ClusterID or a zero BlockSize in opts means "whatever the dir has", so
// tools can open a dir without knowing its cluster.
func checkIdentity(b *bolt.Bucket, opts Options) (int, error) {
	if stored := b.Get(keyClusterID); len(stored) == 0 {
		if opts.ClusterID != "" {
			if err := b.Put(keyClusterID, []byte(opts.ClusterID)); err != nil {
				return 0, fmt.Errorf("record cluster id: %w", err)
			}
		}
	} else if opts.ClusterID != "" && opts.ClusterID != string(stored) {
		return 0, fmt.Errorf("%w: dir has cluster %q, opened for cluster %q",
			ErrWrongCluster, stored, opts.ClusterID)
	}

	stored := b.Get(keyBlockSize)
	if stored == nil {
		if opts.BlockSize > 0 {
			var buf [8]byte
			binary.BigEndian.PutUint64(buf[:], uint64(opts.BlockSize))
			if err := b.Put(keyBlockSize, buf[:]); err != nil {
				return 0, fmt.Errorf("record block size: %w", err)
			}
		}
		return opts.BlockSize, nil
	}
	if len(stored) != 8 {
		return 0, fmt.Errorf("recorded block size is %d bytes long, want 8", len(stored))
	}
	recorded := binary.BigEndian.Uint64(stored)
	if recorded > math.MaxInt32 {
		return 0, fmt.Errorf("recorded block size %d is implausible", recorded)
	}
	if opts.BlockSize == 0 {
		return int(recorded), nil
	}
	if uint64(opts.BlockSize) != recorded {
		return 0, fmt.Errorf("%w: dir has block size %d, opened with %d",
			ErrWrongBlockSize, recorded, opts.BlockSize)
	}
	return opts.BlockSize, nil
}
