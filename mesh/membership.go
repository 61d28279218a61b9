package mesh

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"math/rand/v2"
	"net"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

// MembershipConfig configures a node's gossip membership.
type MembershipConfig struct {
	// Self is this node as others should see it (Name and Gossip required).
	Self Member
	// Secret is the cluster secret; it keys gossip encryption, so a process
	// without it cannot join or read the gossip.
	Secret Secret
	// Logger receives memberlist's log lines; nil = slog.Default().
	Logger *slog.Logger
	// Tune, if set, may adjust memberlist's config before it starts (tests
	// and WAN-style settings).
	Tune func(*memberlist.Config)
	// ReconnectInterval is how often the node tries to gossip with one
	// member it holds dead (0: every 2 s). See reconnect.
	ReconnectInterval time.Duration
}

// Gossip profiles: how fast failures are detected, against how slow a
// link may be before a live member is taken for dead.
const (
	// GossipLAN suits loopback and one site (round trips of a few ms): a
	// dead node is noticed within a few seconds.
	GossipLAN = "lan"
	// GossipWAN suits a mesh spread over sites, with round trips of up
	// to a few hundred ms between them: probes wait 1.5 s (LAN: 250 ms)
	// and suspicion lasts longer, so a far member is not declared dead
	// for a slow answer; a dead node is noticed in about 10 to 15 s when
	// others confirm the suspicion (up to a minute alone).
	GossipWAN = "wan"
)

// GossipProfile returns the memberlist settings of a profile (GossipLAN,
// GossipWAN), for MembershipConfig.Tune: nil for GossipLAN, which is
// NewMembership's own.
func GossipProfile(name string) (func(*memberlist.Config), error) {
	switch name {
	case GossipLAN, "":
		return nil, nil // NewMembership's own settings
	case GossipWAN:
		return func(mc *memberlist.Config) {
			mc.ProbeInterval = 3 * time.Second
			mc.ProbeTimeout = 1500 * time.Millisecond
			mc.SuspicionMult = 4
			mc.GossipInterval = 300 * time.Millisecond
			mc.GossipNodes = 4
			mc.PushPullInterval = 30 * time.Second
		}, nil
	}
	return nil, fmt.Errorf("gossip profile %q: want %s or %s", name, GossipLAN, GossipWAN)
}

// reconnectFor is how long a dead member's address keeps being tried: a
// partition longer than this needs an operator (or a restart) to heal.
const reconnectFor = 24 * time.Hour

// Membership is this node's view of the mesh, kept by memberlist gossip.
// It remembers members that died or left, so callers can tell a dead node
// from one that never existed.
type Membership struct {
	ml  *memberlist.Memberlist
	log *slog.Logger

	stopOnce sync.Once
	stopCtx  context.Context // cancelled by Leave and Shutdown: ends reconnect
	stop     context.CancelFunc
	loops    sync.WaitGroup

	mu      sync.Mutex
	self    Member
	members map[string]Member // by name, including dead and left ones
	subs    []chan struct{}
}

