package netns

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"
)

// echoEnv makes the test binary an echo server (see TestMain): the tests
// start it in a host through Host.Command.
const echoEnv = "NETNS_TEST_ECHO"

// echoPort is the TCP and UDP port of the echo server in every host.
const echoPort = "7007"

func TestMain(m *testing.M) {
	if addr := os.Getenv(echoEnv); addr != "" {
		serveEcho(addr)
		return
	}
	os.Exit(m.Run())
}

// serveEcho echoes TCP and UDP on addr until its stdin closes, which it
// does when the test that started it ends, however it ends.
func serveEcho(addr string) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "echo:", err)
		os.Exit(1)
	}
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "echo:", err)
		os.Exit(1)
	}
	go func() {
		buf := make([]byte, 65536)
		for {
			k, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:k], from)
		}
	}()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	fmt.Println("ready")
	io.Copy(io.Discard, os.Stdin)
}

// newNet makes a Net with a prefix no other run uses, and hosts named
// names; the test closes it, and checks that Close succeeds.
func newNet(t *testing.T, names ...string) (*Net, []*Host) {
	t.Helper()
	if err := Available(); err != nil {
		t.Skipf("no network namespaces here: %v", err)
	}
	prefix := fmt.Sprintf("nt%05x", rand.IntN(1<<20))
	logger := slog.New(slog.NewTextHandler(t.Output(), nil))
	n, err := New(t.Context(), prefix, logger, Seed(1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := n.Close(); err != nil {
			t.Error(err)
		}
	})
	hosts := make([]*Host, len(names))
	for i, name := range names {
		if hosts[i], err = n.Add(t.Context(), name); err != nil {
			t.Fatal(err)
		}
	}
	return n, hosts
}

// startEcho starts an echo server in each host and waits until they
// listen; each is stopped before the Net is closed.
func startEcho(t *testing.T, hosts ...*Host) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range hosts {
		cmd := h.Command(exe, "-test.run=^$")
		cmd.Env = append(os.Environ(), echoEnv+"=:"+echoPort)
		cmd.Stderr = os.Stderr
		stdin, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatalf("start echo server in %s: %v", h, err)
		}
		t.Cleanup(func() {
			stdin.Close()
			cmd.Process.Kill()
			cmd.Wait()
		})
		line, err := bufio.NewReader(stdout).ReadString('\n')
		if line != "ready\n" {
			t.Fatalf("echo server in %s: %q, %v", h, line, err)
		}
	}
}

// dialer opens a connection from somewhere: a host, or the root
// namespace (nil).
type dialer func(ctx context.Context, network, address string) (net.Conn, error)

func from(h *Host) dialer {
	if h == nil {
		var d net.Dialer
		return d.DialContext
	}
	return h.DialContext
}

func echoAddr(h *Host) string { return net.JoinHostPort(h.IP().String(), echoPort) }

// tcpEcho connects to to's echo server and has one line echoed, within
// timeout.
func tcpEcho(dial dialer, to *Host, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c, err := dial(ctx, "tcp", echoAddr(to))
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write([]byte("ping\n")); err != nil {
		return err
	}
	got, err := bufio.NewReader(c).ReadString('\n')
	if err == nil && got != "ping\n" {
		err = fmt.Errorf("echoed %q", got)
	}
	return err
}

// udpEcho sends one datagram to to's echo server and returns how long its
// echo took, or an error if none came within timeout.
func udpEcho(dial dialer, to *Host, timeout time.Duration) (time.Duration, error) {
	c, err := dial(context.Background(), "udp", echoAddr(to))
	if err != nil {
		return 0, err
	}
	defer c.Close()
	start := time.Now()
	c.SetDeadline(start.Add(timeout))
	if _, err := c.Write([]byte("ping")); err != nil {
		return 0, err
	}
	buf := make([]byte, 16)
	k, err := c.Read(buf)
	if err == nil && string(buf[:k]) != "ping" {
		err = fmt.Errorf("echoed %q", buf[:k])
	}
	return time.Since(start), err
}

// rtt is the median of 9 UDP round trips.
func rtt(t *testing.T, dial dialer, to *Host) time.Duration {
	t.Helper()
	var rtts []time.Duration
	for range 9 {
		d, err := udpEcho(dial, to, 2*time.Second)
		if err != nil {
			t.Fatalf("round trip to %s: %v", to, err)
		}
		rtts = append(rtts, d)
	}
	slices.Sort(rtts)
	return rtts[len(rtts)/2]
}

