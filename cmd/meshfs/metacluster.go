package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/meshfs/meshfs/mesh"
	"github.com/meshfs/meshfs/mesh/meta"
	"github.com/meshfs/meshfs/mesh/natsd"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// The embedded NATS servers of all nodes form one JetStream cluster that
// holds the metadata. Nobody configures it:
//
//   - every node advertises its server's route URL in gossip and routes to
//     the live members' servers (metaCluster.syncRoutes);
//   - a clustered JetStream server alone never elects a leader (its meta
//     group counts at least two), so the node that starts a mesh also runs
//     a witness: a second, untagged server in the same process that only
//     votes. Data servers carry the tag "data", and the bucket is placed by
//     that tag, so the witness never holds metadata;
//   - once three data servers are in the group, the witness is shut down
//     and removed from the group for good, and the bucket is raised to
//     three replicas. With one or two nodes the bucket keeps one replica
//     (two replicas would need both nodes up to write).
//
// See mesh/natsd/CLUSTERING.md for the server behaviour this relies on.
const (
	metaClusterName = "meshfs"
	metaBucket      = "meshfs_meta"
	metaStream      = "KV_" + metaBucket
	witnessSuffix   = "-witness"
	metaReplicas    = 3
)

// dataTags are the placement tags of a node's own NATS server.
var dataTags = []string{"data"}

// metaInfo is the metadata cluster as one node sees it, in /v1/stats.
type metaInfo struct {
	Replicas   int    `json:"replicas"`              // the bucket's replica count
	Current    int    `json:"current"`               // replicas up to date (the leader included)
	Leader     string `json:"leader,omitempty"`      // the bucket's leader
	MetaLeader string `json:"meta_leader,omitempty"` // the meta group's leader
	Servers    int    `json:"servers"`               // data servers in the meta group
	Witness    bool   `json:"witness,omitempty"`     // a witness still votes
	Error      string `json:"error,omitempty"`
}

// metaCluster is a node's part in keeping the metadata cluster: routes,
// the witness, the bucket's creation and replica count.
type metaCluster struct {
	log        *slog.Logger
	self       string
	members    *mesh.Membership
	ns         *natsd.Server
	secret     string
	blockSize  int
	witnessDir string
	// createFS: this node starts the mesh and has yet to create the file
	// system; created is called once it has.
	createFS bool
	created  func() error

	mu      sync.Mutex
	witness *natsd.Server // nil once retired
	info    metaInfo
	routes  []string
	nc      *nats.Conn
	ready   chan struct{} // closed when a meta leader was seen and the file system exists
	readyOK bool
}

// startWitness starts the witness server beside ns, storing its state in dir.
func startWitness(name, dir, host, secret string, ns *natsd.Server, log *slog.Logger) (*natsd.Server, error) {
	w, err := natsd.Start(natsd.Config{
		Name: name + witnessSuffix, Dir: dir, Host: host, Secret: secret,
		ClusterName: metaClusterName, Routes: []string{ns.ClusterURL()}, Log: log,
	})
	if err != nil {
		return nil, fmt.Errorf("start metadata witness: %w", err)
	}
	return w, nil
}

