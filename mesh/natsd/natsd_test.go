package natsd

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

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

// TestConnectNoticesCutServer: a server whose packets stop arriving, with
// no FIN or RST (a partition, a cut zone, power lost), is noticed within
// seconds, and the client reconnects once the server is reachable again.
// The connection crosses a veth pair into a network namespace, and the cut
// is the far end going down: the packets are dropped, as on a real
// network. (With the earlier pings, 5 s and three unanswered, noticing took
// 15 to 20 s, and a cut-off metadata leader held every metadata call of a
// mount that long.)
func TestConnectNoticesCutServer(t *testing.T) {
	link := newVethNamespace(t)
	srv, err := Start(Config{Name: "n1", Dir: t.TempDir(), Secret: "k"})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown()
	addr := forward(t, link.listen(t), srv.Addr())

	var logged syncBuffer
	log := slog.New(slog.NewTextHandler(&logged, nil))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	nc, err := Connect(ctx, []string{"nats://" + addr}, "k", "test", log)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()

	link.cut(t)
	cut := time.Now()
	waitFor(t, 30*time.Second, "the client to notice the cut", func() bool { return !nc.IsConnected() })
	noticed := time.Since(cut)
	// The next ping (within 1 s) goes unacknowledged for unackedTimeout.
	if noticed > unackedTimeout+3*time.Second {
		t.Fatalf("the client noticed the cut after %v, want about %v", noticed, unackedTimeout+time.Second)
	}
	link.heal(t)
	waitFor(t, 15*time.Second, "the client to reconnect", nc.IsConnected)
	t.Logf("cut noticed after %v", noticed.Round(time.Millisecond))
	nc.Close()
	for _, want := range []string{`msg="connected to a metadata server" server=nats://` + addr,
		`msg="lost the metadata server; reconnecting" server=nats://` + addr,
		`msg="reconnected to a metadata server" server=nats://` + addr} {
		if !strings.Contains(logged.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, logged.String())
		}
	}
	if n := strings.Count(logged.String(), "lost the metadata server"); n != 1 {
		t.Errorf("%d losses logged for one cut and a close:\n%s", n, logged.String())
	}
}

// TestConnectKeepsSlowConnection: a connection whose link is slow but
// working is kept however long its queue, and a ping queued behind it
// waits long. 6 MB of publishes over 512 KiB/s take about 12 s to drain.
func TestConnectKeepsSlowConnection(t *testing.T) {
	srv, err := Start(Config{Name: "n1", Dir: t.TempDir(), Secret: "k"})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := forwardAt(t, l, srv.Addr(), 512<<10)
	var logged syncBuffer
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	nc, err := Connect(ctx, []string{"nats://" + addr}, "k", "test", slog.New(slog.NewTextHandler(&logged, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	payload := make([]byte, 10<<10)
	start := time.Now()
	for range 600 {
		if err := nc.Publish("slow.bulk", payload); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.FlushWithContext(ctx); err != nil {
		t.Fatalf("flush 6 MB over 512 KiB/s: %v\n%s", err, logged.String())
	}
	t.Logf("6 MB over 512 KiB/s drained in %v", time.Since(start).Round(time.Millisecond))
	if strings.Contains(logged.String(), "lost the metadata server") {
		t.Fatalf("a slow but working connection was given up:\n%s", logged.String())
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

// vethNamespace is a network namespace joined to this one by a veth pair:
// this side 10.213.x.1, the far side 10.213.x.2.
type vethNamespace struct {
	ns, here, there, farAddr string
}

func newVethNamespace(t *testing.T) *vethNamespace {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to make a network namespace")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs ip (iproute2) to make a network namespace")
	}
	id := os.Getpid() % 250
	v := &vethNamespace{
		ns:      fmt.Sprintf("natsdtest%d", os.Getpid()),
		here:    fmt.Sprintf("ndh%d", os.Getpid()),
		there:   fmt.Sprintf("ndt%d", os.Getpid()),
		farAddr: fmt.Sprintf("10.213.%d.2", id),
	}
	v.ip(t, "netns", "add", v.ns)
	t.Cleanup(func() {
		_ = exec.Command("ip", "link", "del", v.here).Run()
		_ = exec.Command("ip", "netns", "del", v.ns).Run()
	})
	v.ip(t, "link", "add", v.here, "type", "veth", "peer", "name", v.there, "netns", v.ns)
	v.ip(t, "addr", "add", fmt.Sprintf("10.213.%d.1/30", id), "dev", v.here)
	v.ip(t, "link", "set", v.here, "up")
	v.ip(t, "-n", v.ns, "addr", "add", v.farAddr+"/30", "dev", v.there)
	v.ip(t, "-n", v.ns, "link", "set", v.there, "up")
	return v
}

func (v *vethNamespace) ip(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// cut takes the far end down: packets sent to it are dropped silently.
func (v *vethNamespace) cut(t *testing.T)  { v.ip(t, "-n", v.ns, "link", "set", v.there, "down") }
func (v *vethNamespace) heal(t *testing.T) { v.ip(t, "-n", v.ns, "link", "set", v.there, "up") }

// listen opens a listener inside the namespace, on the far address. Only
// the socket lives there: the thread that made it is discarded.
func (v *vethNamespace) listen(t *testing.T) net.Listener {
	t.Helper()
	type result struct {
		l   net.Listener
		err error
	}
	ch := make(chan result, 1)
	go func() {
		// Never unlocked: the thread leaves the namespace only by
		// ending with this goroutine.
		runtime.LockOSThread()
		f, err := os.Open("/var/run/netns/" + v.ns)
		if err != nil {
			ch <- result{nil, err}
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			ch <- result{nil, fmt.Errorf("enter namespace %s: %w", v.ns, err)}
			return
		}
		l, err := net.Listen("tcp", v.farAddr+":0")
		ch <- result{l, err}
	}()
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	return r.l
}

// forward relays the connections l accepts to the address to, and returns
// l's address.
func forward(t *testing.T, l net.Listener, to string) string { return forwardAt(t, l, to, 0) }

// forwardAt is forward with the client-to-server direction carrying at
// most rate bytes a second (0: unlimited), as a slow link would.
func forwardAt(t *testing.T, l net.Listener, to string, rate int) string {
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
			wg.Go(func() {
				defer s.Close()
				buf := make([]byte, 16<<10)
				start, sent := time.Now(), 0
				for {
					n, err := c.Read(buf)
					if n > 0 {
						if _, err := s.Write(buf[:n]); err != nil {
							return
						}
						sent += n
						if rate > 0 {
							time.Sleep(time.Until(start.Add(time.Duration(sent) * time.Second / time.Duration(rate))))
						}
					}
					if err != nil {
						return
					}
				}
			})
			wg.Go(func() {
				defer c.Close()
				_, _ = io.Copy(c, s)
			})
		}
	})
	return l.Addr().String()
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