// NewMembership starts gossip on cfg.Self.Gossip. It does not join anyone:
// call Join with seed addresses, or nothing for the first node.
func NewMembership(cfg MembershipConfig) (*Membership, error) {
	host, portStr, err := net.SplitHostPort(cfg.Self.Gossip)
	if err != nil {
		return nil, fmt.Errorf("gossip address %q: %w", cfg.Self.Gossip, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("gossip address %q: bad port: %w", cfg.Self.Gossip, err)
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.Default()
	}
	m := &Membership{log: logger, self: cfg.Self, members: map[string]Member{}}
	m.stopCtx, m.stop = context.WithCancel(context.Background())

	mc := memberlist.DefaultLANConfig()
	mc.Name = cfg.Self.Name
	mc.BindAddr = host
	mc.BindPort = port
	mc.AdvertiseAddr = host
	mc.AdvertisePort = port
	if host == "0.0.0.0" || host == "" || host == "::" {
		mc.AdvertiseAddr = ""
		mc.AdvertisePort = port
	}
	mc.SecretKey = cfg.Secret.GossipKey()
	mc.Delegate = delegate{m}
	mc.Events = events{m}
	mc.Logger = log.New(&slogWriter{log: logger}, "", 0)
	// Loopback and LAN meshes: notice a dead node within a few seconds.
	mc.ProbeInterval = 500 * time.Millisecond
	mc.ProbeTimeout = 250 * time.Millisecond
	mc.SuspicionMult = 3
	mc.GossipInterval = 100 * time.Millisecond
	mc.PushPullInterval = 10 * time.Second
	// A restarted node keeps its name but may come back on another port;
	// without this memberlist refuses the dead name from a new address.
	mc.DeadNodeReclaimTime = time.Millisecond
	if cfg.Tune != nil {
		cfg.Tune(mc)
	}
	ml, err := memberlist.Create(mc)
	if err != nil {
		return nil, fmt.Errorf("start gossip on %s: %w", cfg.Self.Gossip, err)
	}
	m.ml = ml
	if port == 0 {
		// Port 0 asked for any free port; tell others the real one.
		local := ml.LocalNode()
		m.mu.Lock()
		m.self.Gossip = net.JoinHostPort(local.Addr.String(), strconv.Itoa(int(local.Port)))
		m.mu.Unlock()
		if err := ml.UpdateNode(5 * time.Second); err != nil {
			logger.Warn("advertise gossip port", "err", err)
		}
	}
	interval := cfg.ReconnectInterval
	if interval <= 0 {
		interval = 2 * time.Second
	}
	m.loops.Go(func() { m.reconnect(interval) })
	return m, nil
}

// reconnect heals partitions. memberlist never probes a member it holds
// dead, so after a network partition each side keeps the other dead for
// good: no gossip, hence no NATS routes and no block traffic between them,
// although every process is well. So, as Serf does, every interval this
// node tries to gossip with one member it holds dead (not one that left),
// picked at random, for reconnectFor after its death. A member that
// crashed and came back elsewhere was already replaced under its name;
// an address nobody answers at costs a refused connection.
func (m *Membership) reconnect(interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-m.stopCtx.Done():
			return
		case <-t.C:
		}
		var dead []Member
		m.mu.Lock()
		for _, mem := range m.members {
			if mem.State == StateDead && time.Since(mem.Since) < reconnectFor {
				dead = append(dead, mem)
			}
		}
		m.mu.Unlock()
		if len(dead) == 0 {
			continue
		}
		mem := dead[rand.IntN(len(dead))]
		n, err := m.join(m.stopCtx, []string{mem.Gossip})
		if n > 0 {
			m.log.Info("gossip: reached a member held dead (a partition healed?)", "member", mem.Name, "addr", mem.Gossip, "dead_for", time.Since(mem.Since).Round(time.Second))
		} else {
			m.log.Debug("gossip: a member held dead does not answer", "member", mem.Name, "addr", mem.Gossip, "err", oneLine(err))
		}
	}
}

// Join contacts the seeds (gossip addresses) until one answers, retrying
// with backoff until ctx ends.
func (m *Membership) Join(ctx context.Context, seeds []string) error {
	backoff := 200 * time.Millisecond
	for {
		n, err := m.join(ctx, seeds)
		if n > 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("join mesh at %s: no member answered: %s", strings.Join(seeds, ","), oneLine(err))
		case <-time.After(backoff):
		}
		m.log.Info("join: no member answered yet, retrying", "seeds", seeds, "err", oneLine(err))
		backoff = min(2*backoff, 3*time.Second)
	}
}

// join is memberlist's Join of the seeds that answer a TCP connection now.
// memberlist's own dial cannot be cancelled and waits its TCPTimeout (10 s)
// on an address whose packets are dropped (a partition, a host gone), once
// per seed; the probe here ends with ctx, and lasts a second at most, so
// that a node stopping is not held up by a join under way.
func (m *Membership) join(ctx context.Context, seeds []string) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	var live []string
	var errs []error
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, addr := range seeds {
		wg.Go(func() {
			var d net.Dialer
			c, err := d.DialContext(ctx, "tcp", addr)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
				return
			}
			c.Close()
			live = append(live, addr)
		})
	}
	wg.Wait()
	if len(live) == 0 {
		return 0, errors.Join(errs...)
	}
	return m.ml.Join(live)
}

// oneLine flattens memberlist's multi-line errors ("1 error occurred:\n\t* …").
func oneLine(err error) string {
	if err == nil {
		return "no error"
	}
	msg := strings.Join(strings.Fields(err.Error()), " ")
	return strings.TrimPrefix(msg, "1 error occurred: * ")
}

// Self returns this node as advertised.
func (m *Membership) Self() Member {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := m.self
	s.State = StateAlive
	return s
}

// UpdateSelf changes what this node advertises (for example the cluster
// settings once learned) and gossips it.
func (m *Membership) UpdateSelf(ctx context.Context, change func(*Member)) error {
	m.mu.Lock()
	change(&m.self)
	m.mu.Unlock()
	timeout := 5 * time.Second
	if d, ok := ctx.Deadline(); ok {
		timeout = time.Until(d)
	}
	if err := m.ml.UpdateNode(timeout); err != nil {
		return fmt.Errorf("gossip node update: %w", err)
	}
	return nil
}

