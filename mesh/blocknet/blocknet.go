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
	"net/http"
	"time"

	"github.com/meshfs/meshfs/mesh"
	"github.com/meshfs/meshfs/persist"
)

// BlockStore is what a node serves. *persist.Store implements it; its errors
// wrap persist's sentinels (ErrNotFound, ErrCorrupt, ErrHashMismatch, ErrTooLarge).
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
	Blocks    int64  `json:"blocks"`
	Bytes     int64  `json:"bytes"`
	DiskTotal uint64 `json:"disk_total"` // of the file system holding the data dir
	DiskFree  uint64 `json:"disk_free"`
}

// ServerConfig wires a node's block API.
type ServerConfig struct {
	Store  BlockStore
	Secret []byte
	// Cluster returns the node's current view of the mesh (called per request).
	Cluster func() ClusterInfo
	// DataDir is statfs'd for NodeStats.DiskTotal/DiskFree.
	DataDir string
}

// NewServer returns the block API handler:
//
//	PUT    /v1/blocks/{id}  store (body = content; 400 hash mismatch, 413 too large, 507 disk full)
//	GET    /v1/blocks/{id}  content (404 missing, 409 with the body "corrupt" for a corrupt copy)
//	HEAD   /v1/blocks/{id}  200 with Content-Length, or 404
//	DELETE /v1/blocks/{id}  204
//	GET    /v1/blocks       one "hexid size" line per block, streamed
//	GET    /v1/cluster      ClusterInfo as JSON
//	GET    /v1/stats        NodeStats as JSON
func NewServer(cfg ServerConfig) http.Handler { panic("TODO") }

// Client talks to single nodes, addressed by their block API host:port.
// Its errors wrap persist.ErrNotFound, persist.ErrCorrupt and
// persist.ErrHashMismatch where the node answered so.
type Client struct{}

// NewClient returns a client that signs requests with secret and gives each
// request at most timeout (streaming bodies included) unless ctx ends sooner.
func NewClient(secret []byte, timeout time.Duration) *Client { panic("TODO") }

func (c *Client) Put(ctx context.Context, addr string, id persist.BlockID, data []byte) error {
	panic("TODO")
}

// Get fetches a block and verifies its hash (ErrCorrupt on mismatch).
func (c *Client) Get(ctx context.Context, addr string, id persist.BlockID) ([]byte, error) {
	panic("TODO")
}
func (c *Client) Has(ctx context.Context, addr string, id persist.BlockID) (bool, error) {
	panic("TODO")
}
func (c *Client) Delete(ctx context.Context, addr string, id persist.BlockID) error { panic("TODO") }
func (c *Client) List(ctx context.Context, addr string, fn func(id persist.BlockID, size int) error) error {
	panic("TODO")
}
func (c *Client) Cluster(ctx context.Context, addr string) (ClusterInfo, error) { panic("TODO") }
func (c *Client) Stats(ctx context.Context, addr string) (NodeStats, error)     { panic("TODO") }

// Replicator stores and fetches blocks on the mesh.
type Replicator struct{}

// NewReplicator uses members() for the current membership at each call and
// keeps r copies of each block.
func NewReplicator(c *Client, members func() []mesh.Member, r int) *Replicator { panic("TODO") }

// Write stores data (at most one block) on r distinct live nodes, trying the
// owners in placement order in parallel and moving down the order past nodes
// that fail. It returns once r nodes hold the block; with fewer than r live
// nodes it accepts a majority of r (r/2+1) copies, and otherwise fails with
// an error wrapping mesh.ErrNotEnoughNodes.
func (r *Replicator) Write(ctx context.Context, data []byte) (persist.BlockID, error) {
	panic("TODO")
}

// Read returns the block's content from the first node in placement order
// (then any other live node) that has a copy whose hash verifies. A corrupt
// copy or an unreachable node is skipped and logged.
func (r *Replicator) Read(ctx context.Context, id persist.BlockID) ([]byte, error) {
	panic("TODO")
}

// ClusterView keeps a client's view of the mesh fresh by asking any known
// node for /v1/cluster every interval. It is how a mount, which is not a
// gossip member, learns the members and the cluster settings.
type ClusterView struct{}

// NewClusterView asks the seeds (block API addresses) until one answers,
// retrying with backoff until ctx ends, then refreshes in a goroutine every
// interval until Close. Later refreshes try every member it has learned.
func NewClusterView(ctx context.Context, c *Client, seeds []string, interval time.Duration) (*ClusterView, error) {
	panic("TODO")
}

// Info returns the latest ClusterInfo.
func (v *ClusterView) Info() ClusterInfo { panic("TODO") }

// Members returns the latest members (for NewReplicator).
func (v *ClusterView) Members() []mesh.Member { panic("TODO") }

// Close stops the refresh goroutine and waits for it.
func (v *ClusterView) Close() { panic("TODO") }
