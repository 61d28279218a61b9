package blocknet

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meshfs/meshfs/persist"
)

// newTestNode starts one node with a fresh fake store.
func newTestNode(t *testing.T) (*testMesh, *testNode) {
	t.Helper()
	m := newTestMesh(t, 1)
	return m, m.nodes[0]
}

// do sends req and returns the status and body.
func do(t *testing.T, req *http.Request) (int, string) {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", req.Method, req.URL, err)
	}
	return resp.StatusCode, string(body)
}

func TestPutGetHasDelete(t *testing.T) {
	m, n := newTestNode(t)
	ctx := context.Background()
	data := []byte("hello, mesh")
	id := persist.Sum(data)

	if err := m.client.Put(ctx, n.addr, id, data); err != nil {
		t.Fatalf("Put: %v", err)
	}
	if !n.store.has(id) {
		t.Fatal("store does not hold the block after Put")
	}
	got, err := m.client.Get(ctx, n.addr, id)
	if err != nil || string(got) != string(data) {
		t.Fatalf("Get = %q, %v; want %q", got, err, data)
	}
	gets := n.store.getCount()
	if ok, err := m.client.Has(ctx, n.addr, id); !ok || err != nil {
		t.Fatalf("Has = %v, %v; want true", ok, err)
	}
	if n.store.getCount() != gets {
		t.Fatal("HEAD read the block: it must only look it up")
	}

	// HEAD carries the size.
	resp, err := http.DefaultClient.Do(signedRequest(t, testSecret, http.MethodHead, n.srv.URL+blockPath(id), nil, time.Now()))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.ContentLength != int64(len(data)) {
		t.Fatalf("HEAD = %d, Content-Length %d; want 200, %d", resp.StatusCode, resp.ContentLength, len(data))
	}

	// GET carries Content-Length too.
	resp, err = http.DefaultClient.Do(signedRequest(t, testSecret, http.MethodGet, n.srv.URL+blockPath(id), nil, time.Now()))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.ContentLength != int64(len(data)) {
		t.Fatalf("GET Content-Length = %d; want %d", resp.ContentLength, len(data))
	}

	if err := m.client.Delete(ctx, n.addr, id); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if n.store.has(id) {
		t.Fatal("store still holds the block after Delete")
	}
	if ok, err := m.client.Has(ctx, n.addr, id); ok || err != nil {
		t.Fatalf("Has after Delete = %v, %v; want false, nil", ok, err)
	}
	// Deleting a missing block is not an error.
	if err := m.client.Delete(ctx, n.addr, id); err != nil {
		t.Fatalf("Delete of a missing block: %v", err)
	}
	code, _ := do(t, signedRequest(t, testSecret, http.MethodDelete, n.srv.URL+blockPath(id), nil, time.Now()))
	if code != http.StatusNoContent {
		t.Fatalf("DELETE = %d; want 204", code)
	}
}

func TestPutEmptyBlock(t *testing.T) {
	m, n := newTestNode(t)
	id := persist.Sum(nil)
	if err := m.client.Put(context.Background(), n.addr, id, nil); err != nil {
		t.Fatalf("Put of the empty block: %v", err)
	}
	got, err := m.client.Get(context.Background(), n.addr, id)
	if err != nil || len(got) != 0 {
		t.Fatalf("Get of the empty block = %q, %v", got, err)
	}
}

func TestGetNotFound(t *testing.T) {
	m, n := newTestNode(t)
	id := persist.Sum([]byte("absent"))
	_, err := m.client.Get(context.Background(), n.addr, id)
	if !errors.Is(err, persist.ErrNotFound) {
		t.Fatalf("Get of a missing block: %v; want ErrNotFound", err)
	}
	if !strings.Contains(err.Error(), n.addr) || !strings.Contains(err.Error(), id.String()) {
		t.Errorf("error %q does not name the node and block", err)
	}
	code, _ := do(t, signedRequest(t, testSecret, http.MethodHead, n.srv.URL+blockPath(id), nil, time.Now()))
	if code != http.StatusNotFound {
		t.Fatalf("HEAD of a missing block = %d; want 404", code)
	}
}

