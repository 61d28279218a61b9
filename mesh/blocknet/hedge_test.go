package blocknet

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshfs/meshfs/mesh"
	"github.com/meshfs/meshfs/persist"
)

// link is one node's network link, as the slow-node chaos scenario
// degrades it: it can delay each block request or hold it until the client
// gives up, and counts the block requests that reach it.
type link struct {
	delay  atomic.Int64 // a time.Duration added to every block request
	hang   atomic.Bool  // hold every block request until the client hangs up
	active atomic.Int64 // block requests being handled now
	gets   atomic.Int64
	puts   atomic.Int64
}

func (l *link) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasPrefix(r.URL.Path, "/v1/blocks/") {
			h.ServeHTTP(w, r)
			return
		}
		l.active.Add(1)
		defer l.active.Add(-1)
		switch r.Method {
		case http.MethodGet:
			l.gets.Add(1)
		case http.MethodPut:
			l.puts.Add(1)
		}
		// The body is taken in first: until it is read, the server cannot
		// see the client hang up, and a held PUT would outlive its test.
		body, err := io.ReadAll(r.Body)
		if err != nil {
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		var wait <-chan time.Time
		switch d := time.Duration(l.delay.Load()); {
		case l.hang.Load():
		case d > 0:
			wait = time.After(d)
		default:
			h.ServeHTTP(w, r)
			return
		}
		select {
		case <-r.Context().Done():
			return
		case <-wait:
		}
		h.ServeHTTP(w, r)
	})
}

// newLinkedMesh is newTestMesh with a link in front of every node, by name.
func newLinkedMesh(t testing.TB, n int) (*testMesh, map[string]*link) {
	t.Helper()
	links := make(map[string]*link)
	m := newWrappedMesh(t, n, func(name string, h http.Handler) http.Handler {
		l := &link{}
		links[name] = l
		return l.wrap(h)
	})
	return m, links
}

// blockFirstOwnedBy returns a new block whose first owner (of 3) is node.
func blockFirstOwnedBy(t testing.TB, m *testMesh, node string) ([]byte, []mesh.Member) {
	t.Helper()
	for {
		data := randomBlock(t, 1000)
		order := mesh.Placement{}.OwnersFirst(persist.Sum(data), m.Members(), 3)
		if order[0].Name == node {
			return data, order
		}
	}
}

// storeOn puts data straight into the stores of nodes, past their links.
func storeOn(t testing.TB, m *testMesh, data []byte, nodes ...mesh.Member) {
	t.Helper()
	for _, n := range nodes {
		if err := m.node(n.Name).store.Put(context.Background(), persist.Sum(data), data); err != nil {
			t.Fatal(err)
		}
	}
}

// callCounter wraps a Client's transport to count the block API calls in
// flight: from the request until its answer's body is closed (Client closes
// it before returning). A Replicator call must leave none running when it
// returns: this is the work its goroutines do, and they end right after.
type callCounter struct {
	base     http.RoundTripper
	inFlight atomic.Int64
}

// countCalls makes c's requests go through a new callCounter.
func countCalls(c *Client) *callCounter {
	cc := &callCounter{base: c.hc.Transport}
	c.hc.Transport = cc
	return cc
}

func (cc *callCounter) RoundTrip(req *http.Request) (*http.Response, error) {
	cc.inFlight.Add(1)
	resp, err := cc.base.RoundTrip(req)
	if err != nil {
		cc.inFlight.Add(-1)
		return nil, err
	}
	resp.Body = &countedBody{ReadCloser: resp.Body, done: func() { cc.inFlight.Add(-1) }}
	return resp, nil
}

type countedBody struct {
	io.ReadCloser
	once sync.Once
	done func()
}

func (b *countedBody) Close() error {
	b.once.Do(b.done)
	return b.ReadCloser.Close()
}

