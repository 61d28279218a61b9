package blocknet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/meshfs/meshfs/mesh"
)

const (
	defaultViewInterval = 5 * time.Second
	firstBackoff        = 100 * time.Millisecond
	maxBackoff          = 2 * time.Second
)

// ClusterView keeps a client's view of the mesh fresh by asking any known
// node for /v1/cluster every interval. It is how a mount, which is not a
// gossip member, learns the members and the cluster settings.
type ClusterView struct {
	c        *Client
	interval time.Duration

	mu   sync.RWMutex
	info ClusterInfo

	// addrs is every block API address ever learned (seeds included), so
	// the view survives the loss of whichever node it last asked. After
	// NewClusterView returns, only the run goroutine touches it.
	addrs map[string]struct{}

	cancel    context.CancelFunc
	done      chan struct{} // closed when run returns
	closeOnce sync.Once
}

// NewClusterView asks the seeds (block API addresses) until one answers,
// retrying with backoff until ctx ends, then refreshes in a goroutine every
// interval until Close. Later refreshes try every member it has learned.
// An interval ≤ 0 means 5 s.
func NewClusterView(ctx context.Context, c *Client, seeds []string, interval time.Duration) (*ClusterView, error) {
	if len(seeds) == 0 {
		return nil, errors.New("cluster view: no seed addresses given")
	}
	if interval <= 0 {
		interval = defaultViewInterval
	}
	v := &ClusterView{c: c, interval: interval, addrs: make(map[string]struct{})}
	for _, s := range seeds {
		v.addrs[s] = struct{}{}
	}

	backoff := firstBackoff
	var lastErr error
	for {
		info, err := v.fetch(ctx, slices.Clone(seeds))
		if err == nil {
			v.set(info)
			break
		}
		// Keep the last real failure: "context canceled" says nothing about
		// why the seeds did not answer.
		if lastErr == nil || ctx.Err() == nil {
			lastErr = err
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("no meshfs node answered at %v: %w", seeds, lastErr)
		case <-t.C:
		}
		backoff = min(2*backoff, maxBackoff)
	}

	// The refresh goroutine outlives ctx (which only bounds the first
	// fetch); Close is what stops it.
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	v.cancel = cancel
	v.done = make(chan struct{})
	go v.run(runCtx)
	return v, nil
}

// fetch asks addrs in the given order until one answers.
func (v *ClusterView) fetch(ctx context.Context, addrs []string) (ClusterInfo, error) {
	rand.Shuffle(len(addrs), func(i, j int) { addrs[i], addrs[j] = addrs[j], addrs[i] })
	var errs []error
	for _, a := range addrs {
		info, err := v.c.Cluster(ctx, a)
		if err == nil {
			return info, nil
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	return ClusterInfo{}, errors.Join(errs...)
}

// set publishes info and learns its members' addresses.
func (v *ClusterView) set(info ClusterInfo) {
	for _, m := range info.Members {
		if m.HTTP != "" {
			v.addrs[m.HTTP] = struct{}{}
		}
	}
	v.mu.Lock()
	v.info = info
	v.mu.Unlock()
}

func (v *ClusterView) run(ctx context.Context) {
	defer close(v.done)
	t := time.NewTicker(v.interval)
	defer t.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		info, err := v.fetch(ctx, slices.Collect(maps.Keys(v.addrs)))
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			// Once per failure streak: a mesh that is down for an hour
			// should not log every few seconds.
			if !failing {
				slog.Warn("cluster view: no known node answered; keeping the last known members",
					"addrs", len(v.addrs), "err", err)
				failing = true
			}
			continue
		}
		if failing {
			slog.Info("cluster view: a node answered again", "self", info.Self)
			failing = false
		}
		v.set(info)
	}
}

// Info returns the latest ClusterInfo.
func (v *ClusterView) Info() ClusterInfo {
	v.mu.RLock()
	defer v.mu.RUnlock()
	info := v.info
	info.Members = slices.Clone(v.info.Members)
	return info
}

// Members returns the latest members (for NewReplicator).
func (v *ClusterView) Members() []mesh.Member {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return slices.Clone(v.info.Members)
}

// Close stops the refresh goroutine and waits for it.
func (v *ClusterView) Close() {
	v.closeOnce.Do(func() {
		v.cancel()
		<-v.done
	})
}
