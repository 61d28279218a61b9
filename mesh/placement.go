package mesh

import (
	"encoding/binary"
	"slices"
	"strings"

	"github.com/meshfs/meshfs/persist"
)

// Placement orders members for a block by rendezvous (highest random weight)
// hashing: every member gets a weight from hash(block id, member name), and
// the block's owners are the members with the highest weights. It is a pure
// function of the block id and the member names, so every node and client
// agrees on it without talking, and adding or removing one member of N moves
// only the blocks that member wins or held: about 1/N of them.
//
// The weight function is part of the cluster's on-disk contract: every
// process must compute the same weights, and changing it moves almost every
// block. TestWeightGolden pins it.
//
// Zones: when the live members are in more than one zone (Member.Zone), a
// block's owners are spread over as many zones as there are: walking the
// placement order, a member is taken if no owner yet is in its zone, and
// the places left are then filled in placement order. So losing a whole
// zone loses at most the copies that zone held, never every copy while
// another zone has room. With one zone this is simply the first R.
type Placement struct{}

// Order returns members sorted from the block's first owner to its last
// candidate: by weight, highest first, ties by name. Callers take the first R
// live ones as owners and walk further down the list when an owner is down.
// members is not modified.
func (Placement) Order(id persist.BlockID, members []Member) []Member {
	// Sort weights with indexes, not Members: no pointers to move, so no
	// write barriers while sorting.
	type weighted struct {
		w uint64
		i int
	}
	k := blockKey(id)
	ws := make([]weighted, len(members))
	for i := range members {
		ws[i] = weighted{weight(k, nameKey(members[i].Name)), i}
	}
	slices.SortFunc(ws, func(a, b weighted) int {
		switch {
		case a.w > b.w:
			return -1
		case a.w < b.w:
			return 1
		}
		return strings.Compare(members[a.i].Name, members[b.i].Name)
	})
	out := make([]Member, len(ws))
	for i, w := range ws {
		out[i] = members[w.i]
	}
	return out
}

// OwnersFirst returns Order with the block's n owners (see Owners) moved to
// the front, in placement order: the order in which a writer tries nodes,
// and a reader looks for copies.
func (p Placement) OwnersFirst(id persist.BlockID, members []Member, n int) []Member {
	order := p.Order(id, members)
	owners := p.Owners(id, members, n)
	out := make([]Member, 0, len(order))
	out = append(out, owners...)
	for _, m := range order {
		if !slices.ContainsFunc(owners, func(o Member) bool { return o.Name == m.Name }) {
			out = append(out, m)
		}
	}
	return out
}

// Owners returns the block's n owners among the live members (fewer if
// fewer are live): the first n of Order, spread over zones (see Placement).
// Without zones it selects them in O(len(members)·n) without ranking the
// rest. members is not modified.
func (Placement) Owners(id persist.BlockID, members []Member, n int) []Member {
	var buf [8]int
	idx := NewTable(members).AppendOwners(buf[:0], id, n)
	if len(idx) == 0 {
		return nil
	}
	out := make([]Member, len(idx))
	for i, j := range idx {
		out[i] = members[j]
	}
	return out
}

// Table is a member list prepared for placing many blocks: each member's name
// is hashed once, so ranking a member for a block costs one 64-bit mix. It
// refers to members by their index in the slice given to NewTable, and agrees
// exactly with Placement.Order and Placement.Owners over that slice.
//
// A Table is immutable and safe for concurrent use. Build a new one when
// membership changes; it does not follow later edits to the slice.
type Table struct {
	names []string
	keys  []uint64 // nameKey of each member
	live  []bool
	zones []string
	// zoned: the live members are in more than one zone, so owners are
	// chosen for zones (see Placement) rather than as the first n.
	zoned bool
	// The live members alone, packed, for AppendOwners' inner loop.
	liveKeys []uint64
	liveIdx  []int
}

// NewTable prepares members for placement. Dead and left members keep their
// index (so a caller can rank a holder that is down) but are never owners.
func NewTable(members []Member) *Table {
	nlive := 0
	for i := range members {
		if members[i].Live() {
			nlive++
		}
	}
	t := &Table{
		names:    make([]string, len(members)),
		keys:     make([]uint64, len(members)),
		live:     make([]bool, len(members)),
		zones:    make([]string, len(members)),
		liveKeys: make([]uint64, 0, nlive),
		liveIdx:  make([]int, 0, nlive),
	}
	for i := range members {
		m := &members[i]
		t.names[i] = m.Name
		t.keys[i] = nameKey(m.Name)
		t.live[i] = m.Live()
		t.zones[i] = m.Zone
		if t.live[i] {
			if len(t.liveIdx) > 0 && m.Zone != t.zones[t.liveIdx[0]] {
				t.zoned = true
			}
			t.liveKeys = append(t.liveKeys, t.keys[i])
			t.liveIdx = append(t.liveIdx, i)
		}
	}
	return t
}

// Len returns the number of members, live or not.
func (t *Table) Len() int { return len(t.names) }

// Live returns the number of live members.
func (t *Table) Live() int { return len(t.liveIdx) }

// IsLive reports whether member i is alive or suspect.
func (t *Table) IsLive(i int) bool { return t.live[i] }

// Name returns member i's name.
func (t *Table) Name(i int) string { return t.names[i] }

// Weight returns member i's rendezvous weight for block id. Higher ranks
// first; equal weights (vanishingly rare) are broken by name, see Before.
func (t *Table) Weight(id persist.BlockID, i int) uint64 {
	return weight(blockKey(id), t.keys[i])
}

