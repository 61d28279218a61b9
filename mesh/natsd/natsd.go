// Package natsd runs the NATS server with JetStream that every meshfs node
// embeds, and connects clients to such servers. The metadata store
// (mesh/meta) keeps its bucket in it.
//
// A server is standalone unless Config.ClusterName is set; a clustered
// server starts with a route to itself and is given its peers' routes at run
// time through SetRoutes (see CLUSTERING.md).
package natsd

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// readyTimeout bounds how long Start waits for the client listener.
const readyTimeout = 10 * time.Second

// unackedTimeout is how long data a client sent to its server may go
// unacknowledged before the connection is given up (see boundUnacked).
// Retransmissions on a lossy but working link are acknowledged well within
// it.
const unackedTimeout = 5 * time.Second

// Config configures one embedded server.
type Config struct {
	Name   string // server name (unique per node)
	Dir    string // JetStream store dir (e.g. <datadir>/nats)
	Host   string // listen host, default 127.0.0.1
	Port   int    // client port; 0 = pick a free port
	Secret string // cluster secret: clients and routes must present it as their password; empty = no auth (tests only)
	// Log receives the server's log lines; nil keeps the server silent.
	Log *slog.Logger

	// ClusterName, when set, starts the server clustered under that name
	// (all servers of one mesh must use the same name); empty keeps it
	// standalone and ignores ClusterPort and Routes.
	ClusterName string
	// ClusterPort is the route listener's port on Host; 0 = pick a free port.
	ClusterPort int
	// Routes are peers' route URLs (nats-route://host:port) known at start;
	// more can be given later with SetRoutes. The server always adds a route
	// to itself, since clustered JetStream refuses to start without one.
	Routes []string
	// Tags are the server's placement tags: a stream placed with tags goes
	// only to servers that have all of them.
	Tags []string
}

// Users clients and routes authenticate as; the password of each is
// Config.Secret. clientUser is in account MESH, where the metadata lives; systemUser is in the system account, the only one allowed to
// change the JetStream meta group (RemovePeer).
const (
	clusterUser = "meshfs"
	clientUser  = "meshfs"
	systemUser  = "meshfs-system"
	clientAcct  = "MESH"
	systemAcct  = "SYS"
)

// Server is a running embedded NATS server.
type Server struct {
	ns *server.Server

	mu     sync.Mutex
	opts   *server.Options // options given to the server, kept for reloads
	secret string
}

// Start starts a server with JetStream and waits until it accepts clients.
func Start(cfg Config) (*Server, error) {
	// A cluster port picked here is only known free a moment before the
	// server binds it, and outgoing connections take ports from the same
	// range: seen in CI as a server never ready. Pick another and retry.
	const tries = 4
	for try := 1; ; try++ {
		s, err := start(cfg)
		if !errors.Is(err, errNotReady) || cfg.ClusterName == "" || cfg.ClusterPort != 0 || try == tries {
			return s, err
		}
	}
}

// errNotReady: the server did not accept clients in time.
var errNotReady = errors.New("not ready for connections")