// settled waits for every link to have no request in flight: a request the
// replicator gave up on must end on the node too.
func settled(t testing.TB, links map[string]*link) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for name, l := range links {
		for l.active.Load() != 0 {
			if time.Now().After(deadline) {
				t.Fatalf("node %s still handles %d block requests 2 s after the call returned", name, l.active.Load())
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
}

func TestReplicatorReadHedged(t *testing.T) {
	tests := []struct {
		name string
		// setup places the block and degrades nodes; order is the block's
		// placement order, owners first.
		setup    func(t *testing.T, m *testMesh, links map[string]*link, data []byte, order []mesh.Member)
		timeout  time.Duration // the caller's deadline; 0: none
		wantErr  error         // nil: the block's bytes are wanted
		wantNot  error         // an error the result must not wrap
		reported int           // reports the first owner gets
		slow     bool          // the first owner is demoted afterwards
	}{{
		name: "first owner answers after 2 s",
		setup: func(t *testing.T, m *testMesh, links map[string]*link, data []byte, order []mesh.Member) {
			storeOn(t, m, data, order[:3]...)
			links[order[0].Name].delay.Store(int64(2 * time.Second))
		},
		slow: true,
	}, {
		name: "first owner hangs",
		setup: func(t *testing.T, m *testMesh, links map[string]*link, data []byte, order []mesh.Member) {
			storeOn(t, m, data, order[:3]...)
			links[order[0].Name].hang.Store(true)
		},
		slow: true,
	}, {
		name: "first owner's copy corrupt",
		setup: func(t *testing.T, m *testMesh, links map[string]*link, data []byte, order []mesh.Member) {
			storeOn(t, m, data, order[:3]...)
			m.node(order[0].Name).store.corrupt(t, persist.Sum(data))
		},
		reported: 1,
	}, {
		name: "first two owners late, third answers",
		setup: func(t *testing.T, m *testMesh, links map[string]*link, data []byte, order []mesh.Member) {
			storeOn(t, m, data, order[:3]...)
			links[order[0].Name].delay.Store(int64(2 * time.Second))
			links[order[1].Name].delay.Store(int64(2 * time.Second))
		},
		slow: true,
	}, {
		name:    "no node has it",
		setup:   func(*testing.T, *testMesh, map[string]*link, []byte, []mesh.Member) {},
		wantErr: persist.ErrNotFound,
	}, {
		name: "only the first owner has it, it hangs, the caller gives up",
		setup: func(t *testing.T, m *testMesh, links map[string]*link, data []byte, order []mesh.Member) {
			storeOn(t, m, data, order[0])
			links[order[0].Name].hang.Store(true)
		},
		timeout: 300 * time.Millisecond,
		wantErr: context.DeadlineExceeded,
		wantNot: persist.ErrNotFound,
	}, {
		name: "every node hangs, the caller gives up",
		setup: func(t *testing.T, m *testMesh, links map[string]*link, data []byte, order []mesh.Member) {
			storeOn(t, m, data, order[:3]...)
			for _, l := range links {
				l.hang.Store(true)
			}
		},
		timeout: 300 * time.Millisecond,
		wantErr: context.DeadlineExceeded,
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, links := newLinkedMesh(t, 5)
			calls := countCalls(m.client)
			r := NewReplicator(m.client, m.Members, 3)
			data := randomBlock(t, 1000)
			id := persist.Sum(data)
			order := mesh.Placement{}.OwnersFirst(id, m.Members(), 3)
			tt.setup(t, m, links, data, order)

			ctx := context.Background()
			if tt.timeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tt.timeout)
				defer cancel()
			}
			start := time.Now()
			got, err := r.Read(ctx, id)
			took := time.Since(start)
			if n := calls.inFlight.Load(); n != 0 {
				t.Errorf("%d calls to nodes still run after Read returned", n)
			}
			switch {
			case tt.wantErr == nil && (err != nil || !slices.Equal(got, data)):
				t.Fatalf("Read: %v; want the block's bytes", err)
			case tt.wantErr != nil && !errors.Is(err, tt.wantErr):
				t.Fatalf("Read: %v; want %v", err, tt.wantErr)
			case tt.wantNot != nil && errors.Is(err, tt.wantNot):
				t.Fatalf("Read: %v; must not wrap %v", err, tt.wantNot)
			}
			// A bound on hedging, not a benchmark: the slow node takes 2 s
			// or forever, the caller's deadline is 300 ms.
			if took > time.Second {
				t.Errorf("Read took %v; want well under the slow node's 2 s", took)
			}
			t.Logf("Read took %v: %v", took, err)
			if got := m.node(order[0].Name).reported.Load(); got != int64(tt.reported) {
				t.Errorf("first owner got %d corrupt-copy reports, want %d", got, tt.reported)
			}
			if got := r.slow.slow(order[0].Name); got != tt.slow {
				t.Errorf("first owner demoted: %v, want %v", got, tt.slow)
			}
			settled(t, links)
		})
	}
}

