// Package mesh holds everything of meshfs that crosses the network:
// membership (gossip through memberlist), placement (which members own a
// block), and the shared description of a member. The block transport lives
// in mesh/blocknet and the metadata store in mesh/meta.
package mesh