func TestReachable(t *testing.T) {
	n, hosts := newNet(t, "a", "b")
	a, b := hosts[0], hosts[1]
	startEcho(t, a)
	for _, tc := range []struct {
		name string
		from *Host
	}{{"from host b", b}, {"from root", nil}, {"from host a itself", a}} {
		if err := tcpEcho(from(tc.from), a, 2*time.Second); err != nil {
			t.Errorf("TCP %s to a: %v", tc.name, err)
		}
		if _, err := udpEcho(from(tc.from), a, 2*time.Second); err != nil {
			t.Errorf("UDP %s to a: %v", tc.name, err)
		}
	}

	// A host reaches the root namespace at RootIP.
	l, err := net.Listen("tcp", net.JoinHostPort(n.RootIP().String(), "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		if c, err := l.Accept(); err == nil {
			c.Write([]byte("root\n"))
			c.Close()
		}
	}()
	c, err := b.DialContext(t.Context(), "tcp", l.Addr().String())
	if err != nil {
		t.Fatalf("dial the root namespace from b: %v", err)
	}
	got, _ := io.ReadAll(c)
	c.Close()
	if string(got) != "root\n" {
		t.Errorf("from the root namespace: %q", got)
	}
	if s := n.Stats(); s.Forwarded == 0 {
		t.Errorf("stats %+v: nothing forwarded", s)
	}
}

func TestCommandKeepsMountNamespace(t *testing.T) {
	_, hosts := newNet(t, "a")
	out, err := hosts[0].Command("readlink", "/proc/self/ns/mnt", "/proc/self/ns/net").Output()
	if err != nil {
		t.Fatal(err)
	}
	ns := strings.Fields(string(out))
	mnt, _ := os.Readlink("/proc/self/ns/mnt")
	netNS, _ := os.Readlink("/proc/self/ns/net")
	if len(ns) != 2 || ns[0] != mnt || ns[1] == netNS {
		t.Errorf("in host: mnt, net = %q; here: %s, %s", ns, mnt, netNS)
	}
	out, err = hosts[0].Command("ip", "-4", "-o", "address", "show").Output()
	if err != nil || !strings.Contains(string(out), hosts[0].IP().String()+"/24") {
		t.Errorf("addresses in host: %s, %v", out, err)
	}
}

func TestPartition(t *testing.T) {
	n, hosts := newNet(t, "a", "b", "c")
	a, b, c := hosts[0], hosts[1], hosts[2]
	startEcho(t, a, b, c)
	// Partition([a], [b]): c, in no group, and root are with a.
	paths := []struct {
		name     string
		from, to *Host // from nil: the root namespace
		whenCut  bool  // reachable while partitioned
	}{
		{"root->a", nil, a, true},
		{"root->b", nil, b, false},
		{"root->c", nil, c, true},
		{"a->b", a, b, false},
		{"b->a", b, a, false},
		{"c->a", c, a, true},
		{"c->b", c, b, false},
		{"b->b", b, b, true}, // within a group
	}
	check := func(stage string, partitioned bool) {
		t.Helper()
		for _, p := range paths {
			want := !partitioned || p.whenCut
			tcpErr := tcpEcho(from(p.from), p.to, 500*time.Millisecond)
			_, udpErr := udpEcho(from(p.from), p.to, 300*time.Millisecond)
			if (tcpErr == nil) != want || (udpErr == nil) != want {
				t.Errorf("%s: %s: TCP: %v, UDP: %v; want reachable=%v", stage, p.name, tcpErr, udpErr, want)
			}
		}
	}
	check("before", false)
	if err := n.Partition([]*Host{a}, []*Host{b}); err != nil {
		t.Fatal(err)
	}
	check("partitioned", true)
	if s := n.Stats(); s.DroppedPartition == 0 {
		t.Errorf("stats %+v: no drop counted", s)
	}
	n.Heal()
	check("healed", false)

	if err := n.Partition([]*Host{a}, []*Host{b, a}); err == nil {
		t.Error("a host in two groups was accepted")
	}
}