// TestReplicatorReadAvoidsSlowNode: once a node was hedged around, later
// reads ask it last, so they neither wait for it nor load it.
func TestReplicatorReadAvoidsSlowNode(t *testing.T) {
	m, links := newLinkedMesh(t, 5)
	r := NewReplicator(m.client, m.Members, 3)
	const slow = "node2"
	links[slow].delay.Store(int64(2 * time.Second))

	read := func(data []byte) time.Duration {
		t.Helper()
		start := time.Now()
		got, err := r.Read(context.Background(), persist.Sum(data))
		took := time.Since(start)
		if err != nil || !slices.Equal(got, data) {
			t.Fatalf("Read: %v", err)
		}
		if took > time.Second {
			t.Fatalf("Read took %v with %s slow", took, slow)
		}
		return took
	}
	data, order := blockFirstOwnedBy(t, m, slow)
	storeOn(t, m, data, order[:3]...)
	t.Logf("first read, hedged: %v", read(data))
	if got := links[slow].gets.Load(); got != 1 {
		t.Fatalf("slow node got %d GETs, want 1 (then the hedge won)", got)
	}

	for i := range 10 {
		data, order := blockFirstOwnedBy(t, m, slow)
		storeOn(t, m, data, order[:3]...)
		if took := read(data); i == 9 {
			t.Logf("read %d, slow node asked last: %v", i+2, took)
		}
	}
	if got := links[slow].gets.Load(); got != 1 {
		t.Errorf("slow node got %d GETs after 11 reads of blocks it owns first; want only the first read's", got)
	}
	// The slow node still serves a block only it holds.
	links[slow].delay.Store(int64(50 * time.Millisecond))
	data, order = blockFirstOwnedBy(t, m, slow)
	storeOn(t, m, data, order[0])
	read(data)
	settled(t, links)
}

func TestReplicatorWriteHedged(t *testing.T) {
	for _, slowAt := range []int{0, 2} { // first owner, last owner
		t.Run(fmt.Sprintf("owner %d slow", slowAt), func(t *testing.T) {
			m, links := newLinkedMesh(t, 5)
			calls := countCalls(m.client)
			r := NewReplicator(m.client, m.Members, 3)
			const slow = "node1"
			links[slow].delay.Store(int64(2 * time.Second))
			write := func() []string {
				t.Helper()
				var data []byte
				var order []mesh.Member
				for {
					data = randomBlock(t, 1000)
					order = mesh.Placement{}.OwnersFirst(persist.Sum(data), m.Members(), 3)
					if order[slowAt].Name == slow {
						break
					}
				}
				start := time.Now()
				id, err := r.Write(context.Background(), data)
				took := time.Since(start)
				if n := calls.inFlight.Load(); n != 0 {
					t.Errorf("%d calls to nodes still run after Write returned", n)
				}
				if err != nil {
					t.Fatalf("Write: %v", err)
				}
				if took > time.Second {
					t.Fatalf("Write took %v with owner %s taking 2 s per put", took, slow)
				}
				healthy := slices.DeleteFunc(m.holders(id), func(n string) bool { return n == slow })
				// The owners other than the slow one, and the next node
				// in placement order.
				want := names(slices.DeleteFunc(slices.Clone(order[:4]), func(m mesh.Member) bool { return m.Name == slow }))
				if !slices.Equal(healthy, want) {
					t.Fatalf("copies on healthy nodes %v; want %v", healthy, want)
				}
				t.Logf("Write took %v; copies on %v", took, m.holders(id))
				return m.holders(id)
			}

			write()
			if got := links[slow].puts.Load(); got != 1 {
				t.Fatalf("slow node got %d PUTs, want 1 (then the hedge stored the third copy)", got)
			}
			if !r.slow.slow(slow) {
				t.Fatalf("node %s, overtaken by a hedge, is not demoted", slow)
			}
			// Now it is asked last: the next writes it owns do not try it.
			for range 5 {
				if holders := write(); slices.Contains(holders, slow) {
					t.Fatalf("block stored on the demoted node too: %v", holders)
				}
			}
			if got := links[slow].puts.Load(); got != 1 {
				t.Errorf("slow node got %d PUTs; want only the first write's", got)
			}
			settled(t, links)
		})
	}
}

