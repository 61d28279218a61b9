package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"time"

	"github.com/meshfs/meshfs/actors"
	"github.com/meshfs/meshfs/mesh"
	"github.com/meshfs/meshfs/mesh/blocknet"
	"github.com/meshfs/meshfs/mesh/natsd"
	"github.com/meshfs/meshfs/persist"
)

const (
	defaultBlockSize = 4 << 20
	defaultReplicas  = 3
)

// nodeState is what a data dir remembers about its node between runs.
type nodeState struct {
	Name      string `json:"name"`
	ClusterID string `json:"cluster_id"`
	BlockSize int    `json:"block_size"`
	Replicas  int    `json:"replicas"`
	MetaHome  bool   `json:"meta_home"`
	// FSCreated: this node started the mesh and has created its file
	// system (the metadata bucket and the root directory).
	FSCreated bool `json:"fs_created,omitempty"`
	// The addresses bound last time. A flag with port 0 reuses them when
	// they are free, so a restarted node comes back where its peers knew it
	// and gossip takes it back at once instead of seeing an address conflict.
	Gossip string `json:"gossip,omitempty"`
	API    string `json:"api,omitempty"`
	NATS   string `json:"nats,omitempty"`
}

// nodeAddrs is written to DATA/addr.json once the node serves, so scripts
// and 'meshfs up' learn the ports a node picked.
type nodeAddrs struct {
	Name   string `json:"name"`
	PID    int    `json:"pid"`
	Gossip string `json:"gossip"`
	HTTP   string `json:"http"`
	NATS   string `json:"nats"`
}

