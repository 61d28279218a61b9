package fuse

import (
	"context"
	"sync"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"

	"github.com/meshfs/meshfs/mesh/meta"
)

// ChangeFeed delivers the file system's changes as they are committed, by
// any mount; *meta.Store implements it. Watch calls fn from one goroutine
// until ctx ends; its first event is a ChangeReset, once it is subscribed:
// no change after that one is missed.
type ChangeFeed interface {
	Watch(ctx context.Context, fn func(meta.Change)) error
}

// kernelInodes maps inode numbers to the tree nodes the kernel knows, so
// that a change made by another mount can be turned into an invalidation of
// exactly what the kernel caches. go-fuse may build a second node for an
// inode it already has and then throw the new one away; so a node is
// recorded when it is first made only if none is known, and recorded for
// sure whenever the kernel calls it (the kernel only calls the node it
// kept). A node the kernel forgets is dropped.
type kernelInodes struct {
	mu sync.Mutex
	m  map[meta.Ino]*fs.Inode
}

func (k *kernelInodes) seen(ino meta.Ino, in *fs.Inode) {
	k.mu.Lock()
	if k.m[ino] != in {
		k.m[ino] = in
	}
	k.mu.Unlock()
}

func (k *kernelInodes) made(ino meta.Ino, in *fs.Inode) {
	k.mu.Lock()
	if _, ok := k.m[ino]; !ok {
		k.m[ino] = in
	}
	k.mu.Unlock()
}

func (k *kernelInodes) forgot(ino meta.Ino, in *fs.Inode) {
	k.mu.Lock()
	if k.m[ino] == in {
		delete(k.m, ino)
	}
	k.mu.Unlock()
}

func (k *kernelInodes) get(ino meta.Ino) *fs.Inode {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.m[ino]
}

func (k *kernelInodes) all() []*fs.Inode {
	k.mu.Lock()
	defer k.mu.Unlock()
	out := make([]*fs.Inode, 0, len(k.m))
	for _, in := range k.m {
		out = append(out, in)
	}
	return out
}

var _ = (fs.NodeOnForgetter)((*node)(nil))

// OnForget is called when the kernel has forgotten the node.
func (n *node) OnForget() { n.m.kernel.forgot(n.ino(), n.EmbeddedInode()) }

// follow applies the change feed to the kernel's caches until the mount
// ends, restarting the feed if it fails. It closes ready at the feed's first
// event, which is a reset (see ChangeFeed).
func (m *FS) follow(feed ChangeFeed, ready chan struct{}) {
	defer m.bg.Done()
	started := false
	apply := func(c meta.Change) {
		if !started && c.Kind == meta.ChangeReset {
			started = true
			close(ready)
		}
		m.applyChange(c)
	}
	for m.ctx.Err() == nil {
		err := feed.Watch(m.ctx, apply)
		if m.ctx.Err() != nil {
			return
		}
		m.log.Warn("change feed ended; dropping cached names and attributes and starting it again", "err", err)
		m.applyChange(meta.Change{Kind: meta.ChangeReset})
		select {
		case <-m.ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

// applyChange invalidates what the kernel caches about a change another
// mount made. This mount's own changes are in the kernel's caches already,
// through the replies to the requests that made them.
func (m *FS) applyChange(c meta.Change) {
	m.changes.Add(1)
	switch {
	case c.Kind == meta.ChangeReset:
		m.dropKernelCaches()
	case c.Own:
	case c.Kind == meta.ChangeInode || c.Kind == meta.ChangeData:
		if in := m.kernel.get(c.Ino); in != nil {
			// Offset 0, length 0: the attributes and every cached page.
			in.NotifyContent(0, 0)
		}
	case c.Kind == meta.ChangeEntry:
		if in := m.kernel.get(c.Parent); in != nil {
			in.NotifyEntry(c.Name)
		}
	}
}

// dropKernelCaches makes the kernel forget every cached name and attribute:
// after changes may have been missed, nothing cached can be trusted.
func (m *FS) dropKernelCaches() {
	for _, in := range m.kernel.all() {
		in.NotifyContent(0, 0)
		for name := range in.Children() {
			in.NotifyEntry(name)
		}
	}
}
