package blocknet

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshfs/meshfs/mesh"
	"github.com/meshfs/meshfs/persist"
)

var testSecret = []byte("test cluster secret")

// fakeStore is an in-memory BlockStore with persist.Store's semantics
// (hash check on Put, verification on Get) plus fault injection.
type fakeStore struct {
	mu      sync.Mutex
	blocks  map[persist.BlockID][]byte
	maxSize int   // > 0: Put refuses larger blocks with ErrTooLarge
	putErr  error // returned by every Put when set (ENOSPC, I/O errors)
	hang    bool  // Put blocks until its context ends (a stopped node, a stalled disk)
	// listFail makes List fail after listErrAfter entries.
	listFail     bool
	listErrAfter int
	puts, gets   int
}

func newFakeStore() *fakeStore { return &fakeStore{blocks: make(map[persist.BlockID][]byte)} }

func (s *fakeStore) Put(ctx context.Context, id persist.BlockID, data []byte) error {
	s.mu.Lock()
	hang := s.hang
	s.mu.Unlock()
	if hang {
		<-ctx.Done()
		return ctx.Err()
	}
	if persist.Sum(data) != id {
		return fmt.Errorf("put block %s: %w", id, persist.ErrHashMismatch)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.puts++
	if s.maxSize > 0 && len(data) > s.maxSize {
		return fmt.Errorf("put block %s of %d bytes: %w", id, len(data), persist.ErrTooLarge)
	}
	if s.putErr != nil {
		return s.putErr
	}
	if _, ok := s.blocks[id]; !ok {
		s.blocks[id] = slices.Clone(data)
	}
	return nil
}

func (s *fakeStore) Get(ctx context.Context, id persist.BlockID) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gets++
	data, ok := s.blocks[id]
	if !ok {
		return nil, fmt.Errorf("get block %s: %w", id, persist.ErrNotFound)
	}
	if persist.Sum(data) != id {
		return nil, fmt.Errorf("get block %s: %w", id, persist.ErrCorrupt)
	}
	return slices.Clone(data), nil
}

func (s *fakeStore) Has(ctx context.Context, id persist.BlockID) (bool, int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	data, ok := s.blocks[id]
	return ok, len(data), nil
}

func (s *fakeStore) Delete(ctx context.Context, id persist.BlockID) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.blocks, id)
	return nil
}

func (s *fakeStore) List(ctx context.Context, fn func(id persist.BlockID, size int) error) error {
	s.mu.Lock()
	ids := make([]persist.BlockID, 0, len(s.blocks))
	sizes := make(map[persist.BlockID]int, len(s.blocks))
	for id, b := range s.blocks {
		ids = append(ids, id)
		sizes[id] = len(b)
	}
	failAfter := -1
	if s.listFail {
		failAfter = s.listErrAfter
	}
	s.mu.Unlock()
	slices.SortFunc(ids, func(a, b persist.BlockID) int { return slices.Compare(a[:], b[:]) })
	for i, id := range ids {
		if i == failAfter {
			return fmt.Errorf("list: injected failure after %d blocks", i)
		}
		if err := fn(id, sizes[id]); err != nil {
			return err
		}
	}
	if len(ids) == failAfter {
		return fmt.Errorf("list: injected failure after %d blocks", failAfter)
	}
	return nil
}

func (s *fakeStore) Stats() (blocks int64, bytes int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, b := range s.blocks {
		blocks++
		bytes += int64(len(b))
	}
	return blocks, bytes
}

// set changes the fault injection under the lock the handlers take.
func (s *fakeStore) set(f func(s *fakeStore)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f(s)
}

// corrupt flips a byte of the stored copy, as bit rot would.
func (s *fakeStore) corrupt(t testing.TB, id persist.BlockID) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	b, ok := s.blocks[id]
	if !ok || len(b) == 0 {
		t.Fatalf("corrupt: block %s not stored (or empty)", id)
	}
	b[len(b)/2] ^= 0xff
}