func runNode(args []string) error {
	fs := newFlags("node", "meshfs node --data DIR [--join ADDR] [flags]")
	data := fs.String("data", "", "data directory: blocks, metadata and node state (required)")
	gossip := fs.String("gossip", "127.0.0.1:7946", "gossip (memberlist) address, host:port; port 0 picks a free one")
	api := fs.String("api", "127.0.0.1:7947", "block API address for clients and peers, host:port; port 0 picks a free one")
	natsAddr := fs.String("nats", "127.0.0.1:4222", "embedded NATS server address, host:port; port 0 picks a free one")
	var joins listFlag
	fs.Var(&joins, "join", "gossip address of any member to join (repeatable or comma-separated); none starts a new mesh")
	joinTimeout := fs.Duration("join-timeout", 30*time.Second, "how long to keep trying the --join addresses")
	name := fs.String("name", "", "node name, unique in the mesh (default: the one recorded in the data dir, else hostname-random)")
	zone := fs.String("zone", "", "failure zone (rack, site) of this node")
	gossipProfile := fs.String("gossip-profile", mesh.GossipLAN, "gossip timing: lan (one site: a dead node noticed in seconds) or wan (sites with round trips up to a few hundred ms between them: slower to suspect a far node); every node of a mesh should use the same")
	capacity := fs.Int64("capacity", 0, "bytes of blocks this node may store (0: limited by its disk only)")
	reserve := fs.Uint64("disk-reserve", 0, "bytes of the data dir's file system that blocks leave free for metadata (0: 2% of it, at least 64 MiB, at most 1 GiB)")
	blockSize := fs.Int("block-size", 0, "block size in bytes of a new cluster (default 4 MiB); a joining node adopts the mesh's")
	replicas := fs.Int("replicas", 0, "copies of each block in a new cluster (default 3); a joining node adopts the mesh's")
	secretFile := fs.String("secret-file", "", "file holding the cluster secret (or set MESHFS_SECRET)")
	scrubPeriod := fs.Duration("scrub-period", 24*time.Hour, "how long one full scrub pass (re-read and verify every block) should take")
	scrubRate := fs.Float64("scrub-max-rate", 50<<20, "bytes/s the scrubber may read at most, so it never starves client I/O")
	repairDelay := fs.Duration("repair-delay", 30*time.Second, "how long a block that lost one of several copies to a node death waits before it is copied (a block down to its last copy is copied at once)")
	repairRate := fs.Float64("repair-rate", 100<<20, "bytes/s this node may send as repair and rebalance copies")
	repairConcurrency := fs.Int("repair-concurrency", 4, "repair copies this node sends at once")
	repairInterval := fs.Duration("repair-interval", 30*time.Second, "how often the node re-checks its blocks' copies without a membership change")
	collectGrace := fs.Duration("collect-grace", 24*time.Hour, "an unreferenced block is removed only when it was last stored longer ago than this (must exceed the longest write in progress)")
	collectInterval := fs.Duration("collect-interval", 10*time.Minute, "how often the node removes blocks no file references")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usagef("unexpected argument %q", pos[0])
	}
	if *data == "" {
		return usagef("--data DIR is required")
	}
	tune, err := mesh.GossipProfile(*gossipProfile)
	if err != nil {
		return usagef("--gossip-profile: %v", err)
	}
	log, err := newLogger(os.Stderr, *logLevel)
	if err != nil {
		return err
	}
	secret, err := loadSecret(*secretFile)
	if err != nil {
		return err
	}
	ctx, stop := signalContext()
	defer stop()

	if err := os.MkdirAll(*data, 0o700); err != nil {
		return fmt.Errorf("create data dir: %w", err)
	}
	unlock, err := lockDataDir(*data)
	if err != nil {
		return err
	}
	defer unlock()

	state, fresh, err := loadNodeState(*data)
	if err != nil {
		return err
	}
	if !fresh {
		if state.ClusterID != secret.ClusterID() {
			return fmt.Errorf("data dir %s belongs to cluster %s, but this secret is of cluster %s: %w", *data, state.ClusterID, secret.ClusterID(), persist.ErrWrongCluster)
		}
		if *blockSize != 0 && *blockSize != state.BlockSize {
			return fmt.Errorf("data dir %s holds blocks of %d bytes, not --block-size %d: %w", *data, state.BlockSize, *blockSize, persist.ErrWrongBlockSize)
		}
		if *name != "" && *name != state.Name {
			return usagef("data dir %s belongs to node %q, not --name %q", *data, state.Name, *name)
		}
	} else {
		state = nodeState{Name: *name, ClusterID: secret.ClusterID()}
		if state.Name == "" {
			state.Name = defaultNodeName()
		}
	}

	var apiLn net.Listener
	err = withPreferred(*api, state.API, func(addr string) (err error) {
		apiLn, err = net.Listen("tcp", addr)
		return err
	})
	if err != nil {
		return fmt.Errorf("listen for the block API on %s: %w", *api, err)
	}
	defer apiLn.Close()
	var ns *natsd.Server
	err = withPreferred(*natsAddr, state.NATS, func(addr string) error {
		host, port, err := splitHostPort(addr)
		if err != nil {
			return usagef("--nats %q: %v", addr, err)
		}
		ns, err = natsd.Start(natsd.Config{
			Name: state.Name, Dir: filepath.Join(*data, "nats"),
			Host: host, Port: port, Secret: secret.NATSToken(),
			ClusterName: metaClusterName, Tags: dataTags,
		})
		return err
	})
	if err != nil {
		return fmt.Errorf("start metadata server: %w", err)
	}
	defer ns.Shutdown()
	// The node that starts a mesh runs a witness until the mesh has three
	// metadata servers (see metacluster.go); a restart finds its dir.
	witnessDir := filepath.Join(*data, "nats-witness")
	var witness *natsd.Server
	if _, err := os.Stat(witnessDir); (fresh && len(joins) == 0) || (!fresh && state.MetaHome && err == nil) {
		host, _, _ := splitHostPort(ns.Addr())
		if witness, err = startWitness(state.Name, witnessDir, host, secret.NATSToken(), ns, nil); err != nil {
			return err
		}
	}

	var members *mesh.Membership
	err = withPreferred(*gossip, state.Gossip, func(addr string) (err error) {
		members, err = mesh.NewMembership(mesh.MembershipConfig{Secret: secret, Logger: log, Tune: tune, Self: mesh.Member{
			Name: state.Name, Gossip: addr, HTTP: apiLn.Addr().String(), NATS: ns.Addr(), Route: ns.ClusterURL(),
			Zone: *zone, Capacity: *capacity,
			MetaHome: state.MetaHome, BlockSize: state.BlockSize, Replicas: state.Replicas,
		}})
		return err
	})
	if err != nil {
		return err
	}
	defer members.Leave(2 * time.Second)
	if len(joins) > 0 {
		jctx, cancel := context.WithTimeout(ctx, *joinTimeout)
		err := members.Join(jctx, joins)
		cancel()
		switch {
		case err != nil && ctx.Err() != nil:
			return ctx.Err() // stopped while joining
		case err != nil && fresh:
			return fmt.Errorf("%w (tried for %v; is a node running there, with the same secret?)", err, *joinTimeout)
		case err != nil:
			// A member before, whose peers may all be down as well (a
			// power cut, a whole mesh restarted): waiting for one of them
			// to answer first would keep every node from starting. It
			// serves, and goes on trying them; they find each other as
			// they come back.
			log.Warn("no member answered at the --join addresses; this node was a member before, so it starts and goes on joining them", "join", joins.String(), "tried_for", *joinTimeout, "err", err)
			jctx, cancel := context.WithCancel(ctx)
			joined := make(chan struct{})
			go func() {
				defer close(joined)
				if err := members.Join(jctx, joins); err == nil {
					log.Info("joined the mesh", "join", joins.String())
				}
			}()
			defer func() { cancel(); <-joined }()
		}
	}

	if fresh {
		if err := adoptClusterSettings(ctx, log, members, &state, len(joins) > 0, *blockSize, *replicas); err != nil {
			return err
		}
		if err := members.UpdateSelf(ctx, func(m *mesh.Member) {
			m.BlockSize, m.Replicas, m.MetaHome = state.BlockSize, state.Replicas, state.MetaHome
		}); err != nil {
			log.Warn("advertise cluster settings", "err", err)
		}
	}
	store, err := persist.Open(*data, persist.Options{ClusterID: state.ClusterID, BlockSize: state.BlockSize})
	if err != nil {
		return fmt.Errorf("open block store: %w", err)
	}
	defer store.Close()
	state.Gossip, state.API, state.NATS = members.Self().Gossip, apiLn.Addr().String(), ns.Addr()
	if err := saveNodeState(*data, state); err != nil {
		return err
	}

	client := blocknet.NewClient(secret.BlockKey(), time.Minute)
	sup := actors.NewSupervisor(ctx, log)
	defer sup.Close()
	keeper := &metaCluster{
		log: log.With("actor", "metadata"), self: state.Name, members: members, ns: ns,
		secret: secret.NATSToken(), blockSize: state.BlockSize, witnessDir: witnessDir, witness: witness,
		createFS: state.MetaHome && !state.FSCreated,
		created: func() error {
			state.FSCreated = true
			return saveNodeState(*data, state)
		},
		ready: make(chan struct{}),
	}
	defer keeper.Close()
	sup.Start("metadata", keeper)
	// Good copies come from the other nodes only: reading our own corrupt
	// copy would report it to ourselves, over and over.
	others := blocknet.NewReplicator(client, func() []mesh.Member {
		return slices.DeleteFunc(members.Members(), func(m mesh.Member) bool { return m.Name == state.Name })
	}, state.Replicas)
	scrubber := actors.NewScrubber(store, fetcher{others}, actors.ScrubConfig{Period: *scrubPeriod, MaxRate: *scrubRate}, log.With("actor", "scrub"))
	sup.Start("scrub", scrubber)
	if *collectGrace < 10*time.Minute {
		log.Warn("--collect-grace below 10 minutes can remove blocks a write in progress still needs; use it for tests only", "collect_grace", *collectGrace)
	}
	refs := &metaRefs{members: members.Members, token: secret.NATSToken(), client: "meshfs node " + state.Name + " collector", blockSize: state.BlockSize}
	defer refs.Close()
	collector := actors.NewCollector(store, refs, actors.CollectConfig{Grace: *collectGrace, Interval: *collectInterval}, log.With("actor", "collect"))
	sup.Start("collect", collector)
	repairer := actors.NewRepairer(store, client, members, actors.RepairConfig{
		Self: state.Name, Replicas: state.Replicas, RepairDelay: *repairDelay,
		Rate: *repairRate, Concurrency: *repairConcurrency, Interval: *repairInterval,
		Fetch: others.Read, Suspect: scrubber.Check, Dropped: scrubber.Dropped, Skip: collector.IsGarbage,
	}, log.With("actor", "repair"))
	sup.Start("repair", repairer)

	srv := &http.Server{
		Handler: blocknet.NewServer(blocknet.ServerConfig{
			Store: store, Secret: secret.BlockKey(), DataDir: *data,
			Capacity: *capacity, Reserve: *reserve, Logger: log,
			Cluster: func() blocknet.ClusterInfo {
				return blocknet.ClusterInfo{
					ClusterID: state.ClusterID, BlockSize: state.BlockSize,
					Replication: state.Replicas, Self: state.Name, Members: members.Members(),
				}
			},
			Suspect: scrubber.Check,
			Actors: func() json.RawMessage {
				b, _ := json.Marshal(nodeActors{Scrub: scrubber.Stats(), Repair: repairer.Stats(), Collect: collector.Stats(), Restarts: sup.Restarts(), Meta: keeper.Info()})
				return b
			},
		}),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(apiLn) }()

	if fresh {
		// A new node is ready once it takes part in the metadata cluster
		// (and the first one once the file system exists). A restarted
		// node does not wait: its peers may still be down, and its blocks
		// are wanted meanwhile.
		select {
		case <-keeper.Ready():
		case <-ctx.Done():
			return nil
		case <-time.After(*joinTimeout):
			log.Warn("no metadata leader yet; serving blocks meanwhile", "waited", *joinTimeout)
		}
	}
	addrs := nodeAddrs{Name: state.Name, PID: os.Getpid(), Gossip: members.Self().Gossip, HTTP: apiLn.Addr().String(), NATS: ns.Addr()}
	if err := writeJSONAtomic(filepath.Join(*data, "addr.json"), addrs); err != nil {
		return err
	}
	blocks, bytes := store.Stats()
	log.Info("node ready", "name", state.Name, "gossip", addrs.Gossip, "api", addrs.HTTP, "nats", addrs.NATS,
		"data", *data, "blocks", blocks, "bytes", bytes, "block_size", state.BlockSize, "replicas", state.Replicas, "meta_home", state.MetaHome)

	select {
	case <-ctx.Done():
		log.Info("stopping node", "name", state.Name)
	case err := <-serveErr:
		return fmt.Errorf("block API server: %w", err)
	}
	// Leave first, so peers and clients stop sending here while requests
	// in flight still finish.
	members.Leave(2 * time.Second)
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	srv.Shutdown(sctx)
	return nil
}

