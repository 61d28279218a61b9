package mesh

import (
	"crypto/sha256"
	"encoding/hex"
)

// Secret is the one secret every node and mount of a mesh shares. Every key
// is derived from it with a label of its own, so no two uses share a key
// and none of them reveals the secret.
type Secret []byte

func (s Secret) derive(label string) []byte {
	h := sha256.New()
	h.Write([]byte("meshfs " + label + "\x00"))
	h.Write(s)
	return h.Sum(nil)
}

// ClusterID names the cluster a data dir belongs to.
func (s Secret) ClusterID() string { return hex.EncodeToString(s.derive("cluster id"))[:16] }

// BlockKey signs block API requests.
func (s Secret) BlockKey() []byte { return s.derive("block api") }

// GossipKey encrypts gossip (an AES-256 key).
func (s Secret) GossipKey() []byte { return s.derive("gossip") }

// NATSToken is the embedded NATS servers' client token.
func (s Secret) NATSToken() string { return hex.EncodeToString(s.derive("nats token")) }
