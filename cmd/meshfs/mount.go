package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/meshfs/meshfs/fuse"
	"github.com/meshfs/meshfs/mesh/blocknet"
	"github.com/meshfs/meshfs/mesh/meta"
	"github.com/meshfs/meshfs/mesh/natsd"
	"github.com/nats-io/nats.go"
)

func runMount(args []string) error {
	fs := newFlags("mount", "meshfs mount MOUNTPOINT --join ADDR [flags]")
	var joins listFlag
	fs.Var(&joins, "join", "block API address (host:port, a node's --api) of any node; repeatable")
	secretFile := fs.String("secret-file", "", "file holding the cluster secret (or set MESHFS_SECRET)")
	writeBuffer := fs.Int64("write-buffer", 256<<20, "bytes of written data a mount buffers before writes wait for uploads")
	joinTimeout := fs.Duration("join-timeout", 30*time.Second, "how long to keep trying the --join addresses")
	cacheTimeout := fs.Duration("cache-timeout", 10*time.Second, "how long the kernel may cache names and attributes; other mounts' changes are pushed to it at once through the change feed, so this only bounds staleness while the feed is cut off (0 disables the cache)")
	invalidate := fs.Bool("invalidate", true, "follow the metadata change feed and invalidate the kernel's caches of what other mounts change; false leaves freshness to --cache-timeout alone, as most network file systems do")
	allowOther := fs.Bool("allow-other", false, "let other users use the mount, with the kernel checking permission bits as on a local file system (as non-root, needs user_allow_other in /etc/fuse.conf)")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	debug := fs.Bool("debug", false, "log every FUSE request")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usagef("want exactly one MOUNTPOINT, got %d arguments", len(pos))
	}
	if len(joins) == 0 {
		return usagef("--join ADDR is required: the block API address of any node")
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
	m, err := mountMesh(ctx, log, mountConfig{
		Mountpoint: pos[0], Seeds: joins, Secret: secret,
		WriteBuffer: *writeBuffer, JoinTimeout: *joinTimeout, Debug: *debug,
		CacheTimeout: *cacheTimeout, NoFeed: !*invalidate, AllowOther: *allowOther,
	})
	if err != nil {
		return err
	}
	fmt.Printf("meshfs mounted at %s (cluster %s, %d nodes, %d copies of each block); Ctrl-C unmounts\n",
		pos[0], m.view.Info().ClusterID, len(m.view.Members()), m.view.Info().Replication)
	unmounted := make(chan struct{})
	go func() { m.fs.Wait(); close(unmounted) }()
	select {
	case <-ctx.Done():
	case <-unmounted:
		fmt.Printf("%s was unmounted; exiting\n", pos[0])
		m.gone = true
	}
	return m.Close()
}

type mountConfig struct {
	Mountpoint  string
	Seeds       []string // block API addresses
	Secret      clusterSecret
	WriteBuffer int64
	JoinTimeout time.Duration
	Debug       bool
	// CacheTimeout is the kernel's cache timeout for names and attributes;
	// 0 disables the cache.
	CacheTimeout time.Duration
	// NoFeed leaves the change feed alone (no invalidations).
	NoFeed bool
	// AllowOther opens the mount to other users.
	AllowOther bool
}

// meshMount is a mounted meshfs and everything it holds open.
type meshMount struct {
	gone  bool // unmounted from outside (umount); nothing left to unmount
	fs    *fuse.FS
	view  *blocknet.ClusterView
	store *meta.Store
	nc    *nats.Conn
}

