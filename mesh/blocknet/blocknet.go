// Package blocknet moves blocks between nodes and clients over HTTP.
//
// A node serves its block store with NewServer; a client or peer talks to one
// node with Client, and to the mesh with Replicator, which writes each block
// to its R owners in placement order and reads it from the first owner that
// returns a copy whose hash verifies. Every request is authenticated with an
// HMAC of the cluster secret; a request without a valid signature is refused
// with 401 and touches nothing.
package blocknet

import (
	"context"
	"encoding/json"
	"log/slog"

	"github.com/meshfs/meshfs/mesh"
	"github.com/meshfs/meshfs/persist"
)

// BlockStore is what a node serves. *persist.Store implements it; its errors
// wrap persist's sentinels (ErrNotFound, ErrCorrupt, ErrHashMismatch, ErrTooLarge).
// Put must not keep data once it returns: the server reads the next
// request's body into the same buffer.
type BlockStore interface {
	Put(ctx context.Context, id persist.BlockID, data []byte) error
	Get(ctx context.Context, id persist.BlockID) ([]byte, error)
	Has(ctx context.Context, id persist.BlockID) (bool, int, error)
	Delete(ctx context.Context, id persist.BlockID) error
	List(ctx context.Context, fn func(id persist.BlockID, size int) error) error
	Stats() (blocks int64, bytes int64)
}

// ClusterInfo is what any node tells a client about the mesh.
type ClusterInfo struct {
	ClusterID   string        `json:"cluster_id"`
	BlockSize   int           `json:"block_size"`
	Replication int           `json:"replication"`
	Self        string        `json:"self"` // name of the node that answered
	Members     []mesh.Member `json:"members"`
}

// NodeStats is one node's storage use.
type NodeStats struct {
	Blocks int64 `json:"blocks"`
	Bytes  int64 `json:"bytes"`
	// DiskTotal and DiskFree are the space of the file system holding the
	// data dir that blocks may use: capped by the node's capacity, and
	// free net of the reserve.
	DiskTotal uint64 `json:"disk_total"`
	DiskFree  uint64 `json:"disk_free"`
	// Actors is what ServerConfig.Actors returned: repair and scrub state.
	Actors json.RawMessage `json:"actors,omitempty"`
}

// ServerConfig wires a node's block API.
type ServerConfig struct {
	Store  BlockStore
	Secret []byte
	// Cluster returns the node's current view of the mesh (called per request).
	Cluster func() ClusterInfo
	// DataDir is statfs'd for NodeStats.DiskTotal/DiskFree, and before
	// storing a new block.
	DataDir string
	// Capacity, if positive, bounds the bytes of blocks the node stores.
	Capacity int64
	// Reserve is the space on DataDir's file system that new blocks leave
	// free: the metadata server and bbolt's own growth need room, and a
	// disk filled to the last byte fails them in ways a refused block does
	// not. Zero means 2% of the file system, at least 64 MiB and at most
	// 1 GiB.
	Reserve uint64
	// Suspect, if set, is told of a block a client found corrupt here
	// (read-repair): the node should verify and replace its copy soon. It
	// must not block.
	Suspect func(id persist.BlockID)
	// Logger receives the server's warnings and errors; nil means
	// slog.Default().
	Logger *slog.Logger
	// Actors, if set, returns the node's actors' state as JSON for
	// NodeStats.Actors (the block API does not know their types).
	Actors func() json.RawMessage
}
