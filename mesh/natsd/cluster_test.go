package natsd

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// startClustered starts a clustered server with its own temp dir.
func startClustered(t *testing.T, name string, routes ...string) *Server {
	t.Helper()
	s, err := Start(Config{Name: name, Dir: t.TempDir(), ClusterName: "mesh", Secret: "s3cret", Routes: routes})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Shutdown)
	return s
}

// waitMetaGroup waits until every server sees a meta leader and a group of
// size peers, and returns how long that took.
func waitMetaGroup(t *testing.T, size int, ss ...*Server) time.Duration {
	t.Helper()
	t0 := time.Now()
	for time.Since(t0) < 15*time.Second {
		ok := true
		for _, s := range ss {
			if l, sz, _ := s.MetaGroup(); l == "" || sz != size {
				ok = false
			}
		}
		if ok {
			return time.Since(t0)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, s := range ss {
		l, sz, q := s.MetaGroup()
		t.Logf("%s: leader %q size %d quorum %d routes %d", s.ns.Name(), l, sz, q, s.ns.NumRoutes())
	}
	t.Fatalf("no meta group of %d after %v", size, time.Since(t0))
	return 0
}

func jsClient(t *testing.T, ctx context.Context, s *Server) jetstream.JetStream {
	t.Helper()
	nc, err := Connect(ctx, []string{s.ClientURL()}, "s3cret", "test", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// createKV creates a bucket, retrying while the meta group is not ready for
// it. Two things were seen: for a moment after the election placement fails
// with "no suitable peers for placement, peer offline" (err_code 10005), and
// on a loaded machine (CI, every package's tests at once) a request sent just
// after the election got no answer at all, because a meta group that is
// between leaders drops API requests instead of refusing them. So each
// attempt has its own deadline, and a timed-out attempt is tried again.
func createKV(t *testing.T, ctx context.Context, js jetstream.JetStream, cfg jetstream.KeyValueConfig) jetstream.KeyValue {
	t.Helper()
	t0 := time.Now()
	for {
		actx, cancel := context.WithTimeout(ctx, 3*time.Second)
		kv, err := js.CreateKeyValue(actx, cfg)
		cancel()
		if err == nil {
			return kv
		}
		retry := strings.Contains(err.Error(), "no suitable peers") || errors.Is(err, context.DeadlineExceeded)
		if !retry || ctx.Err() != nil || time.Since(t0) > 30*time.Second {
			t.Fatalf("create bucket %s R%d after %v: %v", cfg.Bucket, cfg.Replicas, time.Since(t0), err)
		}
		t.Logf("create bucket %s: %v; trying again", cfg.Bucket, err)
		time.Sleep(100 * time.Millisecond)
	}
}

func TestClusterURLAndStandaloneSetRoutes(t *testing.T) {
	s, err := Start(Config{Name: "solo", Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown()
	if u := s.ClusterURL(); u != "" {
		t.Fatalf("standalone ClusterURL = %q, want empty", u)
	}
	if err := s.SetRoutes([]string{"nats-route://127.0.0.1:1"}); err == nil {
		t.Fatal("SetRoutes on a standalone server succeeded")
	}
	c := startClustered(t, "c")
	if !strings.HasPrefix(c.ClusterURL(), "nats-route://127.0.0.1:") {
		t.Fatalf("ClusterURL = %q", c.ClusterURL())
	}
}

// A clustered server alone bootstraps a meta group that expects at least two
// peers (server/raft.go bootstrapRaftNode), so it never elects a leader and
// JetStream requests time out. See CLUSTERING.md.
func TestClusterAloneHasNoQuorum(t *testing.T) {
	s := startClustered(t, "alone")
	time.Sleep(time.Second)
	l, size, quorum := s.MetaGroup()
	if l != "" || size != 2 || quorum != 2 {
		t.Fatalf("lone clustered server: leader %q size %d quorum %d; want no leader, size 2, quorum 2", l, size, quorum)
	}
}

// Three servers started on their own (each routing only to itself) form one
// meta group once given a peer's route at run time; an R3 bucket works; a
// fourth server that joins later, routing to one peer only, becomes a member
// without the others restarting.
func TestClusterFormsFromRoutesLearnedLater(t *testing.T) {
	a := startClustered(t, "a")
	b := startClustered(t, "b")
	c := startClustered(t, "c")
	// Routes are gossiped: knowing one peer is enough.
	if err := b.SetRoutes([]string{a.ClusterURL()}); err != nil {
		t.Fatal(err)
	}
	if err := c.SetRoutes([]string{a.ClusterURL(), c.ClusterURL()}); err != nil {
		t.Fatal(err)
	}
	t.Logf("meta group of 3 after %v", waitMetaGroup(t, 3, a, b, c))

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	js := jsClient(t, ctx, c)
	kv := createKV(t, ctx, js, jetstream.KeyValueConfig{Bucket: "meta", Replicas: 3})
	t0 := time.Now()
	const n = 200
	for i := range n {
		if _, err := kv.Put(ctx, fmt.Sprint("k", i), []byte("v")); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("%d sequential R3 puts in %v", n, time.Since(t0))

	d := startClustered(t, "d")
	if err := d.SetRoutes([]string{b.ClusterURL()}); err != nil {
		t.Fatal(err)
	}
	t.Logf("fourth server in the meta group after %v", waitMetaGroup(t, 4, a, b, c, d))
	jsd := jsClient(t, ctx, d)
	kvd, err := jsd.KeyValue(ctx, "meta")
	if err != nil {
		t.Fatal(err)
	}
	if e, err := kvd.Get(ctx, "k7"); err != nil || string(e.Value()) != "v" {
		t.Fatalf("get through the fourth server: %v", err)
	}
}

// Two servers form a meta group of two (R1 works); when a third joins, the
// bucket is raised to R3 by a stream update and keeps its data.
func TestClusterR1BucketBecomesR3(t *testing.T) {
	a := startClustered(t, "a")
	b := startClustered(t, "b", a.ClusterURL())
	waitMetaGroup(t, 2, a, b)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	js := jsClient(t, ctx, a)
	kv := createKV(t, ctx, js, jetstream.KeyValueConfig{Bucket: "meta"})
	if _, err := kv.Put(ctx, "x", []byte("1")); err != nil {
		t.Fatal(err)
	}

	c := startClustered(t, "c", b.ClusterURL())
	waitMetaGroup(t, 3, a, b, c)
	st, err := js.Stream(ctx, "KV_meta")
	if err != nil {
		t.Fatal(err)
	}
	cfg := st.CachedInfo().Config
	cfg.Replicas = 3
	t0 := time.Now()
	if _, err := js.UpdateStream(ctx, cfg); err != nil {
		t.Fatalf("raise bucket to R3: %v", err)
	}
	for {
		si, err := st.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		cur := 0
		if si.Cluster != nil {
			for _, r := range si.Cluster.Replicas {
				if r.Current {
					cur++
				}
			}
		}
		if si.Config.Replicas == 3 && cur == 2 {
			t.Logf("R3 with both followers current after %v", time.Since(t0))
			break
		}
		if time.Since(t0) > 10*time.Second {
			t.Fatalf("bucket not R3 with current followers after 10s: %+v", si.Cluster)
		}
		time.Sleep(50 * time.Millisecond)
	}
	jsc := jsClient(t, ctx, c)
	kvc, err := jsc.KeyValue(ctx, "meta")
	if err != nil {
		t.Fatal(err)
	}
	if e, err := kvc.Get(ctx, "x"); err != nil || string(e.Value()) != "1" {
		t.Fatalf("get x through the third server: %v", err)
	}
}

func startTagged(t *testing.T, name string, tags []string, routes ...string) *Server {
	t.Helper()
	s, err := Start(Config{Name: name, Dir: t.TempDir(), ClusterName: "mesh", Secret: "s3cret", Routes: routes, Tags: tags})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Shutdown)
	return s
}

// A founding server with an untagged witness beside it has a meta group of
// two, so an R1 bucket placed by tag works at once. Once three tagged
// servers are in the group, the witness is shut down and removed: the
// group is three again, the bucket is raised to R3, and it survives the
// loss of the founding server.
func TestClusterWitnessRetires(t *testing.T) {
	data := []string{"data"}
	a := startTagged(t, "a", data)
	w := startTagged(t, "a-witness", nil, a.ClusterURL())
	waitMetaGroup(t, 2, a, w)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	js := jsClient(t, ctx, a)
	kv := createKV(t, ctx, js, jetstream.KeyValueConfig{Bucket: "meta", Placement: &jetstream.Placement{Tags: data}})
	if _, err := kv.Put(ctx, "x", []byte("1")); err != nil {
		t.Fatal(err)
	}
	si, err := js.Stream(ctx, "KV_meta")
	if err != nil {
		t.Fatal(err)
	}
	if l := si.CachedInfo().Cluster.Leader; l != "a" {
		t.Fatalf("R1 bucket placed on %q, want the tagged server a", l)
	}

	// Two servers joining at once, each routing to the founding pair: in
	// an earlier version c routed only to b, and the two fresh servers
	// sometimes elected each other into a second group of two.
	b := startTagged(t, "b", data, a.ClusterURL(), w.ClusterURL())
	c := startTagged(t, "c", data, a.ClusterURL(), w.ClusterURL())
	t.Logf("meta group of 4 after %v", waitMetaGroup(t, 4, a, b, c, w))
	t0 := time.Now()
	for {
		online := 0
		for _, p := range a.MetaPeers() {
			if !p.Offline && p.Name != "a-witness" {
				online++
			}
		}
		if online == 3 {
			break
		}
		if time.Since(t0) > 15*time.Second {
			t.Fatalf("a does not see three tagged peers online: %+v", a.MetaPeers())
		}
		time.Sleep(50 * time.Millisecond)
	}
	w.Shutdown()
	if err := a.RemovePeer(ctx, "a-witness"); err != nil {
		t.Fatal(err)
	}
	t.Logf("meta group of 3 after removing the witness: %v", waitMetaGroup(t, 3, a, b, c))
	for l, _, _ := a.MetaGroup(); l == "" || l == "a-witness"; l, _, _ = a.MetaGroup() {
		time.Sleep(20 * time.Millisecond)
	}

	cfg := si.CachedInfo().Config
	cfg.Replicas = 3
	retryAPI(t, ctx, "raise bucket to R3", func(ctx context.Context) error {
		_, err := js.UpdateStream(ctx, cfg)
		return err
	})
	waitCurrent(t, ctx, js, "KV_meta", 2)
	a.Shutdown()

	jsc := jsClient(t, ctx, c)
	t1 := time.Now()
	var kvc jetstream.KeyValue
	retryAPI(t, ctx, "bind bucket through c", func(ctx context.Context) (err error) {
		kvc, err = jsc.KeyValue(ctx, "meta")
		return err
	})
	for {
		actx, acancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := kvc.Put(actx, "y", []byte("2"))
		acancel()
		if err == nil {
			break
		}
		if time.Since(t1) > 20*time.Second {
			t.Fatalf("put after losing a: %v", err)
		}
	}
	t.Logf("writes go on %v after the founding server went", time.Since(t1))
	if e, err := kvc.Get(ctx, "x"); err != nil || string(e.Value()) != "1" {
		t.Fatalf("get x after losing a: %v", err)
	}
}

// retryAPI calls fn with a 3 s deadline per attempt until it succeeds,
// retrying attempts that got no answer (the meta group between leaders).
func retryAPI(t *testing.T, ctx context.Context, what string, fn func(ctx context.Context) error) {
	t.Helper()
	t0 := time.Now()
	for {
		actx, cancel := context.WithTimeout(ctx, 3*time.Second)
		err := fn(actx)
		cancel()
		if err == nil {
			return
		}
		if !errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil {
			t.Fatalf("%s after %v: %v", what, time.Since(t0), err)
		}
		t.Logf("%s: %v; trying again", what, err)
	}
}

// waitCurrent waits until the stream has want followers that are current.
func waitCurrent(t *testing.T, ctx context.Context, js jetstream.JetStream, stream string, want int) {
	t.Helper()
	t0 := time.Now()
	for {
		st, err := js.Stream(ctx, stream)
		if err != nil {
			t.Fatal(err)
		}
		cur := 0
		if ci := st.CachedInfo().Cluster; ci != nil {
			for _, r := range ci.Replicas {
				if r.Current {
					cur++
				}
			}
		}
		if cur == want {
			return
		}
		if time.Since(t0) > 15*time.Second {
			t.Fatalf("%s: %d current followers after 15s, want %d", stream, cur, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