func start(cfg Config) (*Server, error) {
	if cfg.Dir == "" {
		return nil, errors.New("start nats server: no JetStream store dir")
	}
	host := cfg.Host
	if host == "" {
		host = "127.0.0.1"
	}
	port := cfg.Port
	if port == 0 {
		// In server.Options 0 means the default port 4222; -1 asks for a free one.
		port = server.RANDOM_PORT
	}
	opts := &server.Options{
		ServerName: cfg.Name,
		Host:       host,
		Port:       port,
		JetStream:  true,
		StoreDir:   cfg.Dir,
		// Fsync every write before it is acknowledged: with the default
		// two-minute sync interval a power loss drops acknowledged metadata.
		SyncAlways: true,
		NoLog:      true,
		NoSigs:     true,
		Tags:       jwt.TagList(cfg.Tags),
	}
	if cfg.Secret != "" {
		// Accounts are set through the configuration language, the only way
		// to enable JetStream for a named account; with just the global and
		// the system account the server would also let anonymous clients in.
		conf := fmt.Sprintf(`accounts {
			%s { jetstream: enabled, users: [ {user: %q, password: %q} ] }
			%s { users: [ {user: %q, password: %q} ] }
		}
		system_account: %s`, clientAcct, clientUser, cfg.Secret, systemAcct, systemUser, cfg.Secret, systemAcct)
		if err := opts.ProcessConfigString(conf); err != nil {
			return nil, fmt.Errorf("start nats server %q: accounts: %w", cfg.Name, err)
		}
	}
	if cfg.ClusterName != "" {
		cport := cfg.ClusterPort
		if cport == 0 {
			// The route to self needs the port before the server starts
			// (RANDOM_PORT would only be known after), so pick one now.
			p, err := freePort(host)
			if err != nil {
				return nil, fmt.Errorf("start nats server %q: pick cluster port: %w", cfg.Name, err)
			}
			cport = p
		}
		opts.Cluster = server.ClusterOpts{Name: cfg.ClusterName, Host: host, Port: cport}
		if cfg.Secret != "" {
			opts.Cluster.Username = clusterUser
			opts.Cluster.Password = cfg.Secret
		}
		// Clustered JetStream refuses to start without a configured route
		// ("JetStream cluster requires configured routes ..."); a route to
		// self satisfies it and is dropped by the server as a duplicate.
		routes, err := routeURLs(append([]string{"nats-route://" + net.JoinHostPort(host, strconv.Itoa(cport))}, cfg.Routes...), cfg.Secret)
		if err != nil {
			return nil, fmt.Errorf("start nats server %q: %w", cfg.Name, err)
		}
		opts.Routes = routes
	}
	// Keep a copy for SetRoutes: the server owns opts once started.
	kept := opts.Clone()
	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("start nats server %q: %w", cfg.Name, err)
	}
	if cfg.Log != nil {
		ns.SetLoggerV2(slogAdapter{cfg.Log}, false, false, false)
	}
	ns.Start()
	if !ns.ReadyForConnections(readyTimeout) {
		ns.Shutdown()
		ns.WaitForShutdown()
		return nil, fmt.Errorf("start nats server %q on %s: %w after %v", cfg.Name, net.JoinHostPort(host, strconv.Itoa(cfg.Port)), errNotReady, readyTimeout)
	}
	if !ns.JetStreamEnabled() {
		ns.Shutdown()
		ns.WaitForShutdown()
		return nil, fmt.Errorf("start nats server %q: JetStream did not start", cfg.Name)
	}
	return &Server{ns: ns, opts: kept, secret: cfg.Secret}, nil
}

// ClusterURL returns the URL peers route to (nats-route://host:port, without
// credentials), or "" for a standalone server. A wildcard listen address is
// reached through the loopback interface.
func (s *Server) ClusterURL() string {
	a := s.ns.ClusterAddr()
	if a == nil {
		return ""
	}
	host := "127.0.0.1"
	if !a.IP.IsUnspecified() {
		host = a.IP.String()
	}
	return "nats-route://" + net.JoinHostPort(host, strconv.Itoa(a.Port))
}

// SetRoutes replaces the peers a clustered server routes to by urls (as
// returned by the peers' ClusterURL; the server's own URL may be included)
// without a restart: added routes are dialled, removed ones are closed. The
// route to self is always kept. Routes are gossiped between servers, so one
// live peer is enough for a server to find the whole cluster.
func (s *Server) SetRoutes(urls []string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.opts.Cluster.Name == "" {
		return errors.New("set nats routes: server is not clustered")
	}
	self := s.opts.Routes[0] // Start puts the route to self first
	routes, err := routeURLs(urls, s.secret)
	if err != nil {
		return fmt.Errorf("set nats routes: %w", err)
	}
	routes = appendNew([]*url.URL{self}, routes...)
	next := s.opts.Clone()
	next.Routes = routes
	// ReloadOptions takes ownership of its argument.
	if err := s.ns.ReloadOptions(next.Clone()); err != nil {
		return fmt.Errorf("set nats routes: %w", err)
	}
	s.opts = next
	return nil
}

