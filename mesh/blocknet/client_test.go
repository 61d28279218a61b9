package blocknet

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/meshfs/meshfs/persist"
)

// TestClientGetDetectsWrongBytes: a node (or the wire) that hands back bytes
// other than the block's must not get them past the client.
func TestClientGetDetectsWrongBytes(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("garbage, not the block you asked for"))
	}))
	defer srv.Close()
	c := NewClient(testSecret, 5*time.Second)
	defer c.closeIdle()
	id := persist.Sum([]byte("the real block"))
	data, err := c.Get(context.Background(), srv.Listener.Addr().String(), id)
	if !errors.Is(err, persist.ErrCorrupt) || data != nil {
		t.Fatalf("Get from a node serving garbage = %q, %v; want ErrCorrupt", data, err)
	}
	if !strings.Contains(err.Error(), id.String()) {
		t.Errorf("error %q does not name the block", err)
	}
}

// TestClientGetShortBody: a body cut short of its Content-Length is an
// error, not a short block.
func TestClientGetShortBody(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "1000")
		w.Write([]byte("only a little"))
	}))
	defer srv.Close()
	c := NewClient(testSecret, 5*time.Second)
	defer c.closeIdle()
	if _, err := c.Get(context.Background(), srv.Listener.Addr().String(), persist.Sum([]byte("x"))); err == nil {
		t.Fatal("Get of a truncated body returned nil")
	}
}

// TestClientTimeout: every call is bounded by the client timeout, even when
// the caller's context has none.
func TestClientTimeout(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}))
	defer srv.Close()
	defer close(release) // runs before srv.Close, which waits for handlers
	c := NewClient(testSecret, 200*time.Millisecond)
	defer c.closeIdle()
	start := time.Now()
	_, err := c.Get(context.Background(), srv.Listener.Addr().String(), persist.Sum([]byte("x")))
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "no answer within 200ms") {
		t.Fatalf("Get from a hung node: %v; want a deadline error naming the timeout", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("Get from a hung node took %v", d)
	}

	// A sooner ctx wins.
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	c2 := NewClient(testSecret, time.Hour)
	defer c2.closeIdle()
	start = time.Now()
	if _, err := c2.Get(ctx, srv.Listener.Addr().String(), persist.Sum([]byte("x"))); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Get with a short ctx: %v; want DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("Get with a 50ms ctx took %v", d)
	}
}

func TestClientUnreachable(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	addr := srv.Listener.Addr().String()
	srv.Close()
	c := NewClient(testSecret, 5*time.Second)
	defer c.closeIdle()
	data := []byte("x")
	err := c.Put(context.Background(), addr, persist.Sum(data), data)
	if err == nil || !strings.HasPrefix(err.Error(), "put block "+persist.Sum(data).String()+" to "+addr+": ") {
		t.Fatalf("Put to a closed port: %v", err)
	}
	if errors.Is(err, persist.ErrNotFound) {
		t.Fatalf("unreachable node reported as not found: %v", err)
	}
}