func TestShapeHost(t *testing.T) {
	n, hosts := newNet(t, "a", "b")
	a, b := hosts[0], hosts[1]
	startEcho(t, a, b)
	root := from(nil)
	before := rtt(t, root, a)
	if err := n.ShapeHost(a, Shape{Delay: 50 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	shaped, other := rtt(t, root, a), rtt(t, root, b)
	fromB := rtt(t, from(b), a)
	t.Logf("round trip root->a: %v unshaped, %v with 50 ms on a; root->b %v; b->a %v", before, shaped, other, fromB)
	if shaped < 90*time.Millisecond || shaped > 300*time.Millisecond {
		t.Errorf("round trip to a with 50 ms delay: %v, want about 100 ms", shaped)
	}
	if fromB < 90*time.Millisecond {
		t.Errorf("round trip b->a with 50 ms delay on a: %v, want about 100 ms", fromB)
	}
	if other > 30*time.Millisecond {
		t.Errorf("round trip to unshaped b: %v", other)
	}
	if err := n.ShapeHost(a, Shape{}); err != nil {
		t.Fatal(err)
	}
	if d := rtt(t, root, a); d > 30*time.Millisecond {
		t.Errorf("round trip to a after its shape is removed: %v", d)
	}
	if err := n.ShapeHost(a, Shape{Loss: 2}); err == nil {
		t.Error("loss 2 was accepted")
	}
}

func TestShapeBetween(t *testing.T) {
	n, hosts := newNet(t, "a", "b", "c")
	a, b, c := hosts[0], hosts[1], hosts[2]
	startEcho(t, a, b, c)
	ms := time.Millisecond
	if err := n.ShapeBetween([]*Host{a, b}, []*Host{c}, Shape{Delay: 25 * ms}); err != nil {
		t.Fatal(err)
	}
	within, across, back, root := rtt(t, from(a), b), rtt(t, from(a), c), rtt(t, from(c), b), rtt(t, from(nil), c)
	t.Logf("round trips with 25 ms between {a,b} and {c}: a->b %v, a->c %v, c->b %v, root->c %v", within, across, back, root)
	if within > 20*ms || root > 20*ms {
		t.Errorf("unshaped paths: a->b %v, root->c %v", within, root)
	}
	if across < 45*ms || back < 45*ms {
		t.Errorf("shaped paths: a->c %v, c->b %v, want about 50 ms", across, back)
	}

	// With ShapeHost too, the delays add up: 2×25 + 2×10 ms.
	if err := n.ShapeHost(c, Shape{Delay: 10 * ms}); err != nil {
		t.Fatal(err)
	}
	if d := rtt(t, from(a), c); d < 65*ms {
		t.Errorf("round trip a->c with 25 ms between and 10 ms on c: %v, want about 70 ms", d)
	}
	n.ShapeHost(c, Shape{})
	if err := n.ShapeBetween([]*Host{c}, []*Host{a}, Shape{}); err != nil {
		t.Fatal(err)
	}
	if d, bc := rtt(t, from(a), c), rtt(t, from(b), c); d > 20*ms || bc < 45*ms {
		t.Errorf("after removing the shape a<->c only: a->c %v (want fast), b->c %v (want about 50 ms)", d, bc)
	}
}

// sendNumbered sends count numbered datagrams from the root namespace to
// a UDP socket in host to, and returns the numbers it received, in the
// order it received them, once none has come for quiet.
func sendNumbered(t *testing.T, to *Host, count int, quiet time.Duration) []uint32 {
	t.Helper()
	pc, err := to.ListenPacket("udp", net.JoinHostPort(to.IP().String(), "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	pc.(*net.UDPConn).SetReadBuffer(4 << 20)
	got := make(chan []uint32)
	go func() {
		var nums []uint32
		buf := make([]byte, 64)
		for {
			pc.SetReadDeadline(time.Now().Add(quiet))
			k, _, err := pc.ReadFrom(buf)
			if err != nil {
				got <- nums
				return
			}
			if k == 4 {
				nums = append(nums, binary.BigEndian.Uint32(buf))
			}
		}
	}()
	c, err := net.Dial("udp", pc.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := range count {
		if _, err := c.Write(binary.BigEndian.AppendUint32(nil, uint32(i))); err != nil {
			t.Fatal(err)
		}
		if i%50 == 49 {
			time.Sleep(time.Millisecond) // spare the socket buffers
		}
	}
	return <-got
}

func TestDelayKeepsOrder(t *testing.T) {
	n, hosts := newNet(t, "a")
	if err := n.ShapeHost(hosts[0], Shape{Delay: 20 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	got := sendNumbered(t, hosts[0], 1000, 500*time.Millisecond)
	if len(got) != 1000 {
		t.Errorf("received %d of 1000 datagrams (stats %+v)", len(got), n.Stats())
	}
	if !sort.SliceIsSorted(got, func(i, j int) bool { return got[i] < got[j] }) {
		t.Errorf("delayed datagrams reordered: %v", got)
	}
}

func TestLoss(t *testing.T) {
	n, hosts := newNet(t, "a")
	if err := n.ShapeHost(hosts[0], Shape{Loss: 0.3}); err != nil {
		t.Fatal(err)
	}
	got := sendNumbered(t, hosts[0], 1000, 300*time.Millisecond)
	lost := 1000 - len(got)
	s := n.Stats()
	t.Logf("lost %d of 1000 datagrams with loss 0.3; stats %+v", lost, s)
	if lost < 150 || lost > 450 {
		t.Errorf("lost %d of 1000 datagrams with loss 0.3", lost)
	}
	if s.DroppedLoss != uint64(lost) {
		t.Errorf("the router counts %d lost, the receiver misses %d", s.DroppedLoss, lost)
	}
}

// TestThroughput moves 20 MiB each way between two hosts, directly and
// with 25 ms between them (a 50 ms round trip, as between zones).
func TestThroughput(t *testing.T) {
	n, hosts := newNet(t, "a", "b")
	a, b := hosts[0], hosts[1]
	startEcho(t, a)
	const size = 20 << 20
	data := make([]byte, size)
	rand.NewChaCha8([32]byte{}).Read(data)
	want := sha256.Sum256(data)

	for _, delay := range []time.Duration{0, 25 * time.Millisecond} {
		if err := n.ShapeBetween([]*Host{a}, []*Host{b}, Shape{Delay: delay}); err != nil {
			t.Fatal(err)
		}
		c, err := b.DialContext(t.Context(), "tcp", echoAddr(a))
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(60 * time.Second))
		start := time.Now()
		written := make(chan error, 1)
		go func() {
			_, err := c.Write(data)
			c.(*net.TCPConn).CloseWrite()
			written <- err
		}()
		h := sha256.New()
		k, err := io.Copy(h, c)
		c.Close()
		if err != nil {
			t.Fatalf("delay %v: read the echo after %d bytes: %v", delay, k, err)
		}
		if err := <-written; err != nil {
			t.Fatalf("delay %v: %v", delay, err)
		}
		took := time.Since(start)
		if k != size || !bytes.Equal(h.Sum(nil), want[:]) {
			t.Fatalf("delay %v: echoed %d bytes, not the %d sent", delay, k, size)
		}
		t.Logf("20 MiB b->a and echoed back, %v between them: %v, %.0f MB/s each way", delay, took.Round(time.Millisecond), float64(size)/1e6/took.Seconds())
	}
	t.Logf("stats %+v", n.Stats())
}

func TestCloseRemovesEverything(t *testing.T) {
	if err := Available(); err != nil {
		t.Skipf("no network namespaces here: %v", err)
	}
	goroutines := runtime.NumGoroutine()
	prefix := fmt.Sprintf("nt%05x", rand.IntN(1<<20))
	n, err := New(t.Context(), prefix, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	var hosts []*Host
	for _, name := range []string{"a", "b"} {
		h, err := n.Add(t.Context(), name)
		if err != nil {
			t.Fatal(err)
		}
		hosts = append(hosts, h)
	}
	if err := n.ShapeHost(hosts[0], Shape{Delay: time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	if _, err := udpEcho(from(nil), hosts[0], 50*time.Millisecond); err == nil {
		t.Error("an echo without an echo server")
	}
	if names := withPrefix(t, prefix); len(names) != 2 {
		t.Errorf("namespaces before Close: %v", names)
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	if err := n.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if names := withPrefix(t, prefix); len(names) != 0 {
		t.Errorf("namespaces after Close: %v", names)
	}
	links, err := exec.Command("ip", "-o", "link", "show").Output()
	if err != nil || strings.Contains(string(links), prefix) {
		t.Errorf("devices after Close: %s %v", links, err)
	}
	if _, err := n.Add(t.Context(), "c"); err == nil {
		t.Error("Add after Close succeeded")
	}
	deadline := time.Now().Add(2 * time.Second)
	for runtime.NumGoroutine() > goroutines && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if now := runtime.NumGoroutine(); now > goroutines {
		buf := make([]byte, 1<<20)
		t.Errorf("%d goroutines before New, %d after Close:\n%s", goroutines, now, buf[:runtime.Stack(buf, true)])
	}
}

// withPrefix lists the named namespaces whose name starts with prefix.
func withPrefix(t *testing.T, prefix string) []string {
	t.Helper()
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for line := range strings.Lines(string(out)) {
		if name, _, _ := strings.Cut(line, " "); strings.HasPrefix(name, prefix) {
			names = append(names, strings.TrimSpace(name))
		}
	}
	return names
}

func TestRemoveStale(t *testing.T) {
	if err := Available(); err != nil {
		t.Skipf("no network namespaces here: %v", err)
	}
	prefix := fmt.Sprintf("nt%05x", rand.IntN(1<<20))
	for _, name := range []string{prefix + "-x", prefix + "-y"} {
		if err := runIP(t.Context(), "netns", "add", name); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if _, err := os.Stat(filepath.Join(netnsDir, name)); err == nil {
				deleteNamespace(name)
			}
		})
	}
	if _, err := RemoveStale(t.Context(), prefix); err != nil {
		t.Fatal(err)
	}
	if names := withPrefix(t, prefix); len(names) != 0 {
		t.Errorf("left: %v", names)
	}
	if _, err := RemoveStale(t.Context(), ""); err == nil {
		t.Error("RemoveStale with an empty prefix")
	}
}