// Members returns every member known, this node included, sorted by name.
// Dead and left members stay listed with their state.
func (m *Membership) Members() []Member {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Member, 0, len(m.members)+1)
	self := m.self
	self.State = StateAlive
	out = append(out, self)
	for name, mem := range m.members {
		if name == self.Name {
			continue
		}
		out = append(out, mem)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Changes returns a channel that receives a value (coalesced) whenever the
// membership changes. It is closed by Leave.
func (m *Membership) Changes() <-chan struct{} {
	ch := make(chan struct{}, 1)
	m.mu.Lock()
	m.subs = append(m.subs, ch)
	m.mu.Unlock()
	return ch
}

// Leave tells the others this node is going away, then stops gossip.
// Calling it again, or after Shutdown, does nothing.
func (m *Membership) Leave(timeout time.Duration) error {
	var err error
	m.stopOnce.Do(func() {
		// stop ends the reconnect loop's probe at once (see join); a
		// join past the probe reached a live member, and ends in one
		// round trip.
		m.stop()
		err = m.ml.Leave(timeout)
		if serr := m.ml.Shutdown(); err == nil {
			err = serr
		}
		m.loops.Wait()
		m.closeSubs()
	})
	return err
}

// Shutdown stops gossip without telling anyone, as a crash would: the
// others declare this node dead after their failure timeout.
func (m *Membership) Shutdown() error {
	var err error
	m.stopOnce.Do(func() {
		m.stop()
		err = m.ml.Shutdown()
		m.loops.Wait()
		m.closeSubs()
	})
	return err
}

func (m *Membership) closeSubs() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, ch := range m.subs {
		close(ch)
	}
	m.subs = nil
}

func (m *Membership) record(n *memberlist.Node, state State) {
	var mem Member
	if err := json.Unmarshal(n.Meta, &mem); err != nil || mem.Name == "" {
		mem = Member{Name: n.Name}
	}
	mem.Gossip = net.JoinHostPort(n.Addr.String(), strconv.Itoa(int(n.Port)))
	mem.State = state
	m.mu.Lock()
	defer m.mu.Unlock()
	if n.Name == m.self.Name {
		return
	}
	mem.Since = time.Now()
	if old, ok := m.members[n.Name]; ok && old.State == state {
		mem.Since = old.Since // an update of meta, not a change of state
	}
	m.members[n.Name] = mem
	for _, ch := range m.subs {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// delegate hands memberlist this node's meta. memberlist calls it from its
// own goroutines; it only reads under the lock and never blocks.
type delegate struct{ m *Membership }

func (d delegate) NodeMeta(limit int) []byte {
	self := d.m.Self()
	b, err := json.Marshal(self)
	if err != nil || len(b) > limit {
		d.m.log.Error("node meta does not fit", "bytes", len(b), "limit", limit, "err", err)
		return nil
	}
	return b
}
func (delegate) NotifyMsg([]byte)                           {}
func (delegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (delegate) LocalState(join bool) []byte                { return nil }
func (delegate) MergeRemoteState(buf []byte, join bool)     {}

// events turns memberlist's callbacks into member states. memberlist never
// calls it concurrently.
type events struct{ m *Membership }

func (e events) NotifyJoin(n *memberlist.Node)   { e.m.record(n, StateAlive) }
func (e events) NotifyUpdate(n *memberlist.Node) { e.m.record(n, StateAlive) }
func (e events) NotifyLeave(n *memberlist.Node) {
	if n.State == memberlist.StateLeft {
		e.m.record(n, StateLeft)
		return
	}
	e.m.record(n, StateDead)
}

// slogWriter routes memberlist's standard-library log lines to slog,
// keeping its [DEBUG]/[INFO]/[WARN]/[ERR] levels.
type slogWriter struct{ log *slog.Logger }

func (w *slogWriter) Write(p []byte) (int, error) {
	sc := bufio.NewScanner(bytes.NewReader(p))
	for sc.Scan() {
		line := sc.Text()
		level := slog.LevelDebug
		switch {
		case strings.Contains(line, "[ERR]"):
			level = slog.LevelError
		case strings.Contains(line, "[WARN]"):
			level = slog.LevelWarn
		case strings.Contains(line, "[INFO]"):
			level = slog.LevelInfo
		}
		w.log.Log(context.Background(), level, "memberlist: "+strings.TrimSpace(line))
	}
	return len(p), nil
}

var _ io.Writer = (*slogWriter)(nil)
