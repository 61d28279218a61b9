package main

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/meshfs/meshfs/mesh"
	"github.com/meshfs/meshfs/mesh/meta"
	"github.com/meshfs/meshfs/mesh/natsd"
	"github.com/meshfs/meshfs/persist"
	"github.com/nats-io/nats.go"
)

// metaRefs gives the metadata's referenced blocks to a node's collector and
// to status. It connects to the metadata servers (found among members) when
// first asked, and again after a failure.
type metaRefs struct {
	members   func() []mesh.Member
	token     string
	client    string // the connection's name, for the servers' logs
	blockSize int

	mu    sync.Mutex
	nc    *nats.Conn
	store *meta.Store
}

func (r *metaRefs) ReferencedBlocks(ctx context.Context, fn func(id persist.BlockID) error) error {
	s, err := r.open(ctx)
	if err != nil {
		return err
	}
	if err := s.ReferencedBlocks(ctx, fn); err != nil {
		r.Close() // reconnect next time, perhaps to a new home
		return err
	}
	return nil
}

func (r *metaRefs) open(ctx context.Context) (*meta.Store, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.store != nil {
		return r.store, nil
	}
	urls, err := metaURLs(r.members())
	if err != nil {
		return nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	nc, err := natsd.Connect(cctx, urls, r.token, r.client, nil)
	if err != nil {
		return nil, err
	}
	// MustExist: marking against a bucket created here, empty, would
	// condemn every block (and show every block lost).
	s, err := meta.Open(cctx, nc, meta.Options{Bucket: metaBucket, BlockSize: r.blockSize, MustExist: true})
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("open metadata: %w", err)
	}
	r.nc, r.store = nc, s
	return s, nil
}

// Close drops the metadata connection.
func (r *metaRefs) Close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.store != nil {
		r.store.Close()
		r.nc.Close()
		r.store, r.nc = nil, nil
	}
}
