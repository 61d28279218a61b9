package blocknet

import (
	"context"
	"crypto/rand"
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	"github.com/meshfs/meshfs/mesh"
	"github.com/meshfs/meshfs/persist"
)

func randomBlock(t testing.TB, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	rand.Read(b)
	return b
}

func TestReplicatorWritePlacesOnOwners(t *testing.T) {
	m := newTestMesh(t, 5)
	r := NewReplicator(m.client, m.Members, 3)
	for range 20 {
		data := randomBlock(t, 1000)
		id, err := r.Write(context.Background(), data)
		if err != nil {
			t.Fatalf("Write: %v", err)
		}
		if id != persist.Sum(data) {
			t.Fatalf("Write returned id %s; want %s", id, persist.Sum(data))
		}
		want := names(mesh.Placement{}.Owners(id, m.Members(), 3))
		if got := m.holders(id); !slices.Equal(got, want) {
			t.Fatalf("block %s on %v; want exactly its owners %v", id, got, want)
		}
	}
}

// TestReplicatorWriteOwnerDown: an owner that gossip still thinks alive but
// does not answer is passed over for the next node in placement order.
func TestReplicatorWriteOwnerDown(t *testing.T) {
	m := newTestMesh(t, 5)
	r := NewReplicator(m.client, m.Members, 3)
	data := randomBlock(t, 1000)
	id := persist.Sum(data)
	order := mesh.Placement{}.Order(id, m.Members())
	m.kill(order[0].Name, false)

	if _, err := r.Write(context.Background(), data); err != nil {
		t.Fatalf("Write with one owner down: %v", err)
	}
	want := names(order[1:4])
	if got := m.holders(id); !slices.Equal(got, want) {
		t.Fatalf("block on %v; want the next three in placement order %v", got, want)
	}
}

// TestReplicatorWriteDegraded: with 2 live nodes of R=3, a majority of copies
// is accepted.
func TestReplicatorWriteDegraded(t *testing.T) {
	m := newTestMesh(t, 5)
	r := NewReplicator(m.client, m.Members, 3)
	for _, n := range []string{"node0", "node2", "node4"} {
		m.kill(n, true)
	}
	data := randomBlock(t, 1000)
	id, err := r.Write(context.Background(), data)
	if err != nil {
		t.Fatalf("Write with 2 of 5 nodes live: %v", err)
	}
	if got := m.holders(id); !slices.Equal(got, []string{"node1", "node3"}) {
		t.Fatalf("block on %v; want both live nodes", got)
	}
}

// TestReplicatorWriteDegradedPutFails: fewer live nodes than R, and one of
// them refuses too: a majority still suffices.
func TestReplicatorWriteDegradedPutFails(t *testing.T) {
	m := newTestMesh(t, 4)
	r := NewReplicator(m.client, m.Members, 5) // majority 3, 4 live
	m.node("node0").store.set(func(s *fakeStore) { s.putErr = errors.New("injected") })
	data := randomBlock(t, 1000)
	id, err := r.Write(context.Background(), data)
	if err != nil {
		t.Fatalf("Write with 3 of 4 live nodes taking the block, R=5: %v", err)
	}
	if got := m.holders(id); !slices.Equal(got, []string{"node1", "node2", "node3"}) {
		t.Fatalf("block on %v", got)
	}
}

// TestReplicatorWriteUnansweredNodes: gossip says all 5 are alive, but
// dead nodes do not answer. Once every node in order was tried, a majority
// of copies is a (degraded) success; fewer is ErrNotEnoughNodes.
func TestReplicatorWriteUnansweredNodes(t *testing.T) {
	m := newTestMesh(t, 5)
	r := NewReplicator(m.client, m.Members, 3)
	for _, n := range []string{"node0", "node2", "node4"} {
		m.kill(n, false)
	}
	data := randomBlock(t, 1000)
	id, err := r.Write(context.Background(), data)
	if err != nil {
		t.Fatalf("Write with 2 of 5 answering: %v; want a degraded success", err)
	}
	if got := m.holders(id); len(got) != 2 {
		t.Fatalf("degraded write stored %d copies (%v), want 2", len(got), got)
	}
	m.kill("node1", false)
	_, err = r.Write(context.Background(), randomBlock(t, 1000))
	if !errors.Is(err, mesh.ErrNotEnoughNodes) {
		t.Fatalf("Write with 1 of 5 answering: %v; want ErrNotEnoughNodes", err)
	}
	t.Logf("error: %v", err)
}