// routeURLs parses route URLs (host:port means nats-route://host:port) and adds the cluster credentials when secret is
// set.
func routeURLs(urls []string, secret string) ([]*url.URL, error) {
	var out []*url.URL
	for _, raw := range urls {
		if !strings.Contains(raw, "://") {
			raw = "nats-route://" + raw
		}
		u, err := url.Parse(raw)
		if err != nil {
			return nil, fmt.Errorf("route %q: %w", raw, err)
		}
		if u.Host == "" {
			return nil, fmt.Errorf("route %q: no host", raw)
		}
		if secret != "" {
			u.User = url.UserPassword(clusterUser, secret)
		} else {
			u.User = nil
		}
		out = appendNew(out, u)
	}
	return out, nil
}

// appendNew appends the URLs of add whose host:port is not in list yet.
func appendNew(list []*url.URL, add ...*url.URL) []*url.URL {
next:
	for _, u := range add {
		for _, have := range list {
			if have.Host == u.Host {
				continue next
			}
		}
		list = append(list, u)
	}
	return list
}

// freePort returns a TCP port on host that was free a moment ago.
func freePort(host string) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Addr returns host:port of the client listener.
func (s *Server) Addr() string {
	a := s.ns.Addr()
	if a == nil {
		return ""
	}
	return a.String()
}

// ClientURL returns the URL clients connect to. A wildcard listen address is
// reached through the loopback interface.
func (s *Server) ClientURL() string {
	a, ok := s.ns.Addr().(*net.TCPAddr)
	if !ok {
		return s.ns.ClientURL()
	}
	host := "127.0.0.1"
	if !a.IP.IsUnspecified() {
		host = a.IP.String()
	}
	return "nats://" + net.JoinHostPort(host, strconv.Itoa(a.Port))
}

// Shutdown stops the server and waits until it has stopped.
func (s *Server) Shutdown() {
	s.ns.Shutdown()
	s.ns.WaitForShutdown()
}

