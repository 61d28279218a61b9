package natsd

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

func TestStartConnectShutdown(t *testing.T) {
	srv, err := Start(Config{Name: "n1", Dir: t.TempDir(), Secret: "s3cret"})
	if err != nil {
		t.Fatal(err)
	}
	addr := srv.Addr()
	if !strings.HasPrefix(srv.ClientURL(), "nats://127.0.0.1:") || !strings.HasSuffix(srv.ClientURL(), addr[strings.LastIndex(addr, ":"):]) {
		t.Fatalf("ClientURL %q does not match Addr %q", srv.ClientURL(), addr)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	nc, err := Connect(ctx, []string{srv.ClientURL()}, "s3cret", "test", nil)
	if err != nil {
		t.Fatalf("connect with the right secret: %v", err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.AccountInfo(ctx); err != nil {
		t.Fatalf("JetStream account info: %v", err)
	}

	start := time.Now()
	if bad, err := Connect(ctx, []string{srv.ClientURL()}, "wrong", "test", nil); err == nil {
		bad.Close()
		t.Fatal("connect with a wrong secret succeeded")
	} else if !strings.Contains(err.Error(), "connect to metadata servers") {
		t.Fatalf("unclear error: %v", err)
	} else if time.Since(start) > 3*time.Second {
		t.Fatalf("a wrong secret took %v to fail; it should fail at once", time.Since(start))
	}
	if bad, err := Connect(ctx, []string{srv.ClientURL()}, "", "test", nil); err == nil {
		bad.Close()
		t.Fatal("connect without a secret succeeded")
	}

	nc.Close()
	srv.Shutdown()

	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Fatalf("%s still accepts connections after Shutdown", addr)
	}
	// No goroutine of the server may outlive Shutdown.
	deadline := time.Now().Add(5 * time.Second)
	for {
		buf := make([]byte, 1<<20)
		stacks := string(buf[:runtime.Stack(buf, true)])
		if !strings.Contains(stacks, "nats-server/v2/server.") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("server goroutines left after Shutdown:\n%s", stacks)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestConnectGivesUpWithContext(t *testing.T) {
	// A port nobody listens on.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "nats://" + l.Addr().String()
	l.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 700*time.Millisecond)
	defer cancel()
	start := time.Now()
	nc, err := Connect(ctx, []string{url}, "x", "test", nil)
	if err == nil {
		nc.Close()
		t.Fatal("connected to nothing")
	}
	if !strings.Contains(err.Error(), "connect to metadata servers") || !strings.Contains(err.Error(), url) {
		t.Fatalf("unclear error: %v", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("Connect ran %v past its context", d)
	}
}

func TestConnectWaitsForLateServer(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()

	dir := t.TempDir()
	started := make(chan *Server, 1)
	go func() {
		time.Sleep(300 * time.Millisecond)
		srv, err := Start(Config{Name: "late", Dir: dir, Port: port, Secret: "k"})
		if err != nil {
			t.Error(err)
		}
		started <- srv
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	nc, err := Connect(ctx, []string{"nats://127.0.0.1:" + strconv.Itoa(port)}, "k", "test", nil)
	srv := <-started
	if srv != nil {
		defer srv.Shutdown()
	}
	if err != nil {
		t.Fatalf("connect to a server that starts late: %v", err)
	}
	nc.Close()
}

// TestNearestFirst: a server that does not answer goes after those that
// do. (Ordering by round trip is shown by the slow-node scenario, where
// one node's link has 100 ms of delay; loopback answers alike.)
func TestNearestFirst(t *testing.T) {
	a, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	// A closed port refuses: it answers nothing, and goes last.
	gone, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	goneAddr := gone.Addr().String()
	gone.Close()
	urls := []string{"nats://" + goneAddr, "nats://" + a.Addr().String(), "nats://" + b.Addr().String()}
	got := nearestFirst(context.Background(), urls)
	if got[2] != urls[0] {
		t.Fatalf("nearestFirst(%v) = %v: the server that refuses is not last", urls, got)
	}
}

// TestConnectNoticesSilentServer: a server that stops answering without
// closing the connection (a partition, a cut zone, power lost) is noticed
// within seconds by the client's pings, and the client reconnects once the
// server answers again. Before, a cut-off metadata leader held every
// metadata call of a mount for 15 to 20 s.
func TestConnectNoticesSilentServer(t *testing.T) {
	srv, err := Start(Config{Name: "n1", Dir: t.TempDir(), Secret: "k"})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown()
	proxy := newSilencingProxy(t, srv.Addr())

	var logged syncBuffer
	log := slog.New(slog.NewTextHandler(&logged, nil))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	nc, err := Connect(ctx, []string{"nats://" + proxy.addr}, "k", "test", log)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()

	proxy.silent.Store(true)
	cut := time.Now()
	waitFor(t, 10*time.Second, "the client to notice the silent server", func() bool { return !nc.IsConnected() })
	noticed := time.Since(cut)
	// Pings every second, three unanswered: 3 to 4 s. The old settings
	// (5 s, three) took 15 to 20 s.
	if noticed > 8*time.Second {
		t.Fatalf("the client noticed a silent server after %v", noticed)
	}
	proxy.silent.Store(false)
	waitFor(t, 10*time.Second, "the client to reconnect", nc.IsConnected)
	t.Logf("silent server noticed after %v", noticed.Round(time.Millisecond))
	for _, want := range []string{`msg="connected to a metadata server" server=nats://` + proxy.addr,
		`msg="lost the metadata server; reconnecting" server=nats://` + proxy.addr,
		`msg="reconnected to a metadata server" server=nats://` + proxy.addr} {
		if !strings.Contains(logged.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, logged.String())
		}
	}
}

func waitFor(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited %v for %s", within, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// silencingProxy forwards TCP connections to a server, and while silent
// swallows every byte both ways without closing anything, as a network
// that drops packets does.
type silencingProxy struct {
	addr   string
	silent atomic.Bool
}

func newSilencingProxy(t *testing.T, to string) *silencingProxy {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &silencingProxy{addr: l.Addr().String()}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	pipe := func(dst, src net.Conn) {
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			if err != nil {
				dst.Close()
				return
			}
			if p.silent.Load() {
				continue
			}
			if _, err := dst.Write(buf[:n]); err != nil {
				src.Close()
				return
			}
		}
	}
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", to)
			if err != nil {
				c.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, c, s)
			mu.Unlock()
			wg.Go(func() { pipe(s, c) })
			wg.Go(func() { pipe(c, s) })
		}
	})
	return p
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
