package netns

import (
	"fmt"
	"maps"
	"time"
)

// Shape is what the router does to the packets of a link: it holds each
// for Delay plus a uniform random amount in [-Jitter, +Jitter] (never less
// than zero), and drops each with probability Loss (0 to 1). The zero
// Shape leaves packets alone. Without jitter a delayed link keeps the
// order of its packets; with jitter it reorders them, as a real one would.
type Shape struct {
	Delay  time.Duration
	Jitter time.Duration
	Loss   float64
}

func (s Shape) valid() error {
	if s.Delay < 0 || s.Jitter < 0 || !(s.Loss >= 0 && s.Loss <= 1) {
		return fmt.Errorf("invalid shape %+v: delay and jitter must be >= 0, loss in [0, 1]", s)
	}
	return nil
}

// plus is the shape of a packet that both s and o apply to: delays and
// jitters add, and it survives only if it survives both losses.
func (s Shape) plus(o Shape) Shape {
	return Shape{
		Delay:  s.Delay + o.Delay,
		Jitter: s.Jitter + o.Jitter,
		Loss:   1 - (1-s.Loss)*(1-o.Loss),
	}
}

// policy is what the router does to a packet from one address to another,
// each named by its last byte. A policy is never changed once the router
// can see it: a change builds a new one (with) and swaps it in, so that
// the router reads it without a lock.
type policy struct {
	// partitioned is false when every group is 0, so that the router does
	// not look.
	partitioned bool
	group       [256]int

	// shaped is false when no shape is set, so that the router does not
	// look.
	shaped  bool
	host    [256]Shape
	between map[linkKey]Shape
}

// linkKey names the direction from one address to another.
type linkKey struct{ from, to byte }

// cut reports whether a partition drops packets from one address to
// another.
func (p *policy) cut(from, to byte) bool {
	return p.partitioned && p.group[from] != p.group[to]
}

// link is the shape of packets from one address to another.
func (p *policy) link(from, to byte) Shape {
	s := p.host[from].plus(p.host[to])
	if b, ok := p.between[linkKey{from, to}]; ok {
		s = s.plus(b)
	}
	return s
}

// with returns a copy of p changed by change.
func (p *policy) with(change func(*policy)) *policy {
	q := *p
	q.between = maps.Clone(p.between)
	change(&q)
	q.partitioned = false
	for _, g := range q.group {
		q.partitioned = q.partitioned || g != 0
	}
	q.shaped = len(q.between) > 0
	for _, s := range q.host {
		q.shaped = q.shaped || s != Shape{}
	}
	return &q
}

// Partition splits the network: from now on, a packet between hosts of
// different groups is dropped (and so is one still held by a delay when it
// comes due). Hosts named in no group, and the root namespace, are in
// groups[0]: they reach its hosts and each other, and no host of the other
// groups. Partition replaces any earlier partition; a host may be in one
// group only.
func (n *Net) Partition(groups ...[]*Host) error {
	var group [256]int
	var seen [256]bool
	for g, hosts := range groups {
		for _, h := range hosts {
			if err := n.owns(h); err != nil {
				return fmt.Errorf("partition: %w", err)
			}
			if seen[h.index] {
				return fmt.Errorf("partition: host %s is in more than one group", h.Name)
			}
			seen[h.index] = true
			group[h.index] = g
		}
	}
	n.changePolicy(func(p *policy) { p.group = group })
	n.log.Info("partition", "groups", groupNames(groups))
	return nil
}

// Heal removes the partition: every host reaches every other again.
func (n *Net) Heal() {
	n.changePolicy(func(p *policy) { p.group = [256]int{} })
	n.log.Info("heal")
}

// ShapeHost shapes every packet host h sends and every packet it receives,
// replacing the shape ShapeHost gave it earlier; the zero Shape removes
// it. A round trip between h and an unshaped host takes 2×Delay more, and
// loses a packet with probability 1-(1-Loss)² (one for each way).
func (n *Net) ShapeHost(h *Host, s Shape) error {
	if err := n.owns(h); err != nil {
		return fmt.Errorf("shape host: %w", err)
	}
	if err := s.valid(); err != nil {
		return fmt.Errorf("shape host %s: %w", h.Name, err)
	}
	n.changePolicy(func(p *policy) { p.host[h.index] = s })
	n.log.Info("shape host", "host", h.Name, "delay", s.Delay, "jitter", s.Jitter, "loss", s.Loss)
	return nil
}

// ShapeBetween shapes every packet between a host in a and a host in b,
// both ways, replacing the shape ShapeBetween gave each such pair earlier;
// the zero Shape removes it. For zones: ShapeBetween(zoneA, zoneB, Shape{
// Delay: 25*time.Millisecond}) makes a 50 ms round trip between the zones
// and none within them. It adds up with ShapeHost. A host in both a and b
// is not shaped to itself.
func (n *Net) ShapeBetween(a, b []*Host, s Shape) error {
	for _, h := range append(a[:len(a):len(a)], b...) {
		if err := n.owns(h); err != nil {
			return fmt.Errorf("shape between: %w", err)
		}
	}
	if err := s.valid(); err != nil {
		return fmt.Errorf("shape between: %w", err)
	}
	n.changePolicy(func(p *policy) {
		if p.between == nil {
			p.between = make(map[linkKey]Shape)
		}
		for _, x := range a {
			for _, y := range b {
				if x == y {
					continue
				}
				for _, k := range []linkKey{{x.index, y.index}, {y.index, x.index}} {
					if s == (Shape{}) {
						delete(p.between, k)
					} else {
						p.between[k] = s
					}
				}
			}
		}
	})
	n.log.Info("shape between", "a", hostNames(a), "b", hostNames(b), "delay", s.Delay, "jitter", s.Jitter, "loss", s.Loss)
	return nil
}

// changePolicy swaps in a copy of the current policy changed by change.
// The lock keeps two changes from building on the same old policy.
func (n *Net) changePolicy(change func(*policy)) {
	n.policyMu.Lock()
	defer n.policyMu.Unlock()
	n.policy.Store(n.policy.Load().with(change))
}

func hostNames(hosts []*Host) []string {
	names := make([]string, len(hosts))
	for i, h := range hosts {
		names[i] = h.Name
	}
	return names
}

func groupNames(groups [][]*Host) [][]string {
	names := make([][]string, len(groups))
	for i, g := range groups {
		names[i] = hostNames(g)
	}
	return names
}
