package blocknet

import (
	"errors"
	"log/slog"
	"math"
	"net/http"
	"sync"
	"time"

	"github.com/meshfs/meshfs/mesh"
	"github.com/meshfs/meshfs/persist"
)

// Hedging: a node whose link is slow or lossy answers, but late. Waiting for
// it caps a client's throughput at that node's pace, so the Replicator asks
// another node once one is late (a hedge), and remembers the late node so
// that later calls ask it last instead of hedging around it every time.
const (
	// readHedgeDefault is the hedge delay before any read has completed:
	// a block read on a LAN takes a few ms (64 KiB) to a few tens of ms
	// (4 MiB), so 100 ms is late without being trigger-happy.
	readHedgeDefault = 100 * time.Millisecond
	// readHedgeFloor keeps scheduling noise and GC pauses from hedging
	// healthy reads of small blocks on a fast link, where the estimate can
	// drop to a millisecond.
	readHedgeFloor = 30 * time.Millisecond
	// readHedgeCeiling bounds the wait for a late node however slow reads
	// have been lately: past a second, asking another node costs less
	// than the throughput lost by waiting.
	readHedgeCeiling = time.Second
	// maxReadsInFlight bounds the copies one Read asks for at once, so a
	// read never costs more than a few times its bytes, even when every
	// node is late.
	maxReadsInFlight = 3
	// writeHedgeFloor is the least a write waits, once a majority of its
	// copies is stored, before giving a late copy to another node. Well
	// above the read floor: a hedged put sends a whole block more and
	// places it on a non-owner that repair must move later, so a node
	// merely busy for a moment (a loaded machine, a GC pause) must not
	// trigger it.
	writeHedgeFloor = 150 * time.Millisecond
)

// Penalties for late and failing nodes. A node's score grows by one for
// each time it was overtaken by a hedge or failed, is capped at
// slowScoreCap, and halves every slowHalfLife; the node is asked after the
// others while its score is at least slowThreshold. So one late answer
// demotes a node for 10 s and a node late again and again for 30 s at most
// after its last offence: then it is asked first again, and if it is still
// slow, a single hedge demotes it anew. That probe costs one hedge delay
// per 30 s, and needs no background goroutine.
const (
	slowHalfLife  = 10 * time.Second
	slowScoreCap  = 4.0 // log2(4/0.5) = 3 half-lives: 30 s
	slowThreshold = 0.5
	// slowLogEvery rate-limits the Info line naming a demoted node: a node
	// on a lossy link may be demoted and forgiven over and over.
	slowLogEvery = time.Minute
)

// readLatency estimates how long a successful block read takes, the way TCP
// estimates a round trip (RFC 6298): a smoothed mean (gain 1/8) and a
// smoothed mean deviation (gain 1/4), hedging after mean + 4 deviations. It
// is safe for concurrent use.
//
// Samples are not normalised by block size: Read is asked for a block by
// id, so the size of the block in hand is unknown until it arrives, and a
// per-byte estimate could not be scaled to it. A mix of 64 KiB and 4 MiB
// reads instead widens the deviation term, so the hedge waits long enough
// for a large block; small reads then hedge later than they could, which
// costs latency only on the rare late node.
type readLatency struct {
	mu     sync.Mutex
	n      int // samples so far
	mean   time.Duration
	spread time.Duration // smoothed mean deviation from mean
}

// observe adds the latency of one successful read.
func (l *readLatency) observe(d time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.n == 0 {
		l.mean, l.spread = d, d/2
	} else {
		dev := max(l.mean-d, d-l.mean)
		l.spread += (dev - l.spread) / 4
		l.mean += (d - l.mean) / 8
	}
	l.n++
}

// hedgeDelay is how long a read waits for a node before asking the next.
func (l *readLatency) hedgeDelay() time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.n == 0 {
		return readHedgeDefault
	}
	return min(max(l.mean+4*l.spread, readHedgeFloor), readHedgeCeiling)
}