// nodeActors is the node's actors' state in /v1/stats, read by status.
type nodeActors struct {
	Scrub    actors.ScrubStats   `json:"scrub"`
	Repair   actors.RepairStats  `json:"repair"`
	Collect  actors.CollectStats `json:"collect"`
	Restarts map[string]int64    `json:"restarts,omitempty"`
	Meta     metaInfo            `json:"meta"`
}

// fetcher gives the scrubber good copies from the other nodes (its
// Replicator leaves this node out); Replicator.Read skips copies that do
// not verify.
type fetcher struct{ r *blocknet.Replicator }

func (f fetcher) Fetch(ctx context.Context, id persist.BlockID) ([]byte, error) {
	return f.r.Read(ctx, id)
}

// adoptClusterSettings decides a fresh node's block size and replication:
// a node that joined takes the mesh's (so nobody has to repeat them), a
// node that starts a mesh takes the flags or the defaults and becomes the
// metadata home.
func adoptClusterSettings(ctx context.Context, log *slog.Logger, members *mesh.Membership, state *nodeState, joined bool, blockSize, replicas int) error {
	if !joined {
		state.BlockSize, state.Replicas, state.MetaHome = blockSize, replicas, true
		if state.BlockSize == 0 {
			state.BlockSize = defaultBlockSize
		}
		if state.Replicas == 0 {
			state.Replicas = defaultReplicas
		}
		if state.BlockSize < 4096 || state.BlockSize > 64<<20 {
			return usagef("--block-size %d: want 4096 to 64 MiB", state.BlockSize)
		}
		if state.Replicas < 1 {
			return usagef("--replicas %d: want at least 1", state.Replicas)
		}
		return nil
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		for _, m := range members.Members() {
			if m.Name == state.Name || m.BlockSize == 0 {
				continue
			}
			if blockSize != 0 && blockSize != m.BlockSize {
				return fmt.Errorf("--block-size %d, but the mesh uses %d (from %s): %w", blockSize, m.BlockSize, m.Name, persist.ErrWrongBlockSize)
			}
			if replicas != 0 && replicas != m.Replicas {
				return usagef("--replicas %d, but the mesh keeps %d copies (from %s)", replicas, m.Replicas, m.Name)
			}
			state.BlockSize, state.Replicas = m.BlockSize, m.Replicas
			log.Info("adopted cluster settings", "from", m.Name, "block_size", m.BlockSize, "replicas", m.Replicas)
			return nil
		}
		if time.Now().After(deadline) {
			return errors.New("joined the mesh, but no member told its block size within 10s")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// lockDataDir takes an exclusive lock on DIR/lock, so two nodes never share
// a data dir; the lock dies with the process, even on SIGKILL.
func lockDataDir(dir string) (func(), error) {
	path := filepath.Join(dir, "lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock data dir: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		holder, _ := os.ReadFile(path)
		f.Close()
		who := ""
		if len(holder) > 0 {
			who = fmt.Sprintf(" (pid %s)", string(holder))
		}
		return nil, fmt.Errorf("data dir %s is in use by another meshfs node%s: %w", dir, who, persist.ErrInUse)
	}
	f.Truncate(0)
	f.WriteAt([]byte(strconv.Itoa(os.Getpid())), 0)
	return func() { f.Close() }, nil
}

func loadNodeState(dir string) (nodeState, bool, error) {
	var s nodeState
	b, err := os.ReadFile(filepath.Join(dir, "node.json"))
	if errors.Is(err, os.ErrNotExist) {
		return s, true, nil
	}
	if err != nil {
		return s, false, fmt.Errorf("read node state: %w", err)
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return s, false, fmt.Errorf("read node state %s: %w", filepath.Join(dir, "node.json"), err)
	}
	return s, false, nil
}

func saveNodeState(dir string, s nodeState) error {
	return writeJSONAtomic(filepath.Join(dir, "node.json"), s)
}

// writeJSONAtomic writes v to path through a fsync'd temporary file and a
// rename, so a reader or a crash never sees half a file.
func writeJSONAtomic(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("encode %s: %w", path, err)
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	_, err = f.Write(append(b, '\n'))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

func defaultNodeName() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "node"
	}
	b := make([]byte, 3)
	rand.Read(b)
	return host + "-" + hex.EncodeToString(b)
}

// withPreferred calls bind with the address bound last time when the flag
// asks for any port (port 0) on the same host, and with the flag's address
// when there is none or it is taken now.
func withPreferred(flagAddr, last string, bind func(addr string) error) error {
	fhost, fport, ferr := splitHostPort(flagAddr)
	lhost, _, lerr := splitHostPort(last)
	if ferr == nil && lerr == nil && fport == 0 && fhost == lhost {
		if err := bind(last); err == nil {
			return nil
		}
	}
	return bind(flagAddr)
}

func splitHostPort(addr string) (string, int, error) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(p)
	if err != nil {
		return "", 0, fmt.Errorf("bad port %q", p)
	}
	return host, port, nil
}