func TestGetCorrupt(t *testing.T) {
	m, n := newTestNode(t)
	data := []byte("soon to rot")
	id := persist.Sum(data)
	if err := m.client.Put(context.Background(), n.addr, id, data); err != nil {
		t.Fatal(err)
	}
	n.store.corrupt(t, id)

	code, body := do(t, signedRequest(t, testSecret, http.MethodGet, n.srv.URL+blockPath(id), nil, time.Now()))
	if code != http.StatusConflict || body != "corrupt" {
		t.Fatalf("GET of a corrupt block = %d %q; want 409 \"corrupt\"", code, body)
	}
	if _, err := m.client.Get(context.Background(), n.addr, id); !errors.Is(err, persist.ErrCorrupt) {
		t.Fatalf("Client.Get of a corrupt block: %v; want ErrCorrupt", err)
	}
}

func TestPutHashMismatch(t *testing.T) {
	m, n := newTestNode(t)
	id := persist.Sum([]byte("one thing"))
	err := m.client.Put(context.Background(), n.addr, id, []byte("another"))
	if !errors.Is(err, persist.ErrHashMismatch) {
		t.Fatalf("Put under the wrong id: %v; want ErrHashMismatch", err)
	}
	if !strings.Contains(err.Error(), "put block "+id.String()+" to "+n.addr) {
		t.Errorf("error %q does not say what and where", err)
	}
	code, _ := do(t, signedRequest(t, testSecret, http.MethodPut, n.srv.URL+blockPath(id), []byte("another"), time.Now()))
	if code != http.StatusBadRequest {
		t.Fatalf("PUT under the wrong id = %d; want 400", code)
	}
	if blocks, _ := n.store.Stats(); blocks != 0 {
		t.Fatalf("store holds %d blocks after refused puts", blocks)
	}
}

func TestPutTooLargeForStore(t *testing.T) {
	m, n := newTestNode(t)
	n.store.set(func(s *fakeStore) { s.maxSize = 16 })
	data := []byte(strings.Repeat("x", 17))
	err := m.client.Put(context.Background(), n.addr, persist.Sum(data), data)
	if !errors.Is(err, persist.ErrTooLarge) {
		t.Fatalf("Put past the store's block size: %v; want ErrTooLarge", err)
	}
	var se *statusError
	if !errors.As(err, &se) || se.code != http.StatusRequestEntityTooLarge {
		t.Fatalf("Put past the store's block size: %v; want HTTP 413", err)
	}
}

