package blocknet

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestClusterViewLearnsAndFailsOver(t *testing.T) {
	m := newTestMesh(t, 3)
	seed := m.nodes[0]
	v, err := NewClusterView(context.Background(), m.client, []string{seed.addr}, 20*time.Millisecond)
	if err != nil {
		t.Fatalf("NewClusterView: %v", err)
	}
	defer v.Close()

	if got := v.Members(); len(got) != 3 {
		t.Fatalf("Members after the first fetch = %v; want all 3", got)
	}
	if info := v.Info(); info.ClusterID != "v1" || info.Replication != 3 || info.Self != seed.name {
		t.Fatalf("Info = %+v", info)
	}
	// Members and Info hand out copies.
	v.Members()[0].Name = "scribbled"
	v.Info().Members[1].Name = "scribbled"
	for _, mb := range v.Members() {
		if mb.Name == "scribbled" {
			t.Fatal("a caller's change to Members() leaked into the view")
		}
	}

	// The only seed goes away; the view must keep refreshing from the
	// members it learned.
	m.kill(seed.name, false)
	m.setVersion("v2")
	waitFor(t, "a refresh from a non-seed member", func() bool { return v.Info().ClusterID == "v2" })
	if self := v.Info().Self; self == seed.name {
		t.Fatalf("refreshed from %s, which is down", self)
	}

	// Everything goes away: the last good info stays.
	for _, n := range m.nodes[1:] {
		m.kill(n.name, false)
	}
	time.Sleep(100 * time.Millisecond)
	if got := v.Info(); got.ClusterID != "v2" || len(got.Members) != 3 {
		t.Fatalf("Info with every node down = %+v; want the last good view", got)
	}

	v.Close()
	select {
	case <-v.done:
	default:
		t.Fatal("refresh goroutine still running after Close")
	}
	v.Close() // idempotent
}

// TestClusterViewCloseDuringHungRefresh: Close must not wait for a node that
// never answers.
func TestClusterViewCloseDuringHungRefresh(t *testing.T) {
	m := newTestMesh(t, 1)
	release := make(chan struct{})
	var asked atomic.Int32
	// The seed answers the first fetch, then hangs on every refresh.
	seed := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if asked.Add(1) == 1 {
			m.nodes[0].srv.Config.Handler.ServeHTTP(w, r)
			return
		}
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}))
	t.Cleanup(seed.Close)
	t.Cleanup(func() { close(release) }) // before seed.Close, which waits for handlers
	m.kill(m.nodes[0].name, false)       // only the hanging seed is reachable

	c := NewClient(testSecret, time.Hour)
	defer c.closeIdle()
	v, err := NewClusterView(context.Background(), c, []string{seed.Listener.Addr().String()}, 10*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a refresh to hang", func() bool { return asked.Load() >= 2 })
	done := make(chan struct{})
	go func() { v.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(3 * time.Second):
		t.Fatal("Close did not return while a refresh hung")
	}
}

func TestClusterViewNoSeedAnswers(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	addr := srv.Listener.Addr().String()
	srv.Close()
	c := NewClient(testSecret, time.Second)
	defer c.closeIdle()
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := NewClusterView(ctx, c, []string{addr}, time.Second)
	if err == nil || !strings.Contains(err.Error(), "no meshfs node answered at ["+addr+"]") ||
		!strings.Contains(err.Error(), "refused") {
		t.Fatalf("NewClusterView with a dead seed: %v", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("NewClusterView gave up after %v; want about the ctx's 500ms", d)
	}
}

// TestClusterViewSeedComesUp: the first fetch retries until a seed answers.
func TestClusterViewSeedComesUp(t *testing.T) {
	m := newTestMesh(t, 1)
	var h http.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "starting", http.StatusServiceUnavailable)
	})
	ready := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-ready:
			m.nodes[0].srv.Config.Handler.ServeHTTP(w, r)
		default:
			h.ServeHTTP(w, r)
		}
	}))
	defer srv.Close()
	time.AfterFunc(300*time.Millisecond, func() { close(ready) })
	v, err := NewClusterView(context.Background(), m.client, []string{srv.Listener.Addr().String()}, time.Hour)
	if err != nil {
		t.Fatalf("NewClusterView: %v", err)
	}
	defer v.Close()
	if len(v.Members()) != 1 {
		t.Fatalf("Members = %v", v.Members())
	}
}