func mountMesh(ctx context.Context, log *slog.Logger, cfg mountConfig) (*meshMount, error) {
	if st, err := os.Stat(cfg.Mountpoint); err != nil {
		return nil, fmt.Errorf("mount point: %w", err)
	} else if !st.IsDir() {
		return nil, fmt.Errorf("mount point %s is not a directory", cfg.Mountpoint)
	}
	client := blocknet.NewClient(cfg.Secret.BlockKey(), 60*time.Second)
	jctx, cancel := context.WithTimeout(ctx, cfg.JoinTimeout)
	defer cancel()
	view, err := blocknet.NewClusterView(jctx, client, cfg.Seeds, time.Second)
	if err != nil {
		return nil, err
	}
	m := &meshMount{view: view}
	ok := false
	defer func() {
		if !ok {
			m.Close()
		}
	}()
	info := view.Info()
	urls, err := waitMetaURLs(jctx, view)
	if err != nil {
		return nil, err
	}
	m.nc, err = natsd.Connect(jctx, urls, cfg.Secret.NATSToken(), "meshfs mount "+cfg.Mountpoint, log)
	if err != nil {
		return nil, err
	}
	m.store, err = openMeta(jctx, m.nc, info.BlockSize)
	if err != nil {
		return nil, err
	}
	var feed fuse.ChangeFeed = m.store
	if cfg.NoFeed {
		feed = nil
	}
	timeout := cfg.CacheTimeout
	if timeout == 0 {
		timeout = -1 // fuse.Options: negative disables, zero is the default
	}
	m.fs, err = fuse.Mount(cfg.Mountpoint, fuse.Options{
		EntryTimeout: timeout, AttrTimeout: timeout,
		Meta:        m.store,
		Blocks:      blocknet.NewReplicator(client, view.Members, info.Replication),
		BlockSize:   info.BlockSize,
		StatFS:      meshStatFS(client, view),
		WriteBuffer: cfg.WriteBuffer,
		Feed:        feed,
		AllowOther:  cfg.AllowOther,
		Debug:       cfg.Debug,
		Logger:      log,
	})
	if err != nil {
		return nil, err
	}
	ok = true
	return m, nil
}

// waitMetaURLs waits for the view to show nodes serving metadata.
func waitMetaURLs(ctx context.Context, view *blocknet.ClusterView) ([]string, error) {
	for {
		urls, err := metaURLs(view.Members())
		if err == nil {
			return urls, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("find the metadata servers: %w", err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// openMeta opens the file system's metadata, which must exist: the node
// that started the mesh creates it. It waits while the metadata cluster
// elects its leaders, or the first node has not created it yet.
func openMeta(ctx context.Context, nc *nats.Conn, blockSize int) (*meta.Store, error) {
	for {
		octx, cancel := context.WithTimeout(ctx, 5*time.Second)
		s, err := meta.Open(octx, nc, meta.Options{Bucket: metaBucket, BlockSize: blockSize, MustExist: true})
		cancel()
		if err == nil {
			return s, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("open metadata: %w", err)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// Close unmounts and releases everything; safe on a half-built mount.
func (m *meshMount) Close() error {
	var err error
	if m.fs != nil && !m.gone {
		// A busy mount (a shell cd'd into it, a file open) refuses to
		// unmount; tearing down under it would leave a dead mount and lose
		// unflushed data, so keep serving and try again for a while.
		for try := 0; ; try++ {
			if err = m.fs.Unmount(); err == nil || try == 30 {
				break
			}
			if try == 0 {
				fmt.Fprintf(os.Stderr, "meshfs: cannot unmount yet (%v); close the files open under it\n", err)
			}
			time.Sleep(time.Second)
		}
		if err != nil {
			return fmt.Errorf("unmount: %w (still mounted; the mount is being served until this process ends)", err)
		}
	}
	if m.store != nil {
		m.store.Close()
	}
	if m.nc != nil {
		m.nc.Close()
	}
	if m.view != nil {
		m.view.Close()
	}
	return err
}

// meshStatFS reports the mesh's usable space: the sum over live nodes
// divided by the replication factor, since every byte is stored R times.
// It caches the answer for a few seconds; df in a loop must not flood nodes.
func meshStatFS(client *blocknet.Client, view *blocknet.ClusterView) func(context.Context) (uint64, uint64, error) {
	var mu sync.Mutex
	var at time.Time
	var total, free uint64
	return func(ctx context.Context) (uint64, uint64, error) {
		mu.Lock()
		defer mu.Unlock()
		if time.Since(at) < 3*time.Second {
			return total, free, nil
		}
		var t, f uint64
		for _, m := range view.Members() {
			if !m.Live() {
				continue
			}
			sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			st, err := client.Stats(sctx, m.HTTP)
			cancel()
			if err != nil {
				continue
			}
			t += st.DiskTotal
			f += st.DiskFree
		}
		r := uint64(max(view.Info().Replication, 1))
		total, free, at = t/r, f/r, time.Now()
		return total, free, nil
	}
}
