// Package persist keeps a node's blocks on local disk in a bbolt file.
//
// A block is named by the SHA-256 of its content. Put refuses data whose hash
// is not its name, Get re-verifies the hash and reports a mismatch as
// ErrCorrupt instead of returning the bytes, and a Put is durable (fsync'd)
// when it returns, so a node killed with SIGKILL reopens with every
// acknowledged block. The store also records which cluster and block size the
// data dir belongs to, so a dir is never mixed into another cluster.
//
// persist imports nothing of meshfs.
package persist

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"time"
)

// Sentinel errors callers branch on. Errors returned by Store wrap them.
var (
	ErrNotFound       = errors.New("block not found")
	ErrCorrupt        = errors.New("block corrupt: content does not match its hash")
	ErrHashMismatch   = errors.New("block content does not match the given id")
	ErrInUse          = errors.New("data dir is in use by another process")
	ErrWrongCluster   = errors.New("data dir belongs to another cluster")
	ErrWrongBlockSize = errors.New("data dir was created with another block size")
	ErrTooLarge       = errors.New("block larger than the cluster block size")
)

// BlockID is the SHA-256 of a block's content.
type BlockID [32]byte

// Sum returns the id of data.
func Sum(data []byte) BlockID { return sha256.Sum256(data) }

// String is the lowercase hex form used in URLs, logs and keys.
func (id BlockID) String() string { return hex.EncodeToString(id[:]) }

// IsZero reports whether id is the zero value (no block).
func (id BlockID) IsZero() bool { return id == BlockID{} }

// ParseBlockID parses the 64-character hex form.
func ParseBlockID(s string) (BlockID, error) {
	var id BlockID
	if len(s) != 64 {
		return id, fmt.Errorf("parse block id %q: want 64 hex characters", s)
	}
	if _, err := hex.Decode(id[:], []byte(s)); err != nil {
		return id, fmt.Errorf("parse block id %q: %w", s, err)
	}
	return id, nil
}

// Options say which cluster a data dir belongs to.
type Options struct {
	// ClusterID names the cluster. The first Open of a dir records it; later
	// Opens with another ClusterID fail with ErrWrongCluster.
	ClusterID string
	// BlockSize is the cluster's block size in bytes, recorded like ClusterID
	// (ErrWrongBlockSize on mismatch). Put refuses larger blocks.
	BlockSize int
	// LockTimeout is how long Open waits for another process's lock on the
	// dir before failing with ErrInUse. Zero means 1 s.
	LockTimeout time.Duration
}

// Store is the block store of one data dir. It is safe for concurrent use.
type Store struct {
	// implementation in this package
}

// Open opens (creating if needed) the store in dir (the file dir/blocks.db).
func Open(dir string, opts Options) (*Store, error) { panic("TODO") }

// Put stores data under id. It fails with ErrHashMismatch if Sum(data) != id
// and ErrTooLarge past the block size, and returns only once the block is on
// disk (concurrent Puts share one commit and fsync). Putting a block that is
// already present is a cheap no-op.
func (s *Store) Put(ctx context.Context, id BlockID, data []byte) error { panic("TODO") }

// Get returns a copy of the block's content, ErrNotFound, or ErrCorrupt when
// the stored bytes no longer hash to id.
func (s *Store) Get(ctx context.Context, id BlockID) ([]byte, error) { panic("TODO") }

// Has reports whether the block is stored, and its size.
func (s *Store) Has(ctx context.Context, id BlockID) (bool, int, error) { panic("TODO") }

// Delete removes the block; deleting a missing block is not an error.
func (s *Store) Delete(ctx context.Context, id BlockID) error { panic("TODO") }

// List calls fn for every stored block in id order, stopping at fn's first error.
func (s *Store) List(ctx context.Context, fn func(id BlockID, size int) error) error { panic("TODO") }

// Stats returns the number of blocks and their total size in bytes.
func (s *Store) Stats() (blocks int64, bytes int64) { panic("TODO") }

// Close closes the bbolt file and releases the lock.
func (s *Store) Close() error { panic("TODO") }