func TestPutBodyCap(t *testing.T) {
	store := newFakeStore()
	s := newServer(ServerConfig{Store: store, Secret: testSecret})
	// The real cap is 64 MiB; the logic is the same at 1 MiB, and the race
	// detector makes streaming 64 MiB slow.
	s.maxBody = 1 << 20
	h := s.handler()
	id := persist.Sum([]byte("whatever"))
	url := "http://node" + blockPath(id)

	// Declared too large: refused before reading.
	req := signedRequest(t, testSecret, http.MethodPut, url, nil, time.Now())
	req.Body = io.NopCloser(strings.NewReader(""))
	req.ContentLength = s.maxBody + 1
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusRequestEntityTooLarge {
		t.Fatalf("PUT declaring %d bytes = %d; want 413", req.ContentLength, rec.Code)
	}

	// Unknown length (chunked) that turns out too large: cut off at the cap.
	req = signedRequest(t, testSecret, http.MethodPut, url, nil, time.Now())
	req.Body = io.NopCloser(io.LimitReader(zeros{}, s.maxBody+1))
	req.ContentLength = -1
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusRequestEntityTooLarge {
		t.Fatalf("chunked PUT of %d bytes = %d; want 413", s.maxBody+1, rec.Code)
	}
	// Within the cap, a chunked body is fine.
	data := []byte("whatever")
	req = signedRequest(t, testSecret, http.MethodPut, url, nil, time.Now())
	req.Body = io.NopCloser(strings.NewReader(string(data)))
	req.ContentLength = -1
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusNoContent || !store.has(id) {
		t.Fatalf("chunked PUT of a small block = %d; want 204 and the block stored", rec.Code)
	}
	if store.puts != 1 {
		t.Fatalf("store saw %d puts; want only the small block's", store.puts)
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

func TestPutDiskFull(t *testing.T) {
	m, n := newTestNode(t)
	n.store.set(func(s *fakeStore) { s.putErr = fmt.Errorf("commit: write blocks.db: %w", syscall.ENOSPC) })
	data := []byte("no room")
	err := m.client.Put(context.Background(), n.addr, persist.Sum(data), data)
	if !errors.Is(err, syscall.ENOSPC) || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("Put to a full node: %v; want an ENOSPC error saying disk full", err)
	}
	for _, s := range []error{persist.ErrNotFound, persist.ErrCorrupt, persist.ErrHashMismatch, persist.ErrTooLarge} {
		if errors.Is(err, s) {
			t.Errorf("disk-full error wraps %v", s)
		}
	}
	code, body := do(t, signedRequest(t, testSecret, http.MethodPut, n.srv.URL+blockPath(persist.Sum(data)), data, time.Now()))
	if code != http.StatusInsufficientStorage || !strings.Contains(body, "disk full") {
		t.Fatalf("PUT to a full node = %d %q; want 507 disk full", code, body)
	}
}

// TestPutNoRoom: a node refuses a new block that would pass its capacity,
// or eat into the space its disk keeps free, with 507 and the reason; a
// block it holds already is accepted again; stats report the space blocks
// may use.
func TestPutNoRoom(t *testing.T) {
	dir := t.TempDir()
	var fs syscall.Statfs_t
	if err := syscall.Statfs(dir, &fs); err != nil {
		t.Fatal(err)
	}
	avail := uint64(fs.Bavail) * uint64(fs.Bsize)
	block := func(s string) ([]byte, persist.BlockID) { return []byte(s), persist.Sum([]byte(s)) }
	c := NewClient(testSecret, 5*time.Second)
	defer c.closeIdle()
	for _, tc := range []struct {
		name     string
		capacity int64
		reserve  uint64
		want     string
	}{
		{"capacity", 10, 1, "capacity is 10 bytes"},
		{"reserve", 0, avail + 1<<30, "kept free for metadata"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			store := newFakeStore()
			srv := httptest.NewServer(NewServer(ServerConfig{Store: store, Secret: testSecret, DataDir: dir, Capacity: tc.capacity, Reserve: tc.reserve}))
			defer srv.Close()
			addr := srv.Listener.Addr().String()
			small, smallID := block("tiny")
			if tc.capacity > 0 {
				if err := c.Put(context.Background(), addr, smallID, small); err != nil {
					t.Fatalf("Put of %d bytes within a capacity of %d: %v", len(small), tc.capacity, err)
				}
			} else {
				store.set(func(s *fakeStore) { s.blocks[smallID] = small })
			}
			big, bigID := block("more than fits")
			err := c.Put(context.Background(), addr, bigID, big)
			if !errors.Is(err, syscall.ENOSPC) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Put with no room: %v; want ENOSPC saying %q", err, tc.want)
			}
			if has, _, _ := store.Has(context.Background(), bigID); has {
				t.Error("the refused block was stored")
			}
			if err := c.Put(context.Background(), addr, smallID, small); err != nil {
				t.Errorf("Put of a block the node holds: %v", err)
			}
			st, err := c.Stats(context.Background(), addr)
			if err != nil {
				t.Fatal(err)
			}
			if tc.capacity > 0 && (st.DiskTotal != uint64(tc.capacity) || st.DiskFree != uint64(tc.capacity)-uint64(len(small))) {
				t.Errorf("stats with a capacity of %d and %d bytes stored: total %d, free %d", tc.capacity, len(small), st.DiskTotal, st.DiskFree)
			}
			if tc.capacity == 0 && st.DiskFree != 0 {
				t.Errorf("stats with a reserve past the free space: free %d, want 0", st.DiskFree)
			}
		})
	}
}

