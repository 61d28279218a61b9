package netns

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"regexp"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// tunMTU is the MTU of every TUN device of a Net. The router's cost is per packet (a read and a write), so
// large packets move more bytes per second: on a 2-core machine a TCP
// stream between two hosts moved about 0.4 GB/s at 1500, 1 GB/s at 9000
// and 1.2 GB/s at 16384; 65000 (about the most TUN takes) was faster or
// slower from run to run. 16384 is plenty, and keeps many packets in a
// TCP window, so that loss and delay act on a stream as on a real link.
const tunMTU = 16384

// rootIndex is the last byte of the root namespace's address; hosts take
// the bytes after it.
const rootIndex = 1

// Net is a network of hosts, each in its own network namespace, and the
// root namespace, joined by a router in this process. Its methods may be
// called from any goroutine.
type Net struct {
	prefix  string
	log     *slog.Logger
	subnet  netip.Prefix
	network [3]byte // the first three bytes of every address of subnet
	seed    uint64

	// ports are the TUN devices, by the last byte of their address; the
	// router reads them without a lock.
	ports [256]atomic.Pointer[port]

	policy   atomic.Pointer[policy]
	policyMu sync.Mutex // serialises changes to policy

	counts counters

	stop chan struct{}  // closed by Close: the router's goroutines return
	wg   sync.WaitGroup // the router's goroutines

	mu     sync.Mutex // serialises Add and Close
	hosts  []*Host
	closed bool
}

// Option changes a default of New.
type Option func(*Net)

// Seed seeds the random drops and jitter of the router (the /24 is drawn
// from a source of its own, so that Nets with one seed do not collide).
// Without it the seed is random.
func Seed(seed uint64) Option { return func(n *Net) { n.seed = seed } }

var prefixPattern = regexp.MustCompile(`^[a-z0-9]{1,8}$`)

