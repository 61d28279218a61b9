package actors

import (
	"context"
	"crypto/rand"
	"fmt"
	"sort"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/meshfs/meshfs/mesh"
	"github.com/meshfs/meshfs/persist"
)

// memStore is one node's block store in memory.
type memStore struct {
	mu     sync.Mutex
	blocks map[persist.BlockID][]byte
	badGet bool // every Get fails, as from a failing disk
	// rotten blocks fail Get with persist.ErrCorrupt.
	rotten map[persist.BlockID]bool
}

func (s *memStore) List(ctx context.Context, fn func(persist.BlockID, int) error) error {
	s.mu.Lock()
	ids := make([]persist.BlockID, 0, len(s.blocks))
	sizes := map[persist.BlockID]int{}
	for id, b := range s.blocks {
		ids = append(ids, id)
		sizes[id] = len(b)
	}
	s.mu.Unlock()
	for _, id := range ids {
		if err := fn(id, sizes[id]); err != nil {
			return err
		}
	}
	return nil
}
func (s *memStore) Get(ctx context.Context, id persist.BlockID) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.badGet {
		return nil, fmt.Errorf("read block %s: input/output error", id)
	}
	b, ok := s.blocks[id]
	if !ok {
		return nil, persist.ErrNotFound
	}
	if s.rotten[id] {
		return nil, fmt.Errorf("get block %s: %w", id, persist.ErrCorrupt)
	}
	return b, nil
}
func (s *memStore) Delete(ctx context.Context, id persist.BlockID) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.blocks, id)
	return nil
}
func (s *memStore) has(id persist.BlockID) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.blocks[id]
	return ok
}

// memMesh is a mesh of memStores addressed by "addr-<name>"; a dead
// node's store stays on disk but does not answer.
type memMesh struct {
	mu        sync.Mutex
	stores    map[string]*memStore
	members   []mesh.Member
	repairers map[string]*Repairer // one per node, living across rounds as in a node
	putErr    error                // every Put fails with it when set (a full disk)
}

func (m *memMesh) store(addr string) (*memStore, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, mem := range m.members {
		if mem.HTTP == addr && mem.Live() {
			return m.stores[mem.Name], nil
		}
	}
	return nil, fmt.Errorf("%s: connection refused", addr)
}
func (m *memMesh) List(ctx context.Context, addr string, fn func(persist.BlockID, int) error) error {
	s, err := m.store(addr)
	if err != nil {
		return err
	}
	return s.List(ctx, fn)
}
func (m *memMesh) Put(ctx context.Context, addr string, id persist.BlockID, data []byte) error {
	m.mu.Lock()
	putErr := m.putErr
	m.mu.Unlock()
	if putErr != nil {
		return putErr
	}
	s, err := m.store(addr)
	if err != nil {
		return err
	}
	if persist.Sum(data) != id {
		return persist.ErrHashMismatch
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.blocks[id] = append([]byte(nil), data...)
	return nil
}
func (m *memMesh) Has(ctx context.Context, addr string, id persist.BlockID) (bool, error) {
	s, err := m.store(addr)
	if err != nil {
		return false, err
	}
	return s.has(id), nil
}
func (m *memMesh) Members() []mesh.Member {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]mesh.Member(nil), m.members...)
}
func (m *memMesh) Changes() <-chan struct{} { return nil }

func (m *memMesh) add(name string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.stores[name] = &memStore{blocks: map[persist.BlockID][]byte{}}
	m.members = append(m.members, mesh.Member{Name: name, HTTP: "addr-" + name, State: mesh.StateAlive})
}
func (m *memMesh) setState(name string, st mesh.State, since time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for i := range m.members {
		if m.members[i].Name == name {
			m.members[i].State, m.members[i].Since = st, since
		}
	}
}

// liveCopies counts each block's copies on live nodes.
func (m *memMesh) liveCopies(ids []persist.BlockID) map[persist.BlockID]int {
	out := map[persist.BlockID]int{}
	for _, mem := range m.Members() {
		if !mem.Live() {
			continue
		}
		for _, id := range ids {
			if m.stores[mem.Name].has(id) {
				out[id]++
			}
		}
	}
	return out
}

// round runs one repair round on every live node, in turn, checking after
// each that no block went below min(r, its copies before the round).
func (m *memMesh) round(t *testing.T, r int, delay time.Duration, ids []persist.BlockID) {
	t.Helper()
	for _, mem := range m.Members() {
		if !mem.Live() {
			continue
		}
		before := m.liveCopies(ids)
		rep := m.repairers[mem.Name]
		if rep == nil {
			rep = NewRepairer(m.stores[mem.Name], m, m, RepairConfig{Self: mem.Name, Replicas: r, RepairDelay: delay, Rate: 1 << 40}, quietLog())
			m.repairers[mem.Name] = rep
		}
		if _, err := rep.Round(context.Background()); err != nil {
			t.Fatalf("round on %s: %v", mem.Name, err)
		}
		after := m.liveCopies(ids)
		for _, id := range ids {
			if after[id] < min(before[id], r) {
				t.Fatalf("round on %s took block %s from %d to %d live copies", mem.Name, id, before[id], after[id])
			}
		}
	}
}