func TestPutStoreFailure(t *testing.T) {
	m, n := newTestNode(t)
	n.store.set(func(s *fakeStore) { s.putErr = errors.New("injected I/O error") })
	data := []byte("unlucky")
	err := m.client.Put(context.Background(), n.addr, persist.Sum(data), data)
	var se *statusError
	if !errors.As(err, &se) || se.code != http.StatusInternalServerError || !strings.Contains(err.Error(), "injected I/O error") {
		t.Fatalf("Put to a failing store: %v; want HTTP 500 with the store's reason", err)
	}
}

func TestBadBlockID(t *testing.T) {
	_, n := newTestNode(t)
	for _, method := range []string{http.MethodGet, http.MethodPut, http.MethodDelete, http.MethodHead} {
		for _, bad := range []string{"nothex", strings.Repeat("z", 64), strings.Repeat("a", 63)} {
			code, _ := do(t, signedRequest(t, testSecret, method, n.srv.URL+"/v1/blocks/"+bad, nil, time.Now()))
			if code != http.StatusBadRequest {
				t.Errorf("%s /v1/blocks/%s = %d; want 400", method, bad, code)
			}
		}
	}
}

func TestAuth(t *testing.T) {
	m, n := newTestNode(t)
	data := []byte("guarded")
	id := persist.Sum(data)
	if err := m.client.Put(context.Background(), n.addr, id, data); err != nil {
		t.Fatal(err)
	}
	url := n.srv.URL + blockPath(id)
	now := time.Now()
	path := blockPath(id)
	forged := func(string) string { return fmt.Sprintf("%d:%s", now.Unix(), strings.Repeat("ab", 32)) }
	cases := []struct {
		name   string
		header func(method string) string // "" = no header
		want   string                     // in the 401 body
	}{
		{"missing", func(string) string { return "" }, "missing"},
		{"forged", forged, "bad signature"},
		{"wrong secret", func(m string) string { return authValue([]byte("not the secret"), m, path, now) }, "bad signature"},
		{"other path", func(m string) string { return authValue(testSecret, m, "/v1/stats", now) }, "bad signature"},
		{"other method", func(string) string { return authValue(testSecret, http.MethodGet, path, now) }, "bad signature"},
		{"expired", func(m string) string { return authValue(testSecret, m, path, now.Add(-6*time.Minute)) }, "off this node's clock"},
		{"future", func(m string) string { return authValue(testSecret, m, path, now.Add(6*time.Minute)) }, "off this node's clock"},
		{"malformed", func(string) string { return "garbage" }, "malformed"},
		{"not hex", func(string) string { return fmt.Sprintf("%d:zz", now.Unix()) }, "malformed"},
	}
	for _, tc := range cases {
		for _, method := range []string{http.MethodDelete, http.MethodPut, http.MethodGet} {
			if tc.name == "other method" && method == http.MethodGet {
				continue
			}
			t.Run(tc.name+"/"+method, func(t *testing.T) {
				var body io.Reader
				if method == http.MethodPut {
					body = strings.NewReader("evil")
				}
				req, err := http.NewRequest(method, url, body)
				if err != nil {
					t.Fatal(err)
				}
				if h := tc.header(method); h != "" {
					req.Header.Set(authHeader, h)
				}
				code, got := do(t, req)
				if code != http.StatusUnauthorized || !strings.Contains(got, tc.want) {
					t.Fatalf("%s with a %s signature = %d %q; want 401 mentioning %q", method, tc.name, code, got, tc.want)
				}
			})
		}
	}
	// Nothing was touched: the block is still there, intact, and nothing
	// else was stored.
	if got, err := n.store.Get(context.Background(), id); err != nil || string(got) != string(data) {
		t.Fatalf("after refused requests the block reads %q, %v", got, err)
	}
	if blocks, _ := n.store.Stats(); blocks != 1 {
		t.Fatalf("store holds %d blocks after refused requests; want 1", blocks)
	}

	// The other endpoints are guarded too, and a client with another
	// secret gets an error that says so.
	for _, p := range []string{"/v1/blocks", "/v1/cluster", "/v1/stats", "/nonexistent"} {
		req, _ := http.NewRequest(http.MethodGet, n.srv.URL+p, nil)
		if code, _ := do(t, req); code != http.StatusUnauthorized {
			t.Errorf("unsigned GET %s = %d; want 401", p, code)
		}
	}
	other := NewClient([]byte("wrong"), time.Second)
	defer other.closeIdle()
	if _, err := other.Cluster(context.Background(), n.addr); !errors.Is(err, errUnauthorized) {
		t.Errorf("client with a wrong secret: %v; want errUnauthorized", err)
	}
}