// New makes a Net named prefix (1 to 8 of a-z and 0-9): its namespaces are
// named prefix-NAME, and its TUN devices prefix-r (the root namespace's)
// and prefix-hN, so that a run's leftovers can be found and removed
// (RemoveStale). It claims a free /24 in 10.0.0.0/8, gives the root
// namespace its .1 and starts the router. The caller must Close it. A nil
// logger discards.
func New(ctx context.Context, prefix string, logger *slog.Logger, opts ...Option) (*Net, error) {
	if !prefixPattern.MatchString(prefix) {
		return nil, fmt.Errorf("new network %q: the prefix must be 1 to 8 of a-z and 0-9", prefix)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	n := &Net{
		prefix: prefix,
		log:    logger.With("net", prefix),
		seed:   rand.Uint64(),
		stop:   make(chan struct{}),
	}
	for _, o := range opts {
		o(n)
	}
	n.policy.Store(&policy{})

	root, err := n.claimSubnet(ctx)
	if err != nil {
		return nil, fmt.Errorf("new network %s: %w", prefix, err)
	}
	n.start(root)
	n.log.Info("network up", "subnet", n.subnet, "root", n.RootIP(), "dev", root.dev, "mtu", tunMTU, "seed", n.seed)
	return n, nil
}

// claimSubnet draws a free /24, gives its .1 to a new TUN device in the
// root namespace and returns that device. Another process may draw the
// same /24 at the same moment: if, once the address is set, a route of
// another device overlaps the /24, it lets it go and draws again.
func (n *Net) claimSubnet(ctx context.Context) (*port, error) {
	dev := n.prefix + "-r"
	for range 5 {
		rs, err := routes(ctx)
		if err != nil {
			return nil, err
		}
		subnet, err := pickSubnet(rs)
		if err != nil {
			return nil, err
		}
		n.subnet = subnet
		n.network = [3]byte(subnet.Addr().AsSlice()[:3])
		tun, err := openTUN(dev)
		if err != nil {
			return nil, err
		}
		p := &port{index: rootIndex, name: "root", dev: dev, tun: tun, queue: newDelayQueue()}
		err = n.configureRoot(ctx, p)
		if err == nil {
			if rs, err = routes(ctx); err == nil && !conflicts(subnet, rs, dev) {
				return p, nil
			}
			if err == nil {
				err = fmt.Errorf("subnet %s was claimed by another device at the same time", subnet)
			}
		}
		tun.Close()
		if ctx.Err() != nil {
			return nil, err
		}
		n.log.Warn("claim subnet", "subnet", subnet, "err", err)
	}
	return nil, fmt.Errorf("claim a /24 in 10.0.0.0/8: gave up after 5 tries")
}

func (n *Net) configureRoot(ctx context.Context, p *port) error {
	if err := runIP(ctx, "address", "add", n.addr(p.index).String()+"/24", "dev", p.dev); err != nil {
		return fmt.Errorf("configure root TUN device: %w", err)
	}
	if err := runIP(ctx, "link", "set", "dev", p.dev, "mtu", strconv.Itoa(tunMTU), "up"); err != nil {
		return fmt.Errorf("configure root TUN device: %w", err)
	}
	return nil
}

// addr is the address of subnet whose last byte is index.
func (n *Net) addr(index byte) netip.Addr {
	return netip.AddrFrom4([4]byte{n.network[0], n.network[1], n.network[2], index})
}

// RootIP is the address of the root namespace in the network: the address
// hosts reach the scenario's own process at.
func (n *Net) RootIP() netip.Addr { return n.addr(rootIndex) }

// Subnet is the /24 of the network.
func (n *Net) Subnet() netip.Prefix { return n.subnet }

var namePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$`)

// Add makes host name: a network namespace prefix-name with lo up and a TUN
// device holding the next free address of the network (root is .1, the
// first host .2), with the MTU of the network and the route to it.
func (n *Net) Add(ctx context.Context, name string) (*Host, error) {
	if !namePattern.MatchString(name) {
		return nil, fmt.Errorf("add host %q: a name is 1 to 32 of A-Z, a-z, 0-9, '_', '.', '-', not starting with one of the last three", name)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return nil, fmt.Errorf("add host %s: network %s is closed", name, n.prefix)
	}
	for _, h := range n.hosts {
		if h.Name == name {
			return nil, fmt.Errorf("add host %s: there is one already", name)
		}
	}
	index := rootIndex + 1 + len(n.hosts)
	if index > 254 {
		return nil, fmt.Errorf("add host %s: the network is full (253 hosts)", name)
	}
	h := &Host{Name: name, net: n, index: byte(index), ip: n.addr(byte(index)), netns: n.prefix + "-" + name}
	p, err := n.makeHost(ctx, h)
	if err != nil {
		return nil, fmt.Errorf("add host %s: %w", name, err)
	}
	n.hosts = append(n.hosts, h)
	n.start(p)
	n.log.Info("host up", "host", name, "ip", h.ip, "netns", h.NetnsPath(), "dev", p.dev)
	return h, nil
}

// makeHost makes h's namespace and TUN device. If it fails, it undoes what
// it did.
func (n *Net) makeHost(ctx context.Context, h *Host) (_ *port, err error) {
	dev := fmt.Sprintf("%s-h%d", n.prefix, h.index)
	if err := runIP(ctx, "netns", "add", h.netns); err != nil {
		return nil, fmt.Errorf("create namespace: %w", err)
	}
	defer func() {
		if err != nil {
			if derr := deleteNamespace(h.netns); derr != nil {
				n.log.Warn("undo namespace", "netns", h.netns, "err", derr)
			}
		}
	}()
	tun, err := openTUN(dev)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			tun.Close()
		}
	}()
	// The device moves; the file this process holds stays its file.
	steps := [][]string{
		{"link", "set", "dev", dev, "netns", h.netns},
		{"-n", h.netns, "link", "set", "dev", "lo", "up"},
		{"-n", h.netns, "address", "add", h.ip.String() + "/24", "dev", dev},
		{"-n", h.netns, "link", "set", "dev", dev, "mtu", strconv.Itoa(tunMTU), "up"},
	}
	for _, args := range steps {
		if err := runIP(ctx, args...); err != nil {
			return nil, err
		}
	}
	return &port{index: h.index, name: h.Name, dev: dev, tun: tun, queue: newDelayQueue()}, nil
}

// owns returns an error unless h is a host of n.
func (n *Net) owns(h *Host) error {
	if h == nil {
		return errors.New("nil host")
	}
	if h.net != n {
		return fmt.Errorf("host %s is not of network %s", h.Name, n.prefix)
	}
	return nil
}

// Close stops the router (every goroutine of n has returned when it
// returns), closes the TUN devices, which removes them, and deletes the
// namespaces of the hosts. It does not stop processes: stop what you
// started in hosts first, or their namespaces outlive Close, anonymously,
// until they exit. Close may be called more than once; later calls return
// nil.
func (n *Net) Close() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return nil
	}
	n.closed = true
	close(n.stop)
	var errs []error
	for i := range n.ports {
		if p := n.ports[i].Load(); p != nil {
			if err := p.tun.Close(); err != nil {
				errs = append(errs, fmt.Errorf("close TUN device %s: %w", p.dev, err))
			}
		}
	}
	n.wg.Wait()
	for _, h := range n.hosts {
		if err := deleteNamespace(h.netns); err != nil {
			errs = append(errs, err)
		}
	}
	n.log.Info("network down", "stats", n.Stats())
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("close network %s: %w", n.prefix, err)
	}
	return nil
}

// deleteNamespace deletes a named namespace, with a time limit of its own:
// it runs on the way out, when the caller's context may be done.
func deleteNamespace(name string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := runIP(ctx, "netns", "delete", name); err != nil {
		return fmt.Errorf("delete namespace %s: %w", name, err)
	}
	return nil
}