// writeHedgeDelay is how long a write that holds a majority of its copies
// waits for the rest before giving them to other nodes. The puts of one
// block carry the same bytes from the same sender and start together, so
// on healthy nodes they end close together: one still out after twice
// what the majority took (and at least the floor) is late.
func writeHedgeDelay(majorityTook time.Duration) time.Duration {
	return max(2*majorityTook, writeHedgeFloor)
}

// slowNodes remembers which nodes were late or failing lately (see the
// penalty constants), by node name. It is safe for concurrent use.
type slowNodes struct {
	now    func() time.Time
	logger *slog.Logger // nil: slog.Default() at the time of logging

	mu    sync.Mutex
	nodes map[string]*slowNode
}

type slowNode struct {
	score  float64   // as of at
	at     time.Time // when score was last brought up to date
	logged time.Time // last Info line about this node
}

func newSlowNodes() *slowNodes {
	return &slowNodes{now: time.Now, nodes: make(map[string]*slowNode)}
}

// decayed brings n's score up to now.
func (n *slowNode) decayed(now time.Time) float64 {
	if el := now.Sub(n.at); el > 0 {
		n.score *= math.Exp2(-float64(el) / float64(slowHalfLife))
		n.at = now
	}
	return n.score
}

// penalise records that node was late or failed (why says how, for the
// log), logging at Info when this demotes it.
func (s *slowNodes) penalise(node, why string) {
	s.mu.Lock()
	now := s.now()
	n := s.nodes[node]
	if n == nil {
		n = &slowNode{at: now}
		s.nodes[node] = n
	}
	was := n.decayed(now) >= slowThreshold
	n.score = min(n.score+1, slowScoreCap)
	logIt := !was && now.Sub(n.logged) >= slowLogEvery
	if logIt {
		n.logged = now
	}
	score := n.score
	s.mu.Unlock()
	if logIt {
		log := s.logger
		if log == nil {
			log = slog.Default()
		}
		log.Info("block node is slow or failing: asking it after the others for a while",
			"node", node, "why", why, "score", score)
	}
}

// slow reports whether node is demoted now.
func (s *slowNodes) slow(node string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.nodes[node]
	if n == nil {
		return false
	}
	now := s.now()
	if n.decayed(now) >= slowThreshold {
		return true
	}
	// Forgiven: forget it once its log line may repeat anyway, so that
	// names of nodes long gone do not pile up.
	if now.Sub(n.logged) >= slowLogEvery && n.score < 0.01 {
		delete(s.nodes, node)
	}
	return false
}

// order moves the demoted nodes of ms behind the others, keeping placement
// order within each group: a block's reads keep going to the same node, and
// a write still prefers the owners among the nodes that are not slow.
// ms is not modified (it is returned as is when no node is demoted).
func (s *slowNodes) order(ms []mesh.Member) []mesh.Member {
	s.mu.Lock()
	none := len(s.nodes) == 0
	s.mu.Unlock()
	if none {
		return ms // the usual case: nobody was late lately
	}
	out := make([]mesh.Member, 0, len(ms))
	var late []mesh.Member
	for _, m := range ms {
		if s.slow(m.Name) {
			late = append(late, m)
		} else {
			out = append(out, m)
		}
	}
	return append(out, late...)
}

// nodeFailed reports whether err means the node could not serve a request
// (no answer in time, a refused or broken connection, a server error), as
// opposed to a definite answer about the block or the node's disk (not
// found, corrupt, too large, hash mismatch, disk full), which says nothing
// about its speed. The caller rules out its own cancellation first.
func nodeFailed(err error) bool {
	if errors.Is(err, persist.ErrCorrupt) {
		return false
	}
	if se := (*statusError)(nil); errors.As(err, &se) {
		return se.code >= 500 && se.code != http.StatusInsufficientStorage
	}
	return true
}