func TestList(t *testing.T) {
	m, n := newTestNode(t)
	ctx := context.Background()
	const count = 3*listFlushEvery + 7 // several flushes plus a tail
	want := make(map[persist.BlockID]int)
	for i := range count {
		data := []byte(strconv.Itoa(i) + strings.Repeat(".", i%50))
		id := persist.Sum(data)
		if err := n.store.Put(ctx, id, data); err != nil {
			t.Fatal(err)
		}
		want[id] = len(data)
	}
	got := make(map[persist.BlockID]int)
	err := m.client.List(ctx, n.addr, func(id persist.BlockID, size int) error {
		got[id] = size
		return nil
	})
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	if len(got) != len(want) {
		t.Fatalf("List returned %d blocks; want %d", len(got), len(want))
	}
	for id, size := range want {
		if got[id] != size {
			t.Fatalf("List: block %s size %d; want %d", id, got[id], size)
		}
	}

	// The wire format is "hexid size\n".
	code, body := do(t, signedRequest(t, testSecret, http.MethodGet, n.srv.URL+"/v1/blocks", nil, time.Now()))
	lines := strings.Split(strings.TrimSuffix(body, "\n"), "\n")
	if code != http.StatusOK || len(lines) != count {
		t.Fatalf("GET /v1/blocks = %d with %d lines; want 200 with %d", code, len(lines), count)
	}
	for id, size := range want {
		if !strings.Contains(body, id.String()+" "+strconv.Itoa(size)+"\n") {
			t.Fatalf("listing lacks the line for %s", id)
		}
		break
	}

	// fn's error stops the listing and comes back as is.
	stop := errors.New("enough")
	seen := 0
	err = m.client.List(ctx, n.addr, func(persist.BlockID, int) error {
		seen++
		if seen == 10 {
			return stop
		}
		return nil
	})
	if err != stop || seen != 10 {
		t.Fatalf("List with a failing fn: %v after %d calls; want %v after 10", err, seen, stop)
	}
}

func TestListFailsMidStream(t *testing.T) {
	m, n := newTestNode(t)
	ctx := context.Background()
	for i := range 2 * listFlushEvery {
		data := []byte(strconv.Itoa(i))
		if err := n.store.Put(ctx, persist.Sum(data), data); err != nil {
			t.Fatal(err)
		}
	}
	// Failing after a flush: the client must see an error, not a short list.
	n.store.set(func(s *fakeStore) { s.listFail, s.listErrAfter = true, listFlushEvery+3 })
	seen := 0
	err := m.client.List(ctx, n.addr, func(persist.BlockID, int) error { seen++; return nil })
	if err == nil {
		t.Fatalf("List of a store failing mid-stream returned nil after %d blocks", seen)
	}
}