func newMemMesh(t *testing.T, nodes, blocks, r int) (*memMesh, []persist.BlockID) {
	m := &memMesh{stores: map[string]*memStore{}, repairers: map[string]*Repairer{}}
	for i := 1; i <= nodes; i++ {
		m.add(fmt.Sprintf("n%d", i))
	}
	var ids []persist.BlockID
	for i := 0; i < blocks; i++ {
		b := make([]byte, 100)
		rand.Read(b)
		id := persist.Sum(b)
		ids = append(ids, id)
		for _, o := range (mesh.Placement{}).Owners(id, m.members, r) {
			m.stores[o.Name].blocks[id] = b
		}
	}
	return m, ids
}

// checkOnOwners asserts every block is held by exactly its r owners.
func (m *memMesh) checkOnOwners(t *testing.T, r int, ids []persist.BlockID) {
	t.Helper()
	members := m.Members()
	for _, id := range ids {
		var want, got []string
		for _, o := range (mesh.Placement{}).Owners(id, members, r) {
			want = append(want, o.Name)
		}
		for _, mem := range members {
			if mem.Live() && m.stores[mem.Name].has(id) {
				got = append(got, mem.Name)
			}
		}
		sort.Strings(want)
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("block %s on %v, want its owners %v", id, got, want)
		}
	}
}

func TestRepairHealsDeathAndRebalancesJoin(t *testing.T) {
	const r = 3
	m, ids := newMemMesh(t, 5, 300, r)
	m.round(t, r, time.Hour, ids) // a quiet mesh: every node learns the others' inventories
	m.checkOnOwners(t, r, ids)

	// Blocks written after that round are not in anyone's last inventory
	// of n2; placement still tells that n2 held them.
	for i := 0; i < 60; i++ {
		b := make([]byte, 100)
		rand.Read(b)
		id := persist.Sum(b)
		ids = append(ids, id)
		for _, o := range (mesh.Placement{}).Owners(id, m.Members(), r) {
			m.stores[o.Name].blocks[id] = b
		}
	}

	// A death within the repair delay: nothing is copied yet.
	heldByN2 := map[persist.BlockID]bool{}
	for _, id := range ids {
		heldByN2[id] = m.stores["n2"].has(id)
	}
	m.setState("n2", mesh.StateDead, time.Now())
	m.round(t, r, time.Hour, ids)
	copies := m.liveCopies(ids)
	moved := 0
	for _, id := range ids {
		want := r
		if heldByN2[id] {
			want, moved = r-1, moved+1
		}
		if copies[id] != want {
			t.Fatalf("block %s has %d live copies within the repair delay, want %d (n2 held it: %v)", id, copies[id], want, heldByN2[id])
		}
	}
	if moved == 0 {
		t.Fatal("n2 held no blocks: the test tests nothing")
	}
	t.Logf("%d blocks waiting for n2 within the repair delay", moved)

	// Past the delay: every block is back on its 3 (new) owners.
	m.setState("n2", mesh.StateDead, time.Now().Add(-2*time.Hour))
	m.round(t, r, time.Hour, ids)
	m.round(t, r, time.Hour, ids)
	m.checkOnOwners(t, r, ids)

	// A new node joins: it receives its share, and surplus copies go only
	// after it holds them (checked by round after every node's step).
	m.add("n6")
	for i := 0; i < 3; i++ {
		m.round(t, r, time.Hour, ids)
	}
	m.checkOnOwners(t, r, ids)
	share := 0
	for _, id := range ids {
		if m.stores["n6"].has(id) {
			share++
		}
	}
	// 5 live nodes, 3 copies each: n6 should hold about 3/5 of the blocks.
	if f := float64(share) / float64(len(ids)); f < 0.45 || f > 0.75 {
		t.Fatalf("n6 holds %.2f of the blocks, want about 0.6", f)
	}
}

func TestRepairLastCopyIsCopiedAtOnce(t *testing.T) {
	const r = 3
	m, ids := newMemMesh(t, 4, 100, r)
	now := time.Now()
	m.setState("n1", mesh.StateDead, now)
	m.setState("n2", mesh.StateDead, now)
	m.round(t, r, time.Hour, ids)
	copies := m.liveCopies(ids)
	for _, id := range ids {
		if copies[id] < 2 {
			t.Fatalf("block %s has %d live copies after a round: its last copy was not copied at once", id, copies[id])
		}
	}
}

