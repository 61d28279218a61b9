package meta

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// hdrOrigin names the Store that wrote a message, so that a mount can tell
// its own changes (already in its kernel's caches) from other mounts'.
const hdrOrigin = "Meshfs-Origin"

// ChangeKind says what a Change is about.
type ChangeKind int

const (
	// ChangeInode: an inode's attributes changed, or it was removed.
	ChangeInode ChangeKind = iota + 1
	// ChangeEntry: a name in a directory was added, replaced or removed.
	ChangeEntry
	// ChangeData: part of a file's block map changed (the same commit also
	// changes the inode).
	ChangeData
	// ChangeReset: the feed (re)started: at its subscription, and after
	// the connection to the metadata servers was lost and came back.
	// Changes may have been missed, and what was cached should be
	// dropped rather than trusted.
	ChangeReset
)

// Change is one event of the change feed. It carries the new state, so a
// cache can be updated without asking the store again.
type Change struct {
	Kind    ChangeKind
	Ino     Ino    // ChangeInode, ChangeData: the inode
	Parent  Ino    // ChangeEntry: the directory
	Name    string // ChangeEntry: the name
	Deleted bool   // the inode or the name is gone
	// Attr is an inode's new attributes (ChangeInode, unless Deleted).
	Attr *Attr
	// Entry is a name's new entry (ChangeEntry, unless Deleted).
	Entry *DirEntry
	// Own marks changes made through this Store.
	Own bool
	Rev uint64 // the change's revision (stream sequence)
}

// Watch calls fn, from one goroutine, for every change to the file system
// made after it has subscribed, in the order they were committed, until ctx
// ends. Its first call is a ChangeReset, made once it has subscribed: what a
// cache held before may be stale, and from then on no change is missed.
// Changes of one atomic operation arrive one by one, inodes first. A change
// that cannot be decoded is skipped. Watch resumes after a lost connection
// where it left off, and reports the interruption as a ChangeReset first.
func (s *Store) Watch(ctx context.Context, fn func(Change)) error {
	js, err := jetstream.New(s.nc)
	if err != nil {
		return fmt.Errorf("watch metadata: %w", err)
	}
	var cons jetstream.Consumer
	for backoff := 50 * time.Millisecond; ; backoff = min(2*backoff, 2*time.Second) {
		cctx, cancel := context.WithTimeout(ctx, s.attemptTimeout)
		cons, err = js.OrderedConsumer(cctx, s.stream, jetstream.OrderedConsumerConfig{
			FilterSubjects: []string{s.subjPrefix + ">"},
			DeliverPolicy:  jetstream.DeliverNewPolicy,
		})
		cancel()
		if err == nil {
			break
		}
		if err := sleep(ctx, jitter(backoff)); err != nil {
			return err
		}
	}
	msgs, err := cons.Messages()
	if err != nil {
		return fmt.Errorf("watch metadata: %w", err)
	}
	defer msgs.Stop()
	// Subscribed: every change from now on will be delivered. Whatever a
	// cache holds from before may be stale.
	fn(Change{Kind: ChangeReset})

	in := make(chan jetstream.Msg, 256)
	go func() {
		defer close(in)
		for {
			m, err := msgs.Next()
			if err != nil {
				// Stopped (ctx ended); an ordered consumer recreates
				// itself after other errors and does not return them.
				return
			}
			select {
			case in <- m:
			case <-ctx.Done():
				return
			}
		}
	}()
	reconnects := s.nc.Stats().Reconnects
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		case m, ok := <-in:
			if !ok {
				return nil
			}
			if r := s.nc.Stats().Reconnects; r != reconnects {
				reconnects = r
				fn(Change{Kind: ChangeReset})
			}
			if c, ok := s.decodeChange(m); ok {
				fn(c)
			}
			continue
		}
		if r := s.nc.Stats().Reconnects; r != reconnects {
			reconnects = r
			fn(Change{Kind: ChangeReset})
		}
	}
}

// decodeChange turns a stream message into a Change.
func (s *Store) decodeChange(m jetstream.Msg) (Change, bool) {
	key, ok := strings.CutPrefix(m.Subject(), s.subjPrefix)
	if !ok {
		return Change{}, false
	}
	h := m.Headers()
	c := Change{Own: h.Get(hdrOrigin) == s.origin}
	if md, err := m.Metadata(); err == nil {
		c.Rev = md.Sequence.Stream
	}
	if o := h.Get(hdrKVOperation); o == kvOpDelete || o == kvOpPurge {
		c.Deleted = true
	}
	parts := strings.SplitN(key, ".", 3)
	switch {
	case parts[0] == "i" && len(parts) == 2:
		ino, err := strconv.ParseUint(parts[1], 10, 64)
		if err != nil {
			return Change{}, false
		}
		c.Kind, c.Ino = ChangeInode, Ino(ino)
		if !c.Deleted {
			var r inodeRec
			if json.Unmarshal(m.Data(), &r) != nil {
				return Change{}, false
			}
			a := r.attr()
			c.Attr = &a
		}
	case parts[0] == "d" && len(parts) == 3:
		parent, err := strconv.ParseUint(parts[1], 10, 64)
		if err != nil {
			return Change{}, false
		}
		name, err := direntName(direntPrefix(Ino(parent)), key)
		if err != nil {
			return Change{}, false
		}
		c.Kind, c.Parent, c.Name = ChangeEntry, Ino(parent), name
		if !c.Deleted {
			var d direntRec
			if json.Unmarshal(m.Data(), &d) != nil {
				return Change{}, false
			}
			c.Entry = &DirEntry{Name: name, Ino: d.Ino, Mode: d.Mode}
		}
	case parts[0] == "b" && len(parts) == 3:
		ino, err := strconv.ParseUint(parts[1], 10, 64)
		if err != nil {
			return Change{}, false
		}
		c.Kind, c.Ino = ChangeData, Ino(ino)
	default:
		return Change{}, false
	}
	return c, true
}