func TestListFailsBeforeStreaming(t *testing.T) {
	for _, after := range []int{0, 2} { // before the first line, and before the first flush
		store := newFakeStore()
		for i := range 3 {
			data := []byte{byte(i)}
			store.Put(context.Background(), persist.Sum(data), data)
		}
		store.listFail, store.listErrAfter = true, after
		srv := httptest.NewServer(NewServer(ServerConfig{Store: store, Secret: testSecret}))
		code, body := do(t, signedRequest(t, testSecret, http.MethodGet, srv.URL+"/v1/blocks", nil, time.Now()))
		if code != http.StatusInternalServerError || !strings.Contains(body, "injected failure") {
			t.Errorf("listing failing after %d blocks = %d %q; want 500 with the reason", after, code, body)
		}
		srv.Close()
	}
}

func TestClusterAndStats(t *testing.T) {
	m, n := newTestNode(t)
	ctx := context.Background()
	info, err := m.client.Cluster(ctx, n.addr)
	if err != nil {
		t.Fatalf("Cluster: %v", err)
	}
	if info.Self != n.name || info.ClusterID != "v1" || info.Replication != 3 || info.BlockSize != 4<<20 ||
		len(info.Members) != 1 || info.Members[0].HTTP != n.addr {
		t.Fatalf("Cluster = %+v", info)
	}

	data := []byte("twelve bytes")
	if err := m.client.Put(ctx, n.addr, persist.Sum(data), data); err != nil {
		t.Fatal(err)
	}
	st, err := m.client.Stats(ctx, n.addr)
	if err != nil {
		t.Fatalf("Stats: %v", err)
	}
	if st.Blocks != 1 || st.Bytes != int64(len(data)) || st.DiskTotal == 0 || st.DiskFree > st.DiskTotal {
		t.Fatalf("Stats = %+v", st)
	}
}

func TestClusterWithoutView(t *testing.T) {
	srv := httptest.NewServer(NewServer(ServerConfig{Store: newFakeStore(), Secret: testSecret}))
	defer srv.Close()
	c := NewClient(testSecret, 5*time.Second)
	defer c.closeIdle()
	if _, err := c.Cluster(context.Background(), srv.Listener.Addr().String()); err == nil {
		t.Fatal("Cluster of a node without a view returned nil")
	}
	st, err := c.Stats(context.Background(), srv.URL) // base URLs work too
	if err != nil || st.DiskTotal != 0 {
		t.Fatalf("Stats without a data dir = %+v, %v", st, err)
	}
}

func TestStatsBadDataDir(t *testing.T) {
	srv := httptest.NewServer(NewServer(ServerConfig{Store: newFakeStore(), Secret: testSecret, DataDir: "/nonexistent/meshfs"}))
	defer srv.Close()
	c := NewClient(testSecret, 5*time.Second)
	defer c.closeIdle()
	_, err := c.Stats(context.Background(), srv.Listener.Addr().String())
	var se *statusError
	if !errors.As(err, &se) || se.code != http.StatusInternalServerError || !strings.Contains(err.Error(), "statfs") {
		t.Fatalf("Stats with a missing data dir: %v; want HTTP 500 naming statfs", err)
	}
}

// loaderStore is a fakeStore that also loads blocks without verifying them,
// as *persist.Store does.
type loaderStore struct{ *fakeStore }

func (s loaderStore) Load(ctx context.Context, id persist.BlockID, buf []byte) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	data, ok := s.blocks[id]
	if !ok {
		return nil, fmt.Errorf("load block %s: %w", id, persist.ErrNotFound)
	}
	return append(buf[:0], data...), nil
}

