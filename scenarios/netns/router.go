package netns

import (
	"errors"
	"math/rand/v2"
	"os"
	"sync/atomic"
	"time"
)

// port is one TUN device of a Net: the root namespace's, or a host's.
type port struct {
	index byte   // last byte of its address
	name  string // the host's name, or "root"
	dev   string // the TUN device's name
	tun   *os.File
	queue *delayQueue // packets delayed on their way to this port
}

// counters are the router's statistics, counted as packets go.
type counters struct {
	forwarded, partitioned, lost, unknown, notIPv4, queueFull, writeErrors atomic.Uint64
}

// Stats counts the packets the router has handled since New.
type Stats struct {
	Forwarded        uint64 // written to their destination's TUN device
	DroppedPartition uint64 // between groups of a partition
	DroppedLoss      uint64 // by a Shape's Loss
	DroppedUnknown   uint64 // to an address that is no host's (broadcasts, too)
	DroppedNotIPv4   uint64 // IPv6 and anything else that is not IPv4
	DroppedQueueFull uint64 // to a destination whose delay queue was full
	WriteErrors      uint64 // refused by the destination's TUN device (down, closed)
}

// Stats returns the router's counts so far.
func (n *Net) Stats() Stats {
	c := &n.counts
	return Stats{
		Forwarded:        c.forwarded.Load(),
		DroppedPartition: c.partitioned.Load(),
		DroppedLoss:      c.lost.Load(),
		DroppedUnknown:   c.unknown.Load(),
		DroppedNotIPv4:   c.notIPv4.Load(),
		DroppedQueueFull: c.queueFull.Load(),
		WriteErrors:      c.writeErrors.Load(),
	}
}

// start runs p's reader and delay queue until Close.
func (n *Net) start(p *port) {
	n.ports[p.index].Store(p)
	n.wg.Add(2)
	go func() {
		defer n.wg.Done()
		n.read(p)
	}()
	go func() {
		defer n.wg.Done()
		p.queue.drain(n.stop, func(d delayed) {
			if n.policy.Load().cut(d.from, p.index) {
				n.counts.partitioned.Add(1)
				return
			}
			n.send(p, d.pkt)
		})
	}()
}

// read routes every packet that leaves by p's TUN device, until its file
// is closed.
func (n *Net) read(p *port) {
	// One packet per read, never more than the MTU; the slack is for
	// safety, a packet that does not fit would be cut short.
	buf := make([]byte, tunMTU+256)
	// Each reader has its own random source: no lock between readers, and
	// a run with one seed draws the same losses for the same packets of
	// each port.
	rng := rand.New(rand.NewPCG(n.seed, uint64(p.index)))
	for {
		k, err := p.tun.Read(buf)
		if err != nil {
			if errors.Is(err, os.ErrClosed) {
				return
			}
			n.log.Warn("read from TUN device", "host", p.name, "dev", p.dev, "err", err)
			select {
			case <-n.stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
			continue
		}
		n.route(p, buf[:k], rng)
	}
}

// route sends pkt, which left by from's TUN device, to its destination:
// now, later, or never, as the policy says.
func (n *Net) route(from *port, pkt []byte, rng *rand.Rand) {
	if len(pkt) < 20 || pkt[0]>>4 != 4 {
		n.counts.notIPv4.Add(1)
		return
	}
	if [3]byte(pkt[16:19]) != n.network {
		n.counts.unknown.Add(1)
		return
	}
	to := n.ports[pkt[19]].Load()
	if to == nil {
		n.counts.unknown.Add(1)
		return
	}
	pol := n.policy.Load()
	if pol.cut(from.index, to.index) {
		n.counts.partitioned.Add(1)
		return
	}
	if !pol.shaped {
		n.send(to, pkt)
		return
	}
	s := pol.link(from.index, to.index)
	if s.Loss > 0 && rng.Float64() < s.Loss {
		n.counts.lost.Add(1)
		return
	}
	delay := s.Delay
	if s.Jitter > 0 {
		delay += time.Duration(rng.Int64N(2*int64(s.Jitter)+1)) - s.Jitter
	}
	if delay <= 0 {
		n.send(to, pkt)
		return
	}
	if !to.queue.push(from.index, pkt, time.Now().Add(delay)) {
		n.counts.queueFull.Add(1)
	}
}

// send writes pkt to to's TUN device: the kernel of to's namespace
// receives it.
func (n *Net) send(to *port, pkt []byte) {
	if _, err := to.tun.Write(pkt); err != nil {
		n.counts.writeErrors.Add(1)
		if !errors.Is(err, os.ErrClosed) {
			n.log.Debug("write to TUN device", "host", to.name, "dev", to.dev, "err", err)
		}
		return
	}
	n.counts.forwarded.Add(1)
}
