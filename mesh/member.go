package mesh

import (
	"errors"
	"time"
)

// ErrNotEnoughNodes is returned when too few live members hold, or can take,
// copies of a block.
var ErrNotEnoughNodes = errors.New("not enough live nodes")

// State is a member's liveness as the gossip layer sees it.
type State string

// Member states, as reported by memberlist.
const (
	StateAlive   State = "alive"
	StateSuspect State = "suspect"
	StateDead    State = "dead"
	StateLeft    State = "left"
)

// Member is one data node as every other member and every client sees it.
// It travels as memberlist node meta (JSON) and in the block API's member
// listing.
type Member struct {
	Name   string `json:"name"`
	Gossip string `json:"gossip"` // host:port of memberlist
	HTTP   string `json:"http"`   // host:port of the block API
	NATS   string `json:"nats"`   // host:port of the embedded NATS client listener
	// Route is the embedded NATS server's cluster URL
	// (nats-route://host:port): the servers learn each other's routes here
	// and form one JetStream cluster that holds the metadata.
	Route    string `json:"route,omitempty"`
	Zone     string `json:"zone,omitempty"`
	Capacity int64  `json:"capacity,omitempty"` // bytes the node may store; 0 = unknown
	// MetaHome marks the node the mesh was started on, which created the
	// file system. Two of them in one mesh are two meshes joined by mistake.
	MetaHome bool `json:"meta_home,omitempty"`
	// BlockSize and Replicas are the cluster's settings as this node knows
	// them; a node joining with a fresh data dir adopts them from its peers.
	BlockSize int   `json:"block_size,omitempty"`
	Replicas  int   `json:"replicas,omitempty"`
	State     State `json:"state"`
	// Since is when this process saw State begin (local clock; zero for
	// this node itself). Repair waits a delay from a death before copying.
	Since time.Time `json:"since,omitzero"`
}

// Live reports whether the member should be given and asked for blocks.
func (m Member) Live() bool { return m.State == StateAlive || m.State == StateSuspect }