// TestRepairSourceWithUnreadableCopy: the node every planner names as the
// source of a block cannot read its own copy; it sends one fetched from
// another node instead, so the block is not stuck below R.
func TestRepairSourceWithUnreadableCopy(t *testing.T) {
	const r = 3
	m, ids := newMemMesh(t, 5, 200, r)
	m.round(t, r, time.Hour, ids)
	m.stores["n3"].mu.Lock()
	m.stores["n3"].badGet = true
	m.stores["n3"].mu.Unlock()
	var mu sync.Mutex
	suspects := 0
	fetch := func(ctx context.Context, id persist.BlockID) ([]byte, error) {
		for _, mem := range m.Members() {
			if mem.Name != "n3" && mem.Live() {
				if b, err := m.stores[mem.Name].Get(ctx, id); err == nil {
					return b, nil
				}
			}
		}
		return nil, persist.ErrNotFound
	}
	m.repairers["n3"] = NewRepairer(m.stores["n3"], m, m, RepairConfig{Self: "n3", Replicas: r, RepairDelay: time.Hour, Rate: 1 << 40,
		Fetch: fetch, Suspect: func(persist.BlockID) { mu.Lock(); suspects++; mu.Unlock() }}, quietLog())
	m.setState("n1", mesh.StateDead, time.Now().Add(-2*time.Hour))
	m.round(t, r, time.Hour, ids)
	m.checkOnOwners(t, r, ids)
	if suspects == 0 {
		t.Fatal("n3 was never the source of a copy: the test tests nothing")
	}
	t.Logf("n3 sourced %d copies from other nodes and reported its own copies", suspects)
}

// TestRepairDropsNoRottenCopyUnseen: a surplus copy is read before it is
// dropped, and a rotten one is reported as it goes, so the rot is counted;
// good ones go without a report.
func TestRepairDropsNoRottenCopyUnseen(t *testing.T) {
	const r = 3
	m, ids := newMemMesh(t, 4, 50, r)
	// n4 holds a surplus copy of each block it does not own (as after a
	// hedged write), and one of them is rotten.
	var surplus []persist.BlockID
	for _, id := range ids {
		if m.stores["n4"].has(id) {
			continue
		}
		for _, st := range m.stores {
			if b := st.blocks[id]; b != nil {
				m.stores["n4"].blocks[id] = b
			}
		}
		surplus = append(surplus, id)
	}
	if len(surplus) < 2 {
		t.Fatalf("n4 owns %d of %d blocks: too few surplus copies to test", len(ids)-len(surplus), len(ids))
	}
	bad := surplus[0]
	m.stores["n4"].rotten = map[persist.BlockID]bool{bad: true}
	var mu sync.Mutex
	var dropped []persist.BlockID
	m.repairers["n4"] = NewRepairer(m.stores["n4"], m, m, RepairConfig{Self: "n4", Replicas: r, RepairDelay: time.Hour, Rate: 1 << 40,
		Dropped: func(id persist.BlockID) { mu.Lock(); dropped = append(dropped, id); mu.Unlock() }}, quietLog())
	m.round(t, r, time.Hour, ids)
	m.checkOnOwners(t, r, ids)
	if len(dropped) != 1 || dropped[0] != bad {
		t.Fatalf("rotten copies reported as dropped: %v, want only %s", dropped, bad)
	}
}

// TestRepairSkipsGarbage: blocks the collector condemned are not copied
// back after another node removed its copy.
func TestRepairSkipsGarbage(t *testing.T) {
	const r = 3
	m, ids := newMemMesh(t, 4, 50, r)
	m.round(t, r, time.Hour, ids)
	for _, mem := range m.Members() {
		m.repairers[mem.Name].cfg.Skip = func(persist.BlockID) bool { return true }
	}
	// n1's collector removed its copies; nobody may copy them back.
	removed := 0
	for _, id := range ids {
		if m.stores["n1"].has(id) {
			m.stores["n1"].Delete(context.Background(), id)
			removed++
		}
	}
	m.round(t, r, time.Hour, ids)
	for _, id := range ids {
		if m.stores["n1"].has(id) {
			t.Fatalf("block %s was copied back to n1 although it is garbage", id)
		}
	}
	t.Logf("%d garbage copies stayed removed", removed)
}

// TestRepairBacksOffWhenCopiesFail: when every copy fails (a target's disk
// is full), the actor does not re-plan back to back: each round lists every
// peer's inventory, and a tight loop would hammer the mesh.
func TestRepairBacksOffWhenCopiesFail(t *testing.T) {
	const r = 3
	m, ids := newMemMesh(t, 4, 50, r)
	m.round(t, r, time.Hour, ids)
	m.setState("n1", mesh.StateDead, time.Now().Add(-2*time.Hour))
	m.putErr = fmt.Errorf("put: 507 disk full: %w", syscall.ENOSPC)
	rep := NewRepairer(m.stores["n2"], m, m, RepairConfig{Self: "n2", Replicas: r, RepairDelay: time.Hour, Rate: 1 << 40, Interval: time.Hour}, quietLog())
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	rep.Run(ctx)
	st := rep.Stats()
	if st.Failed == 0 {
		t.Fatal("no copy was attempted: the test tests nothing")
	}
	if st.Rounds > 4 {
		t.Fatalf("%d rounds in 1.5 s while every copy failed: no back-off", st.Rounds)
	}
	t.Logf("%d rounds, %d failed copies in 1.5 s", st.Rounds, st.Failed)
}