// Run keeps the cluster until ctx ends. It leaves the witness running (a
// restarted Run takes it over); Close stops it.
func (c *metaCluster) Run(ctx context.Context) error {
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	for {
		c.tick(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Close drops the connection and stops the witness.
func (c *metaCluster) Close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.nc != nil {
		c.nc.Close()
		c.nc = nil
	}
	if c.witness != nil {
		c.witness.Shutdown()
		c.witness = nil
	}
}

// Ready is closed once the node has seen a meta leader and the file system
// exists.
func (c *metaCluster) Ready() <-chan struct{} { return c.ready }

// Info returns the latest view of the metadata cluster.
func (c *metaCluster) Info() metaInfo {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.info
}

func (c *metaCluster) tick(ctx context.Context) {
	c.syncRoutes()
	peers := c.ns.MetaPeers()
	leader := ""
	data := 0
	for _, p := range peers {
		if p.Leader {
			leader = p.Name
		}
		if !p.Offline && !strings.HasSuffix(p.Name, witnessSuffix) {
			data++
		}
	}
	if leader == "" {
		c.setInfo(func(i *metaInfo) {
			i.MetaLeader, i.Servers, i.Error = "", data, "no meta leader (fewer than a majority of metadata servers reachable)"
		})
		return
	}
	if c.createFS {
		if err := c.createFileSystem(ctx); err != nil {
			c.log.Warn("create the file system's metadata; will retry", "err", err)
			return
		}
		c.createFS = false
	}
	if !c.readyOK {
		c.readyOK = true
		close(c.ready)
	}
	c.retireWitness(ctx, data)
	if c.ns.IsMetaLeader() {
		c.lead(ctx, peers, data)
	}
	c.refreshInfo(ctx, leader, data)
}

// syncRoutes routes to every live member's server.
func (c *metaCluster) syncRoutes() {
	var routes []string
	for _, m := range c.members.Members() {
		if m.Name != c.self && m.Live() && m.Route != "" {
			routes = append(routes, m.Route)
		}
	}
	slices.Sort(routes)
	if slices.Equal(routes, c.routes) {
		return
	}
	if err := c.ns.SetRoutes(routes); err != nil {
		c.log.Warn("set metadata routes", "routes", routes, "err", err)
		return
	}
	c.log.Debug("metadata routes", "routes", routes)
	c.routes = routes
}

func (c *metaCluster) createFileSystem(ctx context.Context) error {
	nc, err := c.conn(ctx)
	if err != nil {
		return err
	}
	octx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	s, err := meta.Open(octx, nc, meta.Options{Bucket: metaBucket, BlockSize: c.blockSize, Replicas: 1, PlacementTags: dataTags})
	if err != nil {
		return err
	}
	s.Close()
	c.log.Info("created the file system's metadata", "bucket", metaBucket)
	return c.created()
}

// retireWitness shuts the witness down and removes it from the meta group
// once three data servers are online in it: without the witness the group
// then still has a majority when any one node is lost.
func (c *metaCluster) retireWitness(ctx context.Context, data int) {
	c.mu.Lock()
	w := c.witness
	c.mu.Unlock()
	if w == nil || data < metaReplicas {
		return
	}
	name := w.Name()
	w.Shutdown()
	c.mu.Lock()
	c.witness = nil
	c.mu.Unlock()
	// Once the dir is gone a restart starts no witness; a witness left in
	// the group by a crash before the removal is removed by the leader.
	if err := os.RemoveAll(c.witnessDir); err != nil {
		c.log.Warn("remove metadata witness dir", "dir", c.witnessDir, "err", err)
	}
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := c.ns.RemovePeer(rctx, name); err != nil {
		c.log.Warn("remove metadata witness from the meta group; the leader will retry", "err", err)
		return
	}
	c.log.Info("metadata witness retired", "data_servers", data)
}

// lead does what only the meta leader should: remove witnesses that are
// gone, and raise the bucket's replica count when there are servers for it.
func (c *metaCluster) lead(ctx context.Context, peers []natsd.MetaPeer, data int) {
	c.mu.Lock()
	own := c.witness
	c.mu.Unlock()
	for _, p := range peers {
		if p.Offline && strings.HasSuffix(p.Name, witnessSuffix) && (own == nil || own.Name() != p.Name) && data >= metaReplicas {
			rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			err := c.ns.RemovePeer(rctx, p.Name)
			cancel()
			c.log.Info("removed a departed metadata witness from the meta group", "witness", p.Name, "err", err)
		}
	}
	if data < metaReplicas {
		return
	}
	js, err := c.js(ctx)
	if err != nil {
		return
	}
	sctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	st, err := js.Stream(sctx, metaStream)
	if err != nil {
		return
	}
	cfg := st.CachedInfo().Config
	if cfg.Replicas >= metaReplicas {
		return
	}
	from := cfg.Replicas
	cfg.Replicas = metaReplicas
	if _, err := js.UpdateStream(sctx, cfg); err != nil {
		c.log.Warn("raise metadata replicas", "from", from, "to", metaReplicas, "err", err)
		return
	}
	c.log.Info("raised metadata replicas", "from", from, "to", metaReplicas)
}

func (c *metaCluster) refreshInfo(ctx context.Context, metaLeader string, data int) {
	info := metaInfo{MetaLeader: metaLeader, Servers: data}
	c.mu.Lock()
	info.Witness = c.witness != nil
	c.mu.Unlock()
	js, err := c.js(ctx)
	if err == nil {
		sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		var st jetstream.Stream
		st, err = js.Stream(sctx, metaStream)
		cancel()
		if err == nil {
			si := st.CachedInfo()
			info.Replicas = si.Config.Replicas
			if ci := si.Cluster; ci != nil {
				info.Leader = ci.Leader
				if ci.Leader != "" {
					info.Current = 1
				}
				for _, r := range ci.Replicas {
					if r.Current && !r.Offline {
						info.Current++
					}
				}
			}
		}
	}
	if err != nil {
		info.Error = err.Error()
	}
	c.setInfo(func(i *metaInfo) { *i = info })
}

func (c *metaCluster) setInfo(f func(*metaInfo)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	f(&c.info)
}

// conn is the node's own client connection to its server.
func (c *metaCluster) conn(ctx context.Context) (*nats.Conn, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.nc != nil {
		return c.nc, nil
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	nc, err := natsd.Connect(cctx, []string{c.ns.ClientURL()}, c.secret, "meshfs node "+c.self+" metadata keeper", nil)
	if err != nil {
		return nil, err
	}
	c.nc = nc
	return nc, nil
}

func (c *metaCluster) js(ctx context.Context) (jetstream.JetStream, error) {
	nc, err := c.conn(ctx)
	if err != nil {
		return nil, err
	}
	return jetstream.New(nc)
}

// metaURLs are the NATS client URLs of the live members, for mounts and
// collectors: the client picks one and fails over to the others. A mesh
// where two nodes say they started it is two meshes joined by mistake, and
// is refused rather than guessed at.
func metaURLs(members []mesh.Member) ([]string, error) {
	var homes []mesh.Member
	var urls []string
	for _, m := range members {
		if m.MetaHome {
			homes = append(homes, m)
		}
		if m.Live() && m.NATS != "" {
			urls = append(urls, "nats://"+m.NATS)
		}
	}
	switch {
	case len(homes) > 1:
		return nil, fmt.Errorf("nodes %s and %s both started a mesh; start every node but the first with --join", homes[0].Name, homes[1].Name)
	case len(urls) == 0:
		return nil, fmt.Errorf("no live node of the mesh (%d members) serves metadata", len(members))
	}
	return urls, nil
}