// Before reports whether member i comes before member j in block id's
// placement order. Whether a member is live does not matter. Rendezvous
// hashing ranks every pair independently of the others, which is why a join
// can be checked against a block's current owners alone.
func (t *Table) Before(id persist.BlockID, i, j int) bool {
	k := blockKey(id)
	return t.before(weight(k, t.keys[i]), i, weight(k, t.keys[j]), j)
}

func (t *Table) before(wi uint64, i int, wj uint64, j int) bool {
	return wi > wj || wi == wj && t.names[i] < t.names[j]
}

// Zoned reports whether the live members are in more than one zone.
func (t *Table) Zoned() bool { return t.zoned }

// AppendOwnersAmong appends to dst the indexes of the n members of cands
// (indexes into t, live or not) that would own block id if they were the
// only members: the first n in placement order, spread over zones, first
// owner first.
func (t *Table) AppendOwnersAmong(dst []int, id persist.BlockID, cands []int, n int) []int {
	k := blockKey(id)
	order := slices.Clone(cands)
	slices.SortFunc(order, func(a, b int) int {
		if t.before(weight(k, t.keys[a]), a, weight(k, t.keys[b]), b) {
			return -1
		}
		return 1
	})
	return t.pickZones(dst, order, n)
}

// pickZones appends to dst the first n of order (member indexes in
// placement order), spread over zones: a member is taken if no one taken
// yet shares its zone, then the places left go in order. They are appended
// in placement order, first owner first.
func (t *Table) pickZones(dst []int, order []int, n int) []int {
	taken := make([]bool, len(order))
	var zones []string // taken in the first pass, one member each
	for j, i := range order {
		if len(zones) < n && !slices.Contains(zones, t.zones[i]) {
			zones = append(zones, t.zones[i])
			taken[j] = true
		}
	}
	picked := len(zones)
	for j := 0; j < len(order) && picked < n; j++ {
		if !taken[j] {
			taken[j] = true
			picked++
		}
	}
	for j, i := range order {
		if taken[j] {
			dst = append(dst, i)
		}
	}
	return dst
}

// AppendOwners appends to dst the indexes of block id's n owners among the
// live members (fewer if fewer are live), first owner first, and returns the
// extended slice. Without zones it costs O(Len·n) and, when dst has room, no
// allocation for n ≤ 8.
func (t *Table) AppendOwners(dst []int, id persist.BlockID, n int) []int {
	n = min(n, len(t.liveIdx))
	if n <= 0 {
		return dst
	}
	if t.zoned {
		return t.AppendOwnersAmong(dst, id, t.liveIdx, n)
	}
	k := blockKey(id)
	base := len(dst)
	dst = append(dst, make([]int, n)...)
	top := dst[base:]
	// ws[j] is the weight of top[j]; both are kept best first. The first n
	// live members fill them, then each later one must beat the last.
	var small [8]uint64
	ws := small[:]
	if n > len(small) {
		ws = make([]uint64, n)
	}
	ws = ws[:n]
	m := 0
	keys := t.liveKeys
	for j := 0; j < len(keys); j++ {
		if m == n {
			// The common case, once the top n are found: most members
			// lose to the last place, and a tight loop skips them.
			if j = skipBelow(k, keys, j, ws[n-1]); j == len(keys) {
				break
			}
		}
		w, i := weight(k, keys[j]), t.liveIdx[j]
		if m == n {
			if !t.before(w, i, ws[n-1], top[n-1]) {
				continue
			}
			m-- // i takes the last place's slot
		}
		p := m
		for p > 0 && t.before(w, i, ws[p-1], top[p-1]) {
			ws[p], top[p] = ws[p-1], top[p-1]
			p--
		}
		ws[p], top[p] = w, i
		m++
	}
	return dst
}

// skipBelow returns the first j ≥ from whose weight is at least floor, or
// len(keys).
func skipBelow(blockKey uint64, keys []uint64, from int, floor uint64) int {
	for j := from; j < len(keys); j++ {
		if weight(blockKey, keys[j]) >= floor {
			return j
		}
	}
	return len(keys)
}

// blockKey takes the first 8 bytes of the block id. The id is a SHA-256, so
// they are already uniform; the rest adds nothing to the placement.
func blockKey(id persist.BlockID) uint64 { return binary.BigEndian.Uint64(id[:8]) }

// nameKey hashes a member name with 64-bit FNV-1a (no seed: it must agree
// in every process) and mixes the result, so names that differ in one
// character get unrelated keys.
func nameKey(name string) uint64 {
	const offset, prime = 14695981039346656037, 1099511628211
	h := uint64(offset)
	for i := 0; i < len(name); i++ {
		h ^= uint64(name[i])
		h *= prime
	}
	return mix64(h)
}

// weight combines a block key and a name key. Both are uniform, and mix64 is
// a bijection with full avalanche, so the weights of one block for different
// members behave as independent uniform draws: what rendezvous hashing needs
// for each member to win 1/N of the blocks.
func weight(blockKey, nameKey uint64) uint64 { return mix64(blockKey ^ nameKey) }

// mix64 is the splitmix64 finalizer (Stafford's variant 13).
func mix64(z uint64) uint64 {
	z = (z ^ z>>30) * 0xbf58476d1ce4e5b9
	z = (z ^ z>>27) * 0x94d049bb133111eb
	return z ^ z>>31
}