// TestGetCorruptUnverified: a store that loads without verifying serves a
// rotten copy as is, and the client, which verifies every block, refuses it.
func TestGetCorruptUnverified(t *testing.T) {
	store := loaderStore{newFakeStore()}
	srv := httptest.NewServer(NewServer(ServerConfig{Store: store, Secret: testSecret}))
	defer srv.Close()
	c := NewClient(testSecret, 10*time.Second)
	defer c.closeIdle()
	addr := strings.TrimPrefix(srv.URL, "http://")
	ctx := context.Background()
	data := []byte("soon to rot, unverified")
	id := persist.Sum(data)
	if err := c.Put(ctx, addr, id, data); err != nil {
		t.Fatal(err)
	}
	if got, err := c.Get(ctx, addr, id); err != nil || string(got) != string(data) {
		t.Fatalf("Get = %q, %v; want %q", got, err, data)
	}
	store.corrupt(t, id)
	if _, err := c.Get(ctx, addr, id); !errors.Is(err, persist.ErrCorrupt) {
		t.Fatalf("Client.Get of a corrupt block: %v; want ErrCorrupt", err)
	}
	if _, err := c.Get(ctx, addr, persist.Sum([]byte("missing"))); !errors.Is(err, persist.ErrNotFound) {
		t.Fatalf("Client.Get of a missing block: %v; want ErrNotFound", err)
	}
}

// TestServePersistStore moves blocks of mixed sizes through a node backed by
// a real store, in an order that makes the server's recycled buffers shrink
// and grow: every block must come back exactly.
func TestServePersistStore(t *testing.T) {
	store, err := persist.Open(t.TempDir(), persist.Options{ClusterID: "test", BlockSize: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	srv := httptest.NewServer(NewServer(ServerConfig{Store: store, Secret: testSecret}))
	defer srv.Close()
	c := NewClient(testSecret, 10*time.Second)
	defer c.closeIdle()
	addr := strings.TrimPrefix(srv.URL, "http://")
	ctx := context.Background()

	var ids []persist.BlockID
	blocks := map[persist.BlockID][]byte{}
	for i, size := range []int{4 << 20, 10, 300 << 10, 0, 4<<20 - 1, 64 << 10, 1} {
		data := make([]byte, size)
		for j := range data {
			data[j] = byte(i*31 + j*7)
		}
		id := persist.Sum(data)
		if err := c.Put(ctx, addr, id, data); err != nil {
			t.Fatalf("Put of %d bytes: %v", size, err)
		}
		ids = append(ids, id)
		blocks[id] = data
	}
	for range 2 {
		for _, id := range ids {
			got, err := c.Get(ctx, addr, id)
			if err != nil || string(got) != string(blocks[id]) {
				t.Fatalf("Get of %d bytes = %d bytes, %v", len(blocks[id]), len(got), err)
			}
		}
	}
}

func TestTouch(t *testing.T) {
	store, err := persist.Open(t.TempDir(), persist.Options{ClusterID: "test", BlockSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	srv := httptest.NewServer(NewServer(ServerConfig{Store: store, Secret: testSecret}))
	defer srv.Close()
	c := NewClient(testSecret, 10*time.Second)
	defer c.closeIdle()
	addr := strings.TrimPrefix(srv.URL, "http://")
	ctx := context.Background()
	data := []byte("pending block")
	id := persist.Sum(data)
	if err := c.Put(ctx, addr, id, data); err != nil {
		t.Fatal(err)
	}
	if err := c.Touch(ctx, addr, id); err != nil {
		t.Fatalf("Touch of a stored block: %v", err)
	}
	if err := c.Touch(ctx, addr, persist.Sum([]byte("absent"))); !errors.Is(err, persist.ErrNotFound) {
		t.Fatalf("Touch of a missing block: %v, want ErrNotFound", err)
	}
	// A store without put times answers 501.
	m := newTestMesh(t, 1)
	if err := m.client.Touch(ctx, m.nodes[0].addr, id); err == nil {
		t.Fatal("Touch on a store without put times succeeded")
	}
}
