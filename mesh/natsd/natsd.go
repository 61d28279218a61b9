// Package natsd runs the NATS server with JetStream that every meshfs node
// embeds, and connects clients to such servers. The metadata store
// (mesh/meta) keeps its bucket in it.
//
// Only a single server is configured here; clustering (routes learned by
// gossip) extends Config later.
package natsd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// readyTimeout bounds how long Start waits for the client listener.
const readyTimeout = 10 * time.Second

// Config configures one embedded server.
type Config struct {
	Name   string // server name (unique per node)
	Dir    string // JetStream store dir (e.g. <datadir>/nats)
	Host   string // listen host, default 127.0.0.1
	Port   int    // client port; 0 = pick a free port
	Secret string // cluster secret: clients must present it as their token; empty = no auth (tests only)
	// Log receives the server's log lines; nil keeps the server silent.
	Log *slog.Logger
}

// Server is a running embedded NATS server.
type Server struct {
	ns *server.Server
}

// Start starts a server with JetStream and waits until it accepts clients.
func Start(cfg Config) (*Server, error) {
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
		SyncAlways:    true,
		Authorization: cfg.Secret,
		NoLog:         true,
		NoSigs:        true,
	}
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
		return nil, fmt.Errorf("start nats server %q on %s: not ready for connections after %v", cfg.Name, net.JoinHostPort(host, strconv.Itoa(cfg.Port)), readyTimeout)
	}
	if !ns.JetStreamEnabled() {
		ns.Shutdown()
		ns.WaitForShutdown()
		return nil, fmt.Errorf("start nats server %q: JetStream did not start", cfg.Name)
	}
	return &Server{ns: ns}, nil
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
// token and name as the connection's name. It retries with backoff until ctx
// ends; a rejected secret fails at once, since retrying cannot help. Once
// connected, the connection reconnects forever.
func Connect(ctx context.Context, urls []string, secret, name string) (*nats.Conn, error) {
	if len(urls) == 0 {
		return nil, errors.New("connect to metadata servers: no server URLs")
	}
	servers := strings.Join(urls, ",")
	backoff := 50 * time.Millisecond
	for {
		timeout := 2 * time.Second
		if dl, ok := ctx.Deadline(); ok {
			if left := time.Until(dl); left < timeout {
				timeout = max(left, 10*time.Millisecond)
			}
		}
		opts := []nats.Option{
			nats.Name(name),
			nats.MaxReconnects(-1),
			nats.ReconnectWait(250 * time.Millisecond),
			nats.Timeout(timeout),
			// Notice a silently dead server (power loss, partition) in
			// seconds rather than the default minutes.
			nats.PingInterval(5 * time.Second),
			nats.MaxPingsOutstanding(3),
		}
		if secret != "" {
			opts = append(opts, nats.Token(secret))
		}
		nc, err := nats.Connect(servers, opts...)
		if err == nil {
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
