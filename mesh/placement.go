package mesh

import (
	"crypto/sha256"
	"encoding/binary"
	"sort"

	"github.com/meshfs/meshfs/persist"
)

// Placement orders members for a block by rendezvous (highest random weight)
// hashing: every member gets a weight from hash(block id, member name), and
// the block's owners are the members with the highest weights. It is a pure
// function of the block id and the member names, so every node and client
// agrees on it without talking, and adding or removing one member of N moves
// only the blocks that member wins or held: about 1/N of them.
type Placement struct{}

// Order returns members sorted from the block's first owner to its last
// candidate. Callers take the first R live ones as owners and walk further
// down the list when an owner is down. members is not modified.
func (Placement) Order(id persist.BlockID, members []Member) []Member {
	type weighted struct {
		w uint64
		m Member
	}
	ws := make([]weighted, len(members))
	for i, m := range members {
		ws[i] = weighted{weight(id, m.Name), m}
	}
	sort.Slice(ws, func(i, j int) bool {
		if ws[i].w != ws[j].w {
			return ws[i].w > ws[j].w
		}
		return ws[i].m.Name < ws[j].m.Name
	})
	out := make([]Member, len(ws))
	for i, w := range ws {
		out[i] = w.m
	}
	return out
}

// Owners returns the first n members of Order among the live ones.
func (p Placement) Owners(id persist.BlockID, members []Member, n int) []Member {
	var out []Member
	for _, m := range p.Order(id, members) {
		if len(out) == n {
			break
		}
		if m.Live() {
			out = append(out, m)
		}
	}
	return out
}

// weight mixes the block id and the member name. The block id is already a
// uniform hash, so hashing it again with the name gives independent weights.
func weight(id persist.BlockID, name string) uint64 {
	h := sha256.New()
	h.Write(id[:])
	h.Write([]byte(name))
	var sum [32]byte
	return binary.BigEndian.Uint64(h.Sum(sum[:0]))
}