func (s *fakeStore) has(id persist.BlockID) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.blocks[id]
	return ok
}

func (s *fakeStore) getCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.gets
}

// testNode is one fake data node: a fake store behind the real server.
type testNode struct {
	name  string
	store *fakeStore
	srv   *httptest.Server
	addr  string // host:port, as in Member.HTTP

	reported atomic.Int64 // corrupt-copy reports received (read-repair)
}

// testMesh is a set of testNodes plus the membership a gossip layer would
// report for them.
type testMesh struct {
	client *Client

	mu      sync.Mutex
	nodes   []*testNode
	members []mesh.Member
	version string // ClusterInfo.ClusterID, so tests can see a refresh
}

func newTestMesh(t testing.TB, n int) *testMesh {
	t.Helper()
	return newWrappedMesh(t, n, nil)
}

// newWrappedMesh is newTestMesh with each node's handler passed through
// wrap (by node name) when wrap is not nil: tests put links in front.
func newWrappedMesh(t testing.TB, n int, wrap func(name string, h http.Handler) http.Handler) *testMesh {
	t.Helper()
	m := &testMesh{client: NewClient(testSecret, 10*time.Second), version: "v1"}
	t.Cleanup(m.client.closeIdle)
	for i := range n {
		nd := &testNode{name: fmt.Sprintf("node%d", i), store: newFakeStore()}
		var h http.Handler = NewServer(ServerConfig{
			Store:   nd.store,
			Secret:  testSecret,
			Cluster: func() ClusterInfo { return m.info(nd.name) },
			DataDir: t.TempDir(),
			Suspect: func(persist.BlockID) { nd.reported.Add(1) },
		})
		if wrap != nil {
			h = wrap(nd.name, h)
		}
		nd.srv = httptest.NewServer(h)
		t.Cleanup(nd.srv.Close)
		nd.addr = nd.srv.Listener.Addr().String()
		m.nodes = append(m.nodes, nd)
		m.members = append(m.members, mesh.Member{Name: nd.name, HTTP: nd.addr, State: mesh.StateAlive})
	}
	return m
}

func (m *testMesh) info(self string) ClusterInfo {
	m.mu.Lock()
	defer m.mu.Unlock()
	return ClusterInfo{
		ClusterID:   m.version,
		BlockSize:   4 << 20,
		Replication: 3,
		Self:        self,
		Members:     slices.Clone(m.members),
	}
}

func (m *testMesh) setVersion(v string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.version = v
}

// Members is the membership function a Replicator is given.
func (m *testMesh) Members() []mesh.Member {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.members)
}

func (m *testMesh) node(name string) *testNode {
	for _, n := range m.nodes {
		if n.name == name {
			return n
		}
	}
	panic("no test node " + name)
}

// kill stops a node's server; dead also marks it dead in the membership,
// as gossip eventually would. Without dead it models gossip lag.
func (m *testMesh) kill(name string, dead bool) {
	m.node(name).srv.Close()
	if !dead {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for i := range m.members {
		if m.members[i].Name == name {
			m.members[i].State = mesh.StateDead
		}
	}
}

// holders returns the names of the nodes whose store holds id, sorted.
func (m *testMesh) holders(id persist.BlockID) []string {
	var out []string
	for _, n := range m.nodes {
		if n.store.has(id) {
			out = append(out, n.name)
		}
	}
	slices.Sort(out)
	return out
}

func names(ms []mesh.Member) []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = m.Name
	}
	slices.Sort(out)
	return out
}

// signedRequest builds a request to the handler signed with secret at t.
func signedRequest(t testing.TB, secret []byte, method, url string, body []byte, at time.Time) *http.Request {
	t.Helper()
	var req *http.Request
	var err error
	if body != nil {
		req, err = http.NewRequest(method, url, bytes.NewReader(body))
	} else {
		req, err = http.NewRequest(method, url, nil)
	}
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set(authHeader, authValue(secret, method, req.URL.Path, at))
	return req
}
