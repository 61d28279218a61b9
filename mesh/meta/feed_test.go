package meta

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// recorder collects a store's change feed.
type recorder struct {
	mu      sync.Mutex
	changes []Change // all but resets
	resets  int
}

func watch(t *testing.T, s *Store) *recorder {
	t.Helper()
	r := &recorder{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.Watch(ctx, func(c Change) {
			r.mu.Lock()
			if c.Kind == ChangeReset {
				r.resets++
			} else {
				r.changes = append(r.changes, c)
			}
			r.mu.Unlock()
		})
	}()
	t.Cleanup(func() { cancel(); <-done })
	// The first event says the watcher is subscribed.
	deadline := time.Now().Add(10 * time.Second)
	for {
		r.mu.Lock()
		n := r.resets
		r.mu.Unlock()
		if n > 0 {
			return r
		}
		if time.Now().After(deadline) {
			t.Fatal("no reset from Watch within 10 s: it did not subscribe")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// describe renders changes as one line each, e.g. "entry 1/a -> 5 own".
func describe(cs []Change) string {
	var b strings.Builder
	for _, c := range cs {
		switch c.Kind {
		case ChangeInode:
			if c.Deleted {
				fmt.Fprintf(&b, "inode %d gone", c.Ino)
			} else {
				fmt.Fprintf(&b, "inode %d mode %o size %d nlink %d", c.Ino, c.Attr.Mode, c.Attr.Size, c.Attr.Nlink)
			}
		case ChangeEntry:
			if c.Deleted {
				fmt.Fprintf(&b, "entry %d/%s gone", c.Parent, c.Name)
			} else {
				fmt.Fprintf(&b, "entry %d/%s -> %d", c.Parent, c.Name, c.Entry.Ino)
			}
		case ChangeData:
			fmt.Fprintf(&b, "data %d", c.Ino)
		case ChangeReset:
			b.WriteString("reset")
		}
		if c.Own {
			b.WriteString(" own")
		}
		b.WriteByte('\n')
	}
	return b.String()
}

// waitFor waits until the recorder holds a change whose description
// contains every one of want, in order.
func (r *recorder) waitFor(t *testing.T, want ...string) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		r.mu.Lock()
		got := describe(r.changes)
		r.mu.Unlock()
		rest, ok := got, true
		for _, w := range want {
			i := strings.Index(rest, w)
			if i < 0 {
				ok = false
				break
			}
			rest = rest[i+len(w):]
		}
		if ok {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("feed did not show %q in order; got:\n%s", want, got)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Another store's feed carries every change with its new state, in commit
// order, and tells its own changes apart.
func TestWatchCarriesChanges(t *testing.T) {
	bucket := newBucket()
	a := openTestStore(t, bucket)
	b := openTestStore(t, bucket)
	ctx := ctxT(t)
	ra, rb := watch(t, a), watch(t, b)

	f := must[Attr](t)(a.Create(ctx, RootIno, "f", 0o640, 1, 2))
	d := must[Attr](t)(a.Mkdir(ctx, RootIno, "d", 0o755, 1, 2))
	must[Attr](t)(a.CommitWrite(ctx, f.Ino, map[int64]BlockRef{0: ref("x", 5)}, 5, now()))
	_, _, err := a.Rename(ctx, RootIno, "f", d.Ino, "g", 0)
	ok(t, err)
	mode := uint32(0o600)
	must[Attr](t)(a.SetAttr(ctx, f.Ino, SetAttrIn{Mode: &mode}))
	must[Attr](t)(a.Unlink(ctx, d.Ino, "g"))

	fi, di := f.Ino, d.Ino
	got := rb.waitFor(t,
		fmt.Sprintf("entry 1/f -> %d\n", fi),
		fmt.Sprintf("entry 1/d -> %d\n", di),
		fmt.Sprintf("inode %d mode 100640 size 5 nlink 1\n", fi),
		fmt.Sprintf("data %d\n", fi),
		fmt.Sprintf("entry 1/f gone\n"),
		fmt.Sprintf("entry %d/g -> %d\n", di, fi),
		fmt.Sprintf("inode %d mode 100600", fi),
		fmt.Sprintf("entry %d/g gone\n", di),
	)
	if strings.Contains(got, "own") {
		t.Fatalf("b's feed marks a's changes as its own:\n%s", got)
	}
	own := ra.waitFor(t, fmt.Sprintf("entry %d/g gone own\n", di))
	if strings.Count(own, "own") != strings.Count(own, "\n") {
		t.Fatalf("a's feed does not mark all of a's changes as its own:\n%s", own)
	}
}

// A new watcher starts at the present: a mount that starts or restarts does
// not replay the file system's history.
func TestWatchStartsAtNow(t *testing.T) {
	s := newStore(t)
	ctx := ctxT(t)
	for i := range 200 {
		must[Attr](t)(s.Create(ctx, RootIno, fmt.Sprintf("old%d", i), 0o644, 0, 0))
	}
	r := watch(t, s)
	time.Sleep(300 * time.Millisecond)
	r.mu.Lock()
	n := len(r.changes)
	r.mu.Unlock()
	if n != 0 {
		t.Fatalf("a new watcher got %d changes made before it started", n)
	}
	f := must[Attr](t)(s.Create(ctx, RootIno, "new", 0o644, 0, 0))
	got := r.waitFor(t, fmt.Sprintf("entry 1/new -> %d own\n", f.Ino))
	if strings.Contains(got, "old") {
		t.Fatalf("old changes replayed:\n%s", got)
	}
}