// Connect connects to any of the servers at urls, presenting secret as the
// password and name as the connection's name. It retries with backoff until ctx
// ends; a rejected secret fails at once, since retrying cannot help. Once
// connected, the connection reconnects forever; log (nil: silent) is told
// which server it is connected to, and when it loses or changes server.
func Connect(ctx context.Context, urls []string, secret, name string, log *slog.Logger) (*nats.Conn, error) {
	if len(urls) == 0 {
		return nil, errors.New("connect to metadata servers: no server URLs")
	}
	backoff := 50 * time.Millisecond
	for {
		// Each attempt asks the servers nearest first: a client's every
		// metadata call crosses its link to the server it is connected
		// to, so a server behind a slow or lossy link (or a far zone) is
		// taken only when the near ones do not answer.
		servers := strings.Join(nearestFirst(ctx, urls), ",")
		timeout := 2 * time.Second
		if dl, ok := ctx.Deadline(); ok {
			if left := time.Until(dl); left < timeout {
				timeout = max(left, 10*time.Millisecond)
			}
		}
		opts := []nats.Option{
			nats.Name(name),
			nats.DontRandomize(),
			nats.MaxReconnects(-1),
			nats.ReconnectWait(250 * time.Millisecond),
			nats.Timeout(timeout),
			// A silently dead server (power loss, partition, a zone cut
			// off) holds every metadata call until the connection is
			// given up. The pings keep data in flight, so the kernel
			// gives up on it after unackedTimeout without an
			// acknowledgement (boundUnacked): 5 to 6 s. Unanswered pings
			// are only the backstop, for a server whose kernel still
			// acknowledges (a hung process): they are many, because a
			// ping waits behind every byte queued ahead of it, and a
			// large commit over a slow link queues megabytes (4 MB at
			// 512 KiB/s is 8 s); three pings a second apart cut such
			// commits off, again at each resend.
			nats.PingInterval(time.Second),
			nats.MaxPingsOutstanding(20),
			nats.SetCustomDialer(&net.Dialer{Timeout: timeout, Control: boundUnacked}),
		}
		// The server lost is no longer the connection's by the time the
		// disconnect is reported, so it is remembered here.
		var server atomic.Pointer[string]
		if log != nil {
			opts = append(opts,
				nats.DisconnectErrHandler(func(c *nats.Conn, err error) {
					if c.IsClosed() {
						return // closed by its owner
					}
					lost := ""
					if p := server.Load(); p != nil {
						lost = *p
					}
					log.Warn("lost the metadata server; reconnecting", "server", lost, "err", err)
				}),
				nats.ReconnectHandler(func(c *nats.Conn) {
					// "" when the connection was lost again before this
					// ran: the server lost is still the one stored.
					if u := c.ConnectedUrlRedacted(); u != "" {
						server.Store(&u)
						log.Info("reconnected to a metadata server", "server", u)
					}
				}))
		}
		if secret != "" {
			opts = append(opts, nats.UserInfo(clientUser, secret))
		}
		nc, err := nats.Connect(servers, opts...)
		if err == nil {
			if log != nil {
				u := nc.ConnectedUrlRedacted()
				server.Store(&u)
				log.Info("connected to a metadata server", "server", u)
			}
			return nc, nil
		}
		if isAuthErr(err) {
			return nil, fmt.Errorf("connect to metadata servers %v: %w", urls, err)
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("connect to metadata servers %v: %w (last error: %v)", urls, ctx.Err(), err)
		case <-t.C:
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

func isAuthErr(err error) bool {
	return errors.Is(err, nats.ErrAuthorization) || errors.Is(err, nats.ErrAuthExpired) ||
		errors.Is(err, nats.ErrAuthRevoked) ||
		strings.Contains(strings.ToLower(err.Error()), "authorization violation")
}

// slogAdapter turns the server's printf-style logger into slog records.
type slogAdapter struct{ l *slog.Logger }

func (a slogAdapter) Noticef(format string, v ...any) { a.l.Info(fmt.Sprintf(format, v...)) }
func (a slogAdapter) Warnf(format string, v ...any)   { a.l.Warn(fmt.Sprintf(format, v...)) }
func (a slogAdapter) Fatalf(format string, v ...any)  { a.l.Error(fmt.Sprintf(format, v...)) }
func (a slogAdapter) Errorf(format string, v ...any)  { a.l.Error(fmt.Sprintf(format, v...)) }
func (a slogAdapter) Debugf(format string, v ...any)  { a.l.Debug(fmt.Sprintf(format, v...)) }
func (a slogAdapter) Tracef(format string, v ...any)  { a.l.Debug(fmt.Sprintf(format, v...)) }

// MetaGroup reports this server's view of the JetStream meta group: the
// leader's server name ("" while there is none), the group's size (peers
// known to the group, online or not) and how many of them are needed for a
// quorum. A standalone server reports "", 0, 0.
func (s *Server) MetaGroup() (leader string, size, quorum int) {
	jsi, err := s.ns.Jsz(&server.JSzOptions{})
	if err != nil || jsi == nil || jsi.Meta == nil {
		return "", 0, 0
	}
	return jsi.Meta.Leader, jsi.Meta.Size, jsi.Meta.QuorumNeeded
}

// nearestFirst orders server URLs by how long a TCP connection to each
// takes, all dialled at once; those that do not answer go last, in their
// order. It waits for the others a little past the first answer (three
// times its time, at least 20 ms), and a second at most, so a server that
// drops packets does not hold up every connect.
func nearestFirst(ctx context.Context, urls []string) []string {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	type answer struct {
		i   int
		rtt time.Duration
	}
	answers := make(chan answer, len(urls))
	var wg sync.WaitGroup
	for i, raw := range urls {
		u, err := url.Parse(raw)
		if err != nil || u.Host == "" {
			continue
		}
		wg.Go(func() {
			t := time.Now()
			var d net.Dialer
			c, err := d.DialContext(ctx, "tcp", u.Host)
			if err != nil {
				return
			}
			c.Close()
			answers <- answer{i, time.Since(t)}
		})
	}
	go func() { wg.Wait(); close(answers) }()
	rtt := make([]time.Duration, len(urls))
	for i := range rtt {
		rtt[i] = time.Hour
	}
	var grace <-chan time.Time
collect:
	for {
		select {
		case a, ok := <-answers:
			if !ok {
				break collect
			}
			rtt[a.i] = a.rtt
			if grace == nil {
				grace = time.After(max(3*a.rtt, 20*time.Millisecond))
			}
		case <-grace:
			break collect
		case <-ctx.Done():
			break collect
		}
	}
	cancel()
	wg.Wait() // the dials still out end with ctx
	order := make([]int, len(urls))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int { return cmp.Compare(rtt[a], rtt[b]) })
	out := make([]string, len(urls))
	for i, j := range order {
		out[i] = urls[j]
	}
	return out
}