func TestReadLatencyHedgeDelay(t *testing.T) {
	ms := time.Millisecond
	tests := []struct {
		name     string
		samples  []time.Duration
		min, max time.Duration
	}{
		{"no sample yet", nil, readHedgeDefault, readHedgeDefault},
		{"one fast read: the floor", []time.Duration{ms}, readHedgeFloor, readHedgeFloor},
		{"one 100 ms read: mean + 4 × half of it", []time.Duration{100 * ms}, 300 * ms, 300 * ms},
		{"one 2 s read: the ceiling", []time.Duration{2 * time.Second}, readHedgeCeiling, readHedgeCeiling},
		{"steady 50 ms reads", slices.Repeat([]time.Duration{50 * ms}, 100), 50 * ms, 51 * ms},
		{"64 KiB and 4 MiB reads mixed: room for the large ones",
			slices.Repeat([]time.Duration{2 * ms, 40 * ms}, 50), 80 * ms, 120 * ms},
		{"slow for a while, then fast again: back to the floor",
			append(slices.Repeat([]time.Duration{500 * ms}, 20), slices.Repeat([]time.Duration{ms}, 100)...),
			readHedgeFloor, readHedgeFloor},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var l readLatency
			for _, d := range tt.samples {
				l.observe(d)
			}
			if got := l.hedgeDelay(); got < tt.min || got > tt.max {
				t.Fatalf("hedge delay %v; want %v to %v", got, tt.min, tt.max)
			}
		})
	}
}

func TestWriteHedgeDelay(t *testing.T) {
	for _, tt := range []struct{ took, want time.Duration }{
		{time.Millisecond, writeHedgeFloor},
		{50 * time.Millisecond, writeHedgeFloor},
		{200 * time.Millisecond, 400 * time.Millisecond},
	} {
		if got := writeHedgeDelay(tt.took); got != tt.want {
			t.Errorf("writeHedgeDelay(%v) = %v, want %v", tt.took, got, tt.want)
		}
	}
}

// fakeClock is a clock a test moves by hand.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time      { return c.t }
func (c *fakeClock) add(d time.Duration) { c.t = c.t.Add(d) }

// newTestSlowNodes returns a slowNodes on a fake clock, logging to log.
func newTestSlowNodes(log io.Writer) (*slowNodes, *fakeClock) {
	c := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	s := newSlowNodes()
	s.now = c.now
	s.logger = slog.New(slog.NewTextHandler(log, nil))
	return s, c
}