func TestReplicatorWriteTooFewLive(t *testing.T) {
	m := newTestMesh(t, 5)
	r := NewReplicator(m.client, m.Members, 3)
	for _, n := range []string{"node0", "node1", "node2", "node4"} {
		m.kill(n, true)
	}
	data := randomBlock(t, 1000)
	_, err := r.Write(context.Background(), data)
	if !errors.Is(err, mesh.ErrNotEnoughNodes) {
		t.Fatalf("Write with 1 of 5 live: %v; want ErrNotEnoughNodes", err)
	}
	if got := m.holders(persist.Sum(data)); len(got) != 0 {
		t.Fatalf("failed-fast write still stored copies on %v", got)
	}
}

func TestReplicatorWriteTooLarge(t *testing.T) {
	m := newTestMesh(t, 5)
	for _, n := range m.nodes {
		n.store.set(func(s *fakeStore) { s.maxSize = 10 })
	}
	r := NewReplicator(m.client, m.Members, 3)
	_, err := r.Write(context.Background(), randomBlock(t, 11))
	if !errors.Is(err, persist.ErrTooLarge) {
		t.Fatalf("Write of an oversized block: %v; want ErrTooLarge", err)
	}
	puts := 0
	for _, n := range m.nodes {
		n.store.set(func(s *fakeStore) { puts += s.puts })
	}
	if puts != 3 {
		t.Fatalf("oversized block was offered to %d nodes; want only the 3 owners", puts)
	}
}

func TestReplicatorWriteCanceled(t *testing.T) {
	release := make(chan struct{})
	hung := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}))
	defer hung.Close()
	defer close(release)
	c := NewClient(testSecret, time.Hour)
	defer c.closeIdle()
	members := func() []mesh.Member {
		return []mesh.Member{{Name: "hung", HTTP: hung.Listener.Addr().String(), State: mesh.StateAlive}}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := NewReplicator(c, members, 1).Write(ctx, []byte("x"))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Write to a hung node with a 100ms ctx: %v", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("canceled Write took %v", d)
	}
}

func TestReplicatorReadOwnerDown(t *testing.T) {
	m := newTestMesh(t, 5)
	r := NewReplicator(m.client, m.Members, 3)
	data := randomBlock(t, 1000)
	id, err := r.Write(context.Background(), data)
	if err != nil {
		t.Fatal(err)
	}
	m.kill(mesh.Placement{}.Order(id, m.Members())[0].Name, false)
	got, err := r.Read(context.Background(), id)
	if err != nil || !slices.Equal(got, data) {
		t.Fatalf("Read with the first owner down: %v", err)
	}
}

func TestReplicatorReadSkipsCorrupt(t *testing.T) {
	m := newTestMesh(t, 5)
	r := NewReplicator(m.client, m.Members, 3)
	data := randomBlock(t, 1000)
	id, err := r.Write(context.Background(), data)
	if err != nil {
		t.Fatal(err)
	}
	order := mesh.Placement{}.Order(id, m.Members())
	first, second := m.node(order[0].Name).store, m.node(order[1].Name).store
	first.corrupt(t, id)
	got, err := r.Read(context.Background(), id)
	if err != nil || !slices.Equal(got, data) {
		t.Fatalf("Read with the first owner's copy corrupt: %v", err)
	}
	if first.getCount() != 1 || second.getCount() != 1 {
		t.Fatalf("gets: first owner %d, second %d; want the corrupt copy asked once, then the next owner",
			first.getCount(), second.getCount())
	}
	if _, err := first.Get(context.Background(), id); !errors.Is(err, persist.ErrCorrupt) {
		t.Fatalf("first owner's copy: %v; want still corrupt (repair is not the reader's job)", err)
	}
	if got := m.node(order[0].Name).reported.Load(); got != 1 {
		t.Fatalf("the node that served the corrupt copy got %d reports, want 1 (read-repair)", got)
	}
	if got := m.node(order[1].Name).reported.Load(); got != 0 {
		t.Fatalf("the node with a good copy got %d reports, want 0", got)
	}
}

// TestReplicatorReadFromNonOwner: after a failover a copy may sit outside
// the owners; Read walks on to it.
func TestReplicatorReadFromNonOwner(t *testing.T) {
	m := newTestMesh(t, 5)
	r := NewReplicator(m.client, m.Members, 3)
	data := randomBlock(t, 1000)
	id := persist.Sum(data)
	last := mesh.Placement{}.Order(id, m.Members())[4]
	if err := m.node(last.Name).store.Put(context.Background(), id, data); err != nil {
		t.Fatal(err)
	}
	got, err := r.Read(context.Background(), id)
	if err != nil || !slices.Equal(got, data) {
		t.Fatalf("Read of a block held only by the last node in order: %v", err)
	}
}