func TestSlowNodesDecay(t *testing.T) {
	tests := []struct {
		name      string
		offences  int
		slowUntil time.Duration // demoted just before, forgiven just after
	}{
		{"late once", 1, slowHalfLife},
		{"late twice", 2, slowHalfLife * 2},            // 2 → 0.5 in 2 half-lives
		{"late again and again", 50, 3 * slowHalfLife}, // capped at 4
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, c := newTestSlowNodes(io.Discard)
			for range tt.offences {
				s.penalise("n1", "test")
			}
			if !s.slow("n1") || s.slow("n2") {
				t.Fatalf("right after: n1 slow %v, n2 slow %v; want true, false", s.slow("n1"), s.slow("n2"))
			}
			c.add(tt.slowUntil - time.Second)
			if !s.slow("n1") {
				t.Fatalf("forgiven already %v after", tt.slowUntil-time.Second)
			}
			c.add(2 * time.Second)
			if s.slow("n1") {
				t.Fatalf("still demoted %v after", tt.slowUntil+time.Second)
			}
		})
	}
}

func TestSlowNodesOrder(t *testing.T) {
	s, _ := newTestSlowNodes(io.Discard)
	ms := []mesh.Member{{Name: "a"}, {Name: "b"}, {Name: "c"}, {Name: "d"}}
	s.penalise("c", "test")
	s.penalise("a", "test")
	got := s.order(ms)
	if want := []string{"b", "d", "a", "c"}; !slices.Equal(memberOrder(got), want) {
		t.Fatalf("order %v; want %v (slow ones last, placement order kept)", memberOrder(got), want)
	}
	if want := []string{"a", "b", "c", "d"}; !slices.Equal(memberOrder(ms), want) {
		t.Fatalf("order modified its argument: %v", memberOrder(ms))
	}
}

func memberOrder(ms []mesh.Member) []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = m.Name
	}
	return out
}

// TestSlowNodesLog: demoting a node is logged, naming it, at most once a
// minute per node.
func TestSlowNodesLog(t *testing.T) {
	var buf bytes.Buffer
	s, c := newTestSlowNodes(&buf)
	lines := func(node string) int { return strings.Count(buf.String(), "node="+node+" ") }

	s.penalise("n1", "test")
	s.penalise("n1", "test") // already demoted: no new line
	s.penalise("n2", "test")
	if lines("n1") != 1 || lines("n2") != 1 {
		t.Fatalf("log after demoting n1 (twice) and n2:\n%s", buf.String())
	}
	if !strings.Contains(buf.String(), "level=INFO") {
		t.Fatalf("demotion not logged at Info:\n%s", buf.String())
	}
	c.add(40 * time.Second) // forgiven
	s.penalise("n1", "test")
	if lines("n1") != 1 {
		t.Fatalf("n1 demoted again within a minute was logged again:\n%s", buf.String())
	}
	c.add(40 * time.Second)
	s.penalise("n1", "test")
	if lines("n1") != 2 {
		t.Fatalf("n1 demoted again after a minute was not logged:\n%s", buf.String())
	}
}

func TestNodeFailed(t *testing.T) {
	tests := []struct {
		err  error
		want bool
	}{
		{&statusError{code: http.StatusNotFound, err: persist.ErrNotFound}, false},
		{&statusError{code: http.StatusConflict, err: persist.ErrCorrupt}, false},
		{&statusError{code: http.StatusRequestEntityTooLarge, err: persist.ErrTooLarge}, false},
		{&statusError{code: http.StatusBadRequest, err: persist.ErrHashMismatch}, false},
		{&statusError{code: http.StatusInsufficientStorage, err: errDiskFull}, false},
		{fmt.Errorf("get: %w: received 3 bytes", persist.ErrCorrupt), false},
		{&statusError{code: http.StatusInternalServerError}, true},
		{&statusError{code: http.StatusServiceUnavailable}, true},
		{fmt.Errorf("no answer within 5s: %w", context.DeadlineExceeded), true},
		{errors.New("connect: connection refused"), true},
	}
	for _, tt := range tests {
		if got := nodeFailed(tt.err); got != tt.want {
			t.Errorf("nodeFailed(%v) = %v, want %v", tt.err, got, tt.want)
		}
	}
}