// TestReplicatorReadDeadMember: gossip may call a node dead that still
// holds the only copy; it is asked last.
func TestReplicatorReadDeadMember(t *testing.T) {
	m := newTestMesh(t, 3)
	data := randomBlock(t, 1000)
	id := persist.Sum(data)
	if err := m.node("node1").store.Put(context.Background(), id, data); err != nil {
		t.Fatal(err)
	}
	m.mu.Lock()
	m.members[1].State = mesh.StateDead
	m.mu.Unlock()
	got, err := NewReplicator(m.client, m.Members, 3).Read(context.Background(), id)
	if err != nil || !slices.Equal(got, data) {
		t.Fatalf("Read of a block held only by a 'dead' member: %v", err)
	}
}

func TestReplicatorReadNotFound(t *testing.T) {
	m := newTestMesh(t, 5)
	r := NewReplicator(m.client, m.Members, 3)
	id := persist.Sum([]byte("never written"))
	if _, err := r.Read(context.Background(), id); !errors.Is(err, persist.ErrNotFound) {
		t.Fatalf("Read of a missing block: %v; want ErrNotFound", err)
	}

	// With a node unreachable, "not found" is not certain.
	m.kill("node3", false)
	_, err := r.Read(context.Background(), id)
	if err == nil || errors.Is(err, persist.ErrNotFound) {
		t.Fatalf("Read of a missing block with a node down: %v; want an error that is not ErrNotFound", err)
	}

	if _, err := NewReplicator(m.client, func() []mesh.Member { return nil }, 3).Read(context.Background(), id); !errors.Is(err, mesh.ErrNotEnoughNodes) {
		t.Fatalf("Read with no members: %v; want ErrNotEnoughNodes", err)
	}
}

func TestReplicatorReadOnlyCorruptCopies(t *testing.T) {
	m := newTestMesh(t, 3)
	r := NewReplicator(m.client, m.Members, 3)
	data := randomBlock(t, 100)
	id, err := r.Write(context.Background(), data)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range m.nodes {
		n.store.corrupt(t, id)
	}
	if _, err := r.Read(context.Background(), id); !errors.Is(err, persist.ErrCorrupt) || errors.Is(err, persist.ErrNotFound) {
		t.Fatalf("Read with only corrupt copies: %v; want ErrCorrupt", err)
	}
}

// BenchmarkReplicatorWrite4MiB writes one 4 MiB block to 3 local nodes per
// iteration (R=3): 12 MiB over loopback, hashed by the replicator and by
// each node's store.
func BenchmarkReplicatorWrite4MiB(b *testing.B) {
	m := newTestMesh(b, 3)
	r := NewReplicator(m.client, m.Members, 3)
	data := randomBlock(b, 4<<20)
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := r.Write(context.Background(), data); err != nil {
			b.Fatal(err)
		}
	}
}

// TestReplicatorWriteHungOwner: an owner that accepts the connection but
// never answers (alive in gossip) is passed over after the per-attempt
// deadline, and the copy goes to the next node in placement order.
func TestReplicatorWriteHungOwner(t *testing.T) {
	m := newTestMesh(t, 5)
	r := NewReplicator(m.client, m.Members, 3)
	r.putTimeout = 300 * time.Millisecond
	data := randomBlock(t, 1000)
	id := persist.Sum(data)
	order := mesh.Placement{}.Order(id, m.Members())
	m.node(order[0].Name).store.set(func(s *fakeStore) { s.hang = true })
	start := time.Now()
	if _, err := r.Write(context.Background(), data); err != nil {
		t.Fatalf("Write with a hung first owner: %v", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("Write took %v with a hung owner", took)
	}
	got := m.holders(id)
	want := []string{order[1].Name, order[2].Name, order[3].Name}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("copies on %v, want the next three in order %v", got, want)
	}
}

// TestReplicatorWriteDeadlineWithMajority: when the caller's deadline ends
// a write that already holds a majority of copies, the write stands.
func TestReplicatorWriteDeadlineWithMajority(t *testing.T) {
	m := newTestMesh(t, 3)
	r := NewReplicator(m.client, m.Members, 3)
	data := randomBlock(t, 1000)
	id := persist.Sum(data)
	order := mesh.Placement{}.Order(id, m.Members())
	m.node(order[2].Name).store.set(func(s *fakeStore) { s.hang = true })
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	if _, err := r.Write(ctx, data); err != nil {
		t.Fatalf("Write holding 2 of 3 copies when its deadline came: %v", err)
	}
}
